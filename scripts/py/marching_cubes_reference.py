"""scikit-image's marching cubes, the reference for core/tests/mesh_vs_skimage.rs.

Usage: marching_cubes_reference.py FILE NZ NY NX SZ SY SX LEVEL METHOD

FILE: the volume as raw little-endian float32, C order [z, y, x] of shape NZ x NY x NX;
SZ SY SX: voxel spacing in mm; LEVEL: the iso-value; METHOD: "lewiner" (scikit-image's
default, which resolves ambiguous cubes by the trilinear interpolant) or "lorensen" (the
classic table). Prints one JSON object: the surface area in mm^2
(skimage.measure.mesh_surface_area) and the vertex and triangle counts of
skimage.measure.marching_cubes.
"""

import json
import sys

import numpy as np
from skimage import measure


def main(path, shape, spacing, level, method):
    volume = np.fromfile(path, dtype="<f4").reshape(shape)
    vertices, triangles, _normals, _values = measure.marching_cubes(
        volume, level=level, spacing=spacing, method=method
    )
    print(
        json.dumps(
            {
                "area": float(measure.mesh_surface_area(vertices, triangles)),
                "vertices": len(vertices),
                "triangles": len(triangles),
            }
        )
    )


if __name__ == "__main__":
    if len(sys.argv) != 10:
        sys.exit(__doc__)
    shape = tuple(int(n) for n in sys.argv[2:5])
    spacing = tuple(float(s) for s in sys.argv[5:8])
    main(sys.argv[1], shape, spacing, float(sys.argv[8]), sys.argv[9])
