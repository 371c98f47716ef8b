#!/usr/bin/env python3
"""What nibabel sees in a NIfTI file, for fracmap's reader and writer to be compared against.

    nibabel_dump.py FILE OUTDIR
        Writes OUTDIR/header.json and, for a volume, OUTDIR/voxels.f32: nibabel's
        get_fdata() (scaled) as little-endian float32 in C order [z, y, x].
        header.json: "kind" and "detail" always; for kind "volume" also "shape" [z, y, x],
        "dtype", "endianness", "spacing" [z, y, x] mm, "affine" (4x4, mm), "affine_source"
        ("sform", "qform" or "spacing"), "qform" (4x4 mm, or null when qform_code is 0),
        "sform_code", "qform_code", "scl_slope", "scl_inter" (1 and 0 when not scaled).
        kind: "volume" (NIfTI-1; 2D, 3D, or 4D with one frame; integer or float voxels),
        "not_volume" (frames or more dimensions), "unsupported_dtype" (complex, RGB, ...),
        "not_nifti1" (NIfTI-2, CIFTI-2, ANALYZE, ...), "unreadable" (nibabel fails).

    nibabel_dump.py --make-variants OUTDIR
        Writes, with nibabel, small NIfTI-1 files for what nibabel's own test data lacks:
        scaled int16 in both byte orders, slope 0, qform only, neither form, sform beside a
        different qform, 2D, one-frame 4D, micrometres, and more voxel types.

The affine follows the NIfTI-1 standard as fracmap does: nibabel's img.affine (its choice of
sform, then qform) when a code is set; with neither, the spacing alone (the standard's
"method 1"; nibabel would centre the image instead). World lengths and spacing are converted
to mm by xyzt_units, which nibabel leaves to the caller.
"""

import json
import os
import struct
import sys

import nibabel as nib
import numpy as np

MM_PER_UNIT = {"meter": 1000.0, "mm": 1.0, "micron": 0.001, "unknown": 1.0}


def _spacing_xyz(hdr):
    """pixdim[1..3] as the reference reader takes them: absolute, 1 where 0 or not finite."""
    pixdim = np.abs(np.asarray(hdr["pixdim"][1:4], dtype=np.float64))
    return np.where(np.isfinite(pixdim) & (pixdim > 0), pixdim, 1.0)


