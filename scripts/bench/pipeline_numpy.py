#!/usr/bin/env python3
"""fracmap's inference pipeline written as a user would in Python: onnxruntime, numpy and
scipy.ndimage, the same models and the same steps as `fracmap_server::pipeline::segment`.

The reference that `server/benches/whole_volume.rs` times fracmap's pipeline against:

1. crop: each vertebra's body box plus the manifest's `margin_mm` (rounded up to CT voxels),
   air (-1000 HU) past the CT's edges, resampled linearly to the manifest's spacing over the
   same extent (voxel i reads (i + 0.5) * old / new - 0.5, clamped at the edges), cut or padded
   (air) to the patch, centred; then the HU window to [0, 1];
2. vae: the VAE's `error` output in batches of 8, Gaussian-smoothed when the U-Net's
   `error_sigma` > 0, scaled per crop to [0, 1] by its percentiles (`np.percentile`);
3. unet: `[X, E]` to the probability, in batches of 8;
4. paste: each probability back onto the CT's grid (the patch cut or padded back to the
   resampled shape, resampled linearly onto the cut, clipped to the CT) and stitched: the mean
   weighted by nnU-Net's Gaussian importance (sigma = patch / 8), also pasted back;
5. mask: P >= the manifest's `mask_threshold` inside the fracture boxes (anywhere without
   any), 26-connected components of fewer than 10 voxels removed; computed, as fracmap does,
   within the crops' reach alone (P is 0 elsewhere).

Where fracmap chose an algorithm (stitching and the mask over the crops' reach, not the whole
CT), this does the same, so that the two differ in implementation only.

Usage:
    pipeline_numpy.py --models models --ct CT.nii[.gz] --boxes boxes.json --out prob.npy
                      [--vae vae/1 --unet unet_box/1] [--mask-out mask.npy] [--runs N]
                      [--warmup N] [--threads N]

`boxes.json`: {"vertebrae": [{"label": "L1", "body_box": {"min": [z, y, x], "max": [z, y, x]}}],
"fracture_boxes": [{"min": [z, y, x], "max": [z, y, x]}]}, CT voxels, `max` exclusive.

Times the whole pipeline on the CT in memory (not reading the files, not creating the
sessions), `--warmup` untimed runs then `--runs` timed ones, and prints one line of JSON:
{"median_s", "min_s", "runs", "stages": {stage: median s}, "mask_voxels", "others_busy" (cores
other processes kept busy during the timed runs), "threads", "onnxruntime"}.
Saves the last run's probability `[z, y, x]` float32 (and its mask, uint8).
"""

import argparse
import json
import math
import os
import time

import nibabel as nib
import numpy as np
import onnxruntime as ort
from scipy import ndimage

AIR_HU = -1000.0
MAX_BATCH = 8
MIN_COMPONENT_VOXELS = 10
DEFAULT_THRESHOLD = 0.5
# A crop whose error spread is at most this normalises to zeros (core's error_norm).
CONSTANT_SPREAD = 1e-6
STAGES = ("crop", "vae", "unet", "paste", "mask")


def load_model(models, version, threads):
    """The manifest and a CPU session of the model in `models/<version>` ("vae/1")."""
    folder = os.path.join(models, version)
    with open(os.path.join(folder, "manifest.json")) as f:
        manifest = json.load(f)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        os.path.join(folder, manifest["onnx"]["file"]), options, providers=["CPUExecutionProvider"]
    )
    return manifest, session


def read_ct(path):
    """The CT in HU as float32 [z, y, x] and its spacing [z, y, x] mm (nibabel gives [x, y, z])."""
    image = nib.load(path)
    ct = np.ascontiguousarray(np.asarray(image.get_fdata(dtype=np.float32)).transpose(2, 1, 0))
    spacing = [float(s) for s in image.header.get_zooms()[:3]][::-1]
    return ct, spacing


