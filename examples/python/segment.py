#!/usr/bin/env python3
"""Segment one CT with fracmap-server from Python (grpcio), as `fracmap segment` does.

The gRPC stubs are generated from the repository's proto/ at run time (grpc_tools.protoc,
into a temporary folder), so this file needs nothing but grpcio, grpcio-tools, numpy and
nibabel (`bash scripts/setup.sh` installs them into .venv):

    .venv/bin/python examples/python/segment.py CT.nii.gz --box L1=40:60,100:160,120:180 --out out/

The CT file's bytes go to the server as they are (NIfTI, gzip or not); the answer's volumes
come back on the CT's grid and are written with that grid, so they overlay the CT.
"""

import argparse
import importlib
import pathlib
import subprocess
import sys
import tempfile

import grpc
import nibabel as nib
import numpy as np

PROTO_DIR = pathlib.Path(__file__).resolve().parents[2] / "proto"
CHUNK_BYTES = 1 << 20
BOX_FORM = "z0:z1,y0:y1,x0:x1"


def load_stubs(proto_dir):
    """Compiles fracmap.proto into a temporary folder and imports the messages and stub."""
    with tempfile.TemporaryDirectory(prefix="fracmap-stubs-") as out:
        subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", "-I", str(proto_dir),
             "--python_out", out, "--grpc_python_out", out, "fracmap/v1/fracmap.proto"],
            check=True,
        )
        sys.path.insert(0, out)
        try:
            messages = importlib.import_module("fracmap.v1.fracmap_pb2")
            services = importlib.import_module("fracmap.v1.fracmap_pb2_grpc")
        finally:
            sys.path.remove(out)
    return messages, services


def parse_box(text, allow_label):
    """`[LABEL=]z0:z1,y0:y1,x0:x1` (voxels, half-open) -> (label, [z0, y0, x0], [z1, y1, x1])."""
    label = ""
    if allow_label and "=" in text:
        label, text = text.split("=", 1)
    try:
        ranges = [[int(n) for n in axis.split(":")] for axis in text.split(",")]
    except ValueError:
        ranges = []
    if len(ranges) != 3 or not all(len(r) == 2 and 0 <= r[0] < r[1] for r in ranges):
        raise argparse.ArgumentTypeError(f"{text!r}: expected {BOX_FORM}, half-open, z1 > z0 and so on")
    return label, [r[0] for r in ranges], [r[1] for r in ranges]


def file_chunks(path):
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            yield chunk


def requests(pb, args):
    """The header, then the CT's bytes, then the label map's."""
    header = pb.SegmentHeader(
        ct=pb.VolumeDescription(encoding=pb.VOLUME_ENCODING_NIFTI, total_bytes=args.ct.stat().st_size),
        model=args.model or "",
        fracture_boxes=[pb.VoxelBox(min=lo, max=hi) for _, lo, hi in args.fracture_box],
        probability_encoding=pb.PROBABILITY_ENCODING_FLOAT32,
    )
    for label, lo, hi in args.box:
        header.vertebrae.add(label=label, body_box=pb.VoxelBox(min=lo, max=hi))
    if args.vertebrae:
        header.vertebra_labels.CopyFrom(
            pb.VolumeDescription(encoding=pb.VOLUME_ENCODING_NIFTI, total_bytes=args.vertebrae.stat().st_size))
    if args.threshold is not None:
        header.threshold = args.threshold
    yield pb.SegmentRequest(header=header)
    for chunk in file_chunks(args.ct):
        yield pb.SegmentRequest(ct_chunk=chunk)
    if args.vertebrae:
        for chunk in file_chunks(args.vertebrae):
            yield pb.SegmentRequest(vertebra_labels_chunk=chunk)


def receive(pb, responses):
    """The summary, and each output volume as a numpy array indexed [z, y, x]."""
    first = next(responses)
    if first.WhichOneof("part") != "summary":
        sys.exit("segment.py: the answer does not start with its summary")
    summary = first.summary
    shape = tuple(summary.grid.shape)
    dtypes = {pb.VOXEL_TYPE_UINT8: np.uint8, pb.VOXEL_TYPE_FLOAT32: np.dtype("<f4")}
    received = {output.kind: bytearray() for output in summary.outputs}
    for response in responses:
        chunk = response.chunk
        if chunk.offset != len(received[chunk.kind]):
            sys.exit(f"segment.py: chunk of kind {chunk.kind} at byte {chunk.offset}, expected {len(received[chunk.kind])}")
        received[chunk.kind] += chunk.data
    volumes = {}
    for output in summary.outputs:
        data = received[output.kind]
        if len(data) != output.total_bytes:
            sys.exit(f"segment.py: output kind {output.kind}: {len(data)} of {output.total_bytes} bytes came")
        values = np.frombuffer(bytes(data), dtype=dtypes[output.voxel_type]).reshape(shape)
        volumes[output.kind] = values if output.kind == pb.OUTPUT_KIND_MASK else values * (output.scale or 1.0)
    return summary, volumes