def describe(path):
    try:
        img = nib.load(path)
    except Exception as error:  # noqa: BLE001 - any failure is a finding to report
        return {"kind": "unreadable", "detail": f"{type(error).__name__}: {error}"}, None
    if not isinstance(img, nib.Nifti1Pair) or isinstance(img, (nib.Nifti2Pair, nib.Nifti2Image)):
        return {"kind": "not_nifti1", "detail": type(img).__name__}, None
    hdr = img.header
    shape = list(img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape.pop()
    if len(shape) > 3:
        return {"kind": "not_volume", "detail": f"shape {tuple(img.shape)}"}, None
    dtype = hdr.get_data_dtype()
    if not (dtype.kind in "iu" and dtype.itemsize <= 8 or dtype.kind == "f" and dtype.itemsize in (4, 8)):
        return {"kind": "unsupported_dtype", "detail": str(dtype)}, None
    try:
        data = img.get_fdata(dtype=np.float64)
    except Exception as error:  # noqa: BLE001
        return {"kind": "unreadable", "detail": f"{type(error).__name__}: {error}"}, None
    xyz = tuple(shape + [1] * (3 - len(shape)))
    zyx = np.ascontiguousarray(data.reshape(xyz).transpose(2, 1, 0), dtype="<f4")

    mm = MM_PER_UNIT[hdr.get_xyzt_units()[0]]
    sform_code, qform_code = int(hdr["sform_code"]), int(hdr["qform_code"])
    if sform_code > 0 or qform_code > 0:
        affine = np.array(img.affine, dtype=np.float64)
        source = "sform" if sform_code > 0 else "qform"
    else:
        affine = np.diag(list(_spacing_xyz(hdr)) + [1.0])
        source = "spacing"
    affine[:3] *= mm
    qform = None
    if qform_code > 0:
        qform = np.array(hdr.get_qform(), dtype=np.float64)
        qform[:3] *= mm
    info = {
        "kind": "volume",
        "detail": f"{dtype} {'big' if hdr.endianness == '>' else 'little'}-endian, affine from {source}",
        "shape": list(zyx.shape),
        "dtype": dtype.name,
        "endianness": "big" if hdr.endianness == ">" else "little",
        "spacing": [float(s) * mm for s in _spacing_xyz(hdr)[::-1]],
        "affine": affine.tolist(),
        "affine_source": source,
        "qform": None if qform is None else qform.tolist(),
        "sform_code": sform_code,
        "qform_code": qform_code,
        # On load nibabel moves the scaling from the header to the data proxy.
        "scl_slope": float(img.dataobj.slope),
        "scl_inter": float(img.dataobj.inter),
    }
    return info, zyx


def dump(path, outdir):
    os.makedirs(outdir, exist_ok=True)
    info, voxels = describe(path)
    if voxels is not None:
        voxels.tofile(os.path.join(outdir, "voxels.f32"))
    with open(os.path.join(outdir, "header.json"), "w") as out:
        json.dump(info, out, indent=1)


def _oblique(spacing_xyz, flip_x=True, degrees=30.0, offset=(-100.25, 50.5, 20.125)):
    angle = np.radians(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    if flip_x:
        rotation = rotation @ np.diag([-1.0, 1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing_xyz)
    affine[:3, 3] = offset
    return affine


def _save(img, outdir, name, expect_codes=None):
    path = os.path.join(outdir, name)
    nib.save(img, path)
    if expect_codes is not None:
        hdr = nib.load(path).header
        codes = (int(hdr["sform_code"]), int(hdr["qform_code"]))
        assert codes == expect_codes, f"{name}: nibabel wrote codes {codes}, wanted {expect_codes}"
    return path


def make_variants(outdir):
    os.makedirs(outdir, exist_ok=True)
    shape = (5, 4, 3)
    ramp = np.arange(np.prod(shape), dtype=np.float64).reshape(shape, order="F")
    oblique = _oblique([0.7, 0.8, 2.5])

    # Values beyond int16 stored as int16: nibabel picks a slope and an intercept.
    wide = ramp * 1500.7 - 40000.3
    for name, endianness in [("scaled_int16.nii", "<"), ("scaled_int16_big_endian.nii.gz", ">")]:
        img = nib.Nifti1Image(wide, oblique, nib.Nifti1Header(endianness=endianness))
        img.set_data_dtype(np.int16)
        path = _save(img, outdir, name)
        reread = nib.load(path)
        assert reread.dataobj.slope != 1.0, f"{name}: nibabel did not scale"
        assert reread.header.endianness == endianness, f"{name}: nibabel wrote {reread.header.endianness}"

    # Slope 0 means "not scaled", whatever the intercept: patch a written file.
    path = _save(nib.Nifti1Image(ramp.astype(np.int16) - 20, oblique), outdir, "slope_zero_int16.nii")
    with open(path, "r+b") as patched:
        patched.seek(112)
        patched.write(struct.pack("<ff", 0.0, 7.0))

    img = nib.Nifti1Image((ramp * 16001).astype(np.int32), None)
    img.set_qform(oblique, code="scanner")
    img.set_sform(None, code=0)
    _save(img, outdir, "qform_only_int32.nii", expect_codes=(0, 1))

    img = nib.Nifti1Image(ramp / 3.0, None, dtype=np.float64)
    img.header.set_zooms((0.5, 0.75, 2.5))
    img.set_qform(None, code=0)
    img.set_sform(None, code=0)
    _save(img, outdir, "neither_form_float64.nii", expect_codes=(0, 0))

    img = nib.Nifti1Image(ramp.astype(np.int16), oblique)
    img.set_sform(oblique, code="aligned")
    img.set_qform(_oblique([0.7, 0.8, 2.5], flip_x=False, degrees=-10.0, offset=(1, 2, 3)), code="scanner")
    _save(img, outdir, "sform_beside_different_qform.nii", expect_codes=(2, 1))

    _save(nib.Nifti1Image((ramp[:, :, 0] * 3).astype(np.uint8), np.diag([0.9, 1.1, 1.0, 1.0])), outdir,
          "plane_2d_uint8.nii")
    _save(nib.Nifti1Image((ramp / 7.0).astype(np.float32)[..., np.newaxis], oblique), outdir,
          "single_frame_4d_float32.nii.gz")

    img = nib.Nifti1Image(ramp.astype(np.int16), np.diag([700.0, 800.0, 2500.0, 1.0]))
    img.header.set_xyzt_units("micron")
    _save(img, outdir, "micrometres_int16.nii")

    for dtype in (np.int8, np.uint16, np.uint32, np.int64):
        data = (ramp - (20 if np.dtype(dtype).kind == "i" else 0)).astype(dtype)
        _save(nib.Nifti1Image(data, oblique, dtype=dtype), outdir, f"{np.dtype(dtype).name}.nii")
    _save(nib.Nifti1Image(ramp.astype(np.complex64), oblique), outdir, "complex64.nii")
    _save(nib.Nifti1Image(np.stack([ramp, ramp], axis=-1).astype(np.float32), oblique), outdir,
          "two_frames_float32.nii")


def main(argv):
    if len(argv) == 3 and argv[1] == "--make-variants":
        make_variants(argv[2])
    elif len(argv) == 3:
        dump(argv[1], argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