def cut(volume, origin, shape, fill):
    """The window of `shape` at `origin` (may reach past the volume: `fill` there)."""
    out = np.full(shape, fill, dtype=np.float32)
    src, dst = [], []
    for o, n, size in zip(origin, shape, volume.shape):
        lo, hi = max(o, 0), min(o + n, size)
        if lo >= hi:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - o, hi - o))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def crop_or_pad(volume, shape, fill):
    """Centred; an odd difference cuts or pads the extra voxel at the end."""
    origin = [(n - m) // 2 if n >= m else -((m - n) // 2) for n, m in zip(volume.shape, shape)]
    return cut(volume, origin, shape, fill)


def resize(volume, shape):
    """Linear resampling to `shape` over the same extent (align_corners=False, edges clamped)."""
    scale = np.array(volume.shape, dtype=np.float64) / np.array(shape, dtype=np.float64)
    return ndimage.affine_transform(
        volume, scale, offset=0.5 * scale - 0.5, output_shape=tuple(shape), order=1, mode="nearest"
    )


class Crop:
    """One vertebra cut for the models, and where it came from."""

    def __init__(self, ct, spacing, body_min, body_max, pre):
        margin = [max(0, math.ceil(pre["margin_mm"] / s - 1e-9)) for s in spacing]
        self.origin = [lo - m for lo, m in zip(body_min, margin)]
        self.shape = [hi - lo + 2 * m for lo, hi, m in zip(body_min, body_max, margin)]
        self.ct_shape = ct.shape
        cut_ct = cut(ct, self.origin, self.shape, AIR_HU)
        self.resampled_shape = [
            max(1, math.floor(n * s / t + 0.5)) for n, s, t in zip(self.shape, spacing, pre["spacing_mm"])
        ]
        self.patch = pre["patch"]
        self.ct = crop_or_pad(resize(cut_ct, self.resampled_shape), self.patch, AIR_HU)
        self.oversize = any(r > p for r, p in zip(self.resampled_shape, self.patch))
        # The cut inside the CT: CT voxels and the same voxels in cut indices.
        self.in_ct = tuple(slice(max(o, 0), min(o + n, size)) for o, n, size in zip(self.origin, self.shape, ct.shape))
        self.in_cut = tuple(slice(s.start - o, s.stop - o) for s, o in zip(self.in_ct, self.origin))

    def to_ct(self, on_crop):
        """A patch-shaped map on the CT voxels the cut covers."""
        resampled = crop_or_pad(on_crop, self.resampled_shape, 0.0)
        return resize(resampled, self.shape)[self.in_cut]

    def paste_back(self, prediction):
        """(values, weight) on `self.in_ct`: weight 0 where an oversize vertebra's patch did not reach."""
        values = self.to_ct(prediction)
        if not self.oversize:
            return values, np.ones_like(values)
        weight = self.to_ct(np.ones(self.patch, dtype=np.float32))
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.where(weight > 0, values / weight, 0.0).astype(np.float32)
        return values, weight


def gaussian_importance(patch):
    """nnU-Net's importance map: a delta blurred by sigma = patch / 8, scaled to max 1, no zeros."""
    delta = np.zeros(patch, dtype=np.float64)
    delta[tuple(n // 2 for n in patch)] = 1.0
    importance = ndimage.gaussian_filter(delta, [n / 8 for n in patch], 0, mode="constant", cval=0.0)
    importance = (importance / importance.max()).astype(np.float32)
    importance[importance == 0] = importance[importance != 0].min()
    return importance


def normalise_error(error, low, high):
    lo, hi = np.percentile(error, [low, high])
    spread = hi - lo
    if spread <= CONSTANT_SPREAD:
        return np.zeros_like(error)
    return np.clip((error.astype(np.float64) - lo) / spread, 0.0, 1.0).astype(np.float32)


def run_batched(session, input_name, output_name, batch):
    """`batch` [n, c, z, y, x] through `session` MAX_BATCH at a time; its one-channel output [n, z, y, x]."""
    outputs = [
        session.run([output_name], {input_name: batch[start : start + MAX_BATCH]})[0][:, 0]
        for start in range(0, len(batch), MAX_BATCH)
    ]
    return np.concatenate(outputs)


def segment(ct, spacing, vertebrae, fracture_boxes, vae, unet, importance, timings):
    """The five steps; returns (probability [z, y, x] float32, mask [z, y, x] bool, per-vertebra figures)."""
    (vae_manifest, vae_session), (unet_manifest, unet_session) = vae, unet
    pre = unet_manifest["preprocessing"]
    error_input = unet_manifest["error_input"]
    threshold = unet_manifest.get("mask_threshold") or DEFAULT_THRESHOLD
    if not np.isfinite(ct).all():
        raise ValueError("the CT has non-finite voxels")

    started = time.perf_counter()
    crops = [Crop(ct, spacing, v["body_box"]["min"], v["body_box"]["max"], pre) for v in vertebrae]
    window = pre["hu_window"]
    low_hu, high_hu = np.float32(window["min"]), np.float32(window["max"])
    x = np.stack([(np.clip(c.ct, low_hu, high_hu) - low_hu) / (high_hu - low_hu) for c in crops])[:, None]
    timings["crop"].append(time.perf_counter() - started)

    started = time.perf_counter()
    error_output = vae_manifest["error_normalisation"]["output"]
    errors = run_batched(vae_session, vae_session.get_inputs()[0].name, error_output, x)
    sigma, norm = error_input["error_sigma"], error_input["error_norm"]
    if sigma > 0:
        errors = np.stack([ndimage.gaussian_filter(e, sigma, mode="nearest", truncate=3.0) for e in errors])
    low, high = (0.0, 100.0) if norm["kind"] == "minmax" else (norm["low"], norm["high"])
    errors = np.stack([normalise_error(e, low, high) for e in errors])
    timings["vae"].append(time.perf_counter() - started)

    started = time.perf_counter()
    unet_input = np.concatenate([x, errors[:, None]], axis=1)
    probabilities = run_batched(
        unet_session, unet_session.get_inputs()[0].name, unet_manifest["outputs"][0]["name"], unet_input
    )
    timings["unet"].append(time.perf_counter() - started)

    started = time.perf_counter()
    # Accumulated over the vertebrae's part of the CT only, as fracmap does.
    low_corner = [min(c.in_ct[a].start for c in crops) for a in range(3)]
    high_corner = [max(c.in_ct[a].stop for c in crops) for a in range(3)]
    bounds = tuple(slice(lo, hi) for lo, hi in zip(low_corner, high_corner))
    total_shape = [hi - lo for lo, hi in zip(low_corner, high_corner)]
    weighted_sum = np.zeros(total_shape, dtype=np.float32)
    total = np.zeros(total_shape, dtype=np.float32)
    for crop, probability in zip(crops, probabilities):
        values, weight = crop.paste_back(probability)
        weight = weight * crop.paste_back(importance)[0]
        local = tuple(slice(s.start - lo, s.stop - lo) for s, lo in zip(crop.in_ct, low_corner))
        weighted_sum[local] += values * weight
        total[local] += weight
    p = np.zeros(ct.shape, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        p[bounds] = np.where(total > 0, np.clip(weighted_sum / total, 0.0, 1.0), 0.0)
    timings["paste"].append(time.perf_counter() - started)

    started = time.perf_counter()
    # Within the crops' reach, as fracmap does: P is 0 elsewhere, below any threshold.
    within = p[bounds]
    if fracture_boxes:
        draft = np.zeros(within.shape, dtype=bool)
        for box in fracture_boxes:
            draft[
                tuple(
                    slice(max(lo - b.start, 0), max(min(hi, b.stop) - b.start, 0))
                    for lo, hi, b in zip(box["min"], box["max"], bounds)
                )
            ] = True
        draft &= within >= threshold
    else:
        draft = within >= threshold
    labels, _ = ndimage.label(draft, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel())
    keep = sizes >= MIN_COMPONENT_VOXELS
    keep[0] = False
    mask = np.zeros(ct.shape, dtype=bool)
    mask[bounds] = keep[labels]
    # The per-vertebra figures fracmap's answer carries.
    figures = []
    for crop in crops:
        region_p, region_mask = p[crop.in_ct], mask[crop.in_ct]
        voxels = int(region_mask.sum())
        figures.append(
            {
                "fracture_score": float(region_p.max()),
                "mask_voxels": voxels,
                "confidence": float(region_p[region_mask].mean()) if voxels else 0.0,
            }
        )
    timings["mask"].append(time.perf_counter() - started)
    return p, mask, figures


def cpu_seconds():
    """(CPU seconds of this process, all threads; busy seconds of the whole machine), or None
    off Linux. /proc/stat counts user, nice, system, irq, softirq and steal in USER_HZ = 100."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(t) for t in f.readline().split()[1:]]
    except OSError:
        return None
    own = os.times()
    return own.user + own.system, sum(ticks[i] for i in (0, 1, 2, 5, 6, 7)) / 100


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", required=True, help="the model repository")
    parser.add_argument("--vae", default="vae/1", help="the VAE's folder in --models")
    parser.add_argument("--unet", default="unet_box/1", help="the U-Net's folder in --models")
    parser.add_argument("--ct", required=True)
    parser.add_argument("--boxes", required=True)
    parser.add_argument("--out", required=True, help="the probability map, .npy float32 [z, y, x]")
    parser.add_argument("--mask-out", help="the draft mask, .npy uint8 [z, y, x]")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be at least 1 and --warmup at least 0")

    vae = load_model(args.models, args.vae, args.threads)
    unet = load_model(args.models, args.unet, args.threads)
    ct, spacing = read_ct(args.ct)
    with open(args.boxes) as f:
        boxes = json.load(f)
    fracture_boxes = boxes.get("fracture_boxes", [])
    importance = gaussian_importance(unet[0]["preprocessing"]["patch"])

    walls = []
    timings = {stage: [] for stage in STAGES}
    for run in range(args.warmup + args.runs):
        if run == args.warmup:
            timings = {stage: [] for stage in STAGES}
            before, timed_from = cpu_seconds(), time.perf_counter()
        started = time.perf_counter()
        p, mask, _ = segment(ct, spacing, boxes["vertebrae"], fracture_boxes, vae, unet, importance, timings)
        if run >= args.warmup:
            walls.append(time.perf_counter() - started)

    after, timed = cpu_seconds(), time.perf_counter() - timed_from
    # Cores that other processes kept busy during the timed runs.
    others_busy = None if before is None else max(0.0, (after[1] - before[1]) - (after[0] - before[0])) / timed

    np.save(args.out, p)
    if args.mask_out:
        np.save(args.mask_out, mask.astype(np.uint8))
    print(
        json.dumps(
            {
                "median_s": float(np.median(walls)),
                "min_s": min(walls),
                "runs": len(walls),
                "stages": {stage: float(np.median(t)) for stage, t in timings.items()},
                "mask_voxels": int(mask.sum()),
                "others_busy": others_busy,
                "threads": args.threads,
                "onnxruntime": ort.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
