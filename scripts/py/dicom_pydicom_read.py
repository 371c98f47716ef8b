"""pydicom's reading of one DICOM image file, for fracmap-dicom's cross-checks.

Usage: dicom_pydicom_read.py FILE OUT_RAW
FILE: a path, or the name of one of pydicom's test files (pydicom-data holds the larger ones).
Writes the rescaled values (RescaleSlope/Intercept applied, per frame for enhanced images)
as little-endian float32, frames x rows x columns, to OUT_RAW when pydicom can decode the
pixel data here, and prints one JSON object: shape, geometry per frame (LPS), decoded.
"""

import json
import pathlib
import sys

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_rescale


def frame_geometry(ds):
    """(orientation, position, pixel spacing) per frame, from the functional groups of an
    enhanced image or the top level of a single-frame one."""
    if "PerFrameFunctionalGroupsSequence" not in ds:
        return [(list(map(float, ds.ImageOrientationPatient)), list(map(float, ds.ImagePositionPatient)),
                 list(map(float, ds.PixelSpacing)))]
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None

    def group(frame, name):
        if name in frame:
            return frame[name][0]
        return shared[name][0]

    out = []
    for frame in ds.PerFrameFunctionalGroupsSequence:
        out.append((list(map(float, group(frame, "PlaneOrientationSequence").ImageOrientationPatient)),
                    list(map(float, group(frame, "PlanePositionSequence").ImagePositionPatient)),
                    list(map(float, group(frame, "PixelMeasuresSequence").PixelSpacing))))
    return out


def rescaled(ds):
    """The pixel values with the modality rescale applied: pydicom's apply_rescale for a
    single-frame image; for an enhanced one (where apply_rescale leaves the values as they
    are), each frame's Pixel Value Transformation functional group."""
    pixels = ds.pixel_array.astype(np.float64)
    if "PerFrameFunctionalGroupsSequence" not in ds:
        return apply_rescale(pixels, ds)
    pixels = pixels.reshape(-1, int(ds.Rows), int(ds.Columns))
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    for index, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        holder = frame if "PixelValueTransformationSequence" in frame else shared
        if holder is not None and "PixelValueTransformationSequence" in holder:
            transformation = holder.PixelValueTransformationSequence[0]
            pixels[index] = pixels[index] * float(transformation.RescaleSlope) + float(transformation.RescaleIntercept)
    return pixels


def main():
    path, out_raw = sys.argv[1], sys.argv[2]
    if not pathlib.Path(path).exists():
        path = get_testdata_file(path)
    ds = pydicom.dcmread(path)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    result = {
        "path": str(path),
        "shape": [frames, int(ds.Rows), int(ds.Columns)],
        "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
        "frames": [{"orientation": o, "position": p, "pixel_spacing": s} for o, p, s in frame_geometry(ds)],
    }
    try:
        values = rescaled(ds)
    except Exception as error:  # no decoder for this transfer syntax installed
        result["decoded"] = False
        result["why_not"] = f"{type(error).__name__}: {error}"
    else:
        values.reshape(result["shape"]).astype("<f4").tofile(out_raw)
        result["decoded"] = True
    print(json.dumps(result))


if __name__ == "__main__":
    main()