def print_summary(summary):
    print(f"request {summary.request_id}: model {summary.model.name} v{summary.model.version}, "
          f"VAE {summary.vae.name} v{summary.vae.version}")
    print(f"{'vertebra':<10} {'score':>6} {'mask mm3':>10} {'confidence':>10}")
    for index, vertebra in enumerate(summary.vertebrae):
        name = vertebra.label or f"#{index}"
        print(f"{name:<10} {vertebra.fracture_score:>6.3f} {vertebra.mask_volume_mm3:>10.1f} {vertebra.confidence:>10.3f}")
    print(f"mask: {summary.mask_voxels} voxels, {summary.mask_volume_mm3:.1f} mm3, "
          f"confidence {summary.confidence:.3f} at threshold {summary.threshold:.3g}")


def write_nifti(path, volume_zyx, affine, dtype):
    """Writes a [z, y, x] array as NIfTI (which stores x fastest) with the grid's affine."""
    image = nib.Nifti1Image(np.ascontiguousarray(volume_zyx.transpose(2, 1, 0), dtype=dtype), affine)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    image.header.set_xyzt_units("mm")
    nib.save(image, str(path))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ct", type=pathlib.Path, help="the CT in HU, NIfTI-1 (.nii or .nii.gz)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--box", action="append", default=[], type=lambda t: parse_box(t, True),
                       metavar=f"[LABEL=]{BOX_FORM}", help="a vertebra by its body box (voxels); repeatable")
    which.add_argument("--vertebrae", type=pathlib.Path, metavar="LABELS.nii[.gz]",
                       help="a VerSe vertebra label map on the CT's grid")
    parser.add_argument("--fracture-box", action="append", default=[], type=lambda t: parse_box(t, False),
                        metavar=BOX_FORM, help="keep the draft mask inside this box; repeatable")
    parser.add_argument("--model", help="segmentation model (default: the server's)")
    parser.add_argument("--threshold", type=float, help="draft-mask threshold in (0, 1]")
    parser.add_argument("--server", default="127.0.0.1:50051", help="HOST:PORT (default %(default)s)")
    parser.add_argument("--token", help="bearer token, if the server asks for one")
    parser.add_argument("--ca-cert", type=pathlib.Path, help="PEM of the server's CA: connect with TLS")
    parser.add_argument("--timeout", type=float, default=600, help="seconds (default %(default)s)")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="folder for probability and mask")
    args = parser.parse_args()

    ct = nib.load(str(args.ct))
    pb, services = load_stubs(PROTO_DIR)
    target = args.server.removeprefix("http://").removeprefix("https://")
    # A server may send chunks larger than gRPC's default limit of 4 MiB a message.
    options = [("grpc.max_receive_message_length", 64 << 20)]
    if args.ca_cert:
        credentials = grpc.ssl_channel_credentials(args.ca_cert.read_bytes())
        channel = grpc.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else None
    stub = services.FracmapStub(channel)
    try:
        responses = stub.Segment(requests(pb, args), metadata=metadata, timeout=args.timeout)
        summary, volumes = receive(pb, responses)
    except grpc.RpcError as error:
        sys.exit(f"segment.py: {error.code().name}: {error.details()}")
    finally:
        channel.close()

    grid = summary.grid
    affine = np.array(grid.affine, dtype=float).reshape(4, 4)
    if tuple(grid.shape) != ct.shape[:3][::-1]:
        sys.exit(f"segment.py: the answer's grid {tuple(grid.shape)} ([z, y, x]) is not the CT's {ct.shape[:3]} ([x, y, z])")
    print_summary(summary)
    args.out.mkdir(parents=True, exist_ok=True)
    write_nifti(args.out / "probability.nii.gz", volumes[pb.OUTPUT_KIND_PROBABILITY], affine, np.float32)
    write_nifti(args.out / "mask.nii.gz", volumes[pb.OUTPUT_KIND_MASK], affine, np.uint8)
    print(f"wrote probability.nii.gz and mask.nii.gz to {args.out}")


if __name__ == "__main__":
    main()
