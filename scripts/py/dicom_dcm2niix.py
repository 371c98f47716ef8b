"""dcm2niix (the real converter binary from PyPI's `dcm2niix`) turning DICOM into NIfTI, for
fracmap-dicom's cross-checks.

Usage: dicom_dcm2niix.py INPUT OUT_DIR
INPUT: a DICOM file or a folder. Writes uncompressed .nii files (no BIDS sidecar) into OUT_DIR
and prints one JSON object: the files written, and dcm2niix's messages.
"""

import json
import pathlib
import subprocess
import sys

import dcm2niix


def main():
    source, out_dir = sys.argv[1], pathlib.Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = pathlib.Path(dcm2niix.bin)
    # -s y: a single file is converted alone, not with the rest of its folder.
    single = ["-s", "y"] if pathlib.Path(source).is_file() else []
    run = subprocess.run([str(binary), "-b", "n", "-z", "n", *single, "-f", "%s_%j", "-o", str(out_dir), source],
                         capture_output=True, text=True, check=True)
    print(json.dumps({"niftis": sorted(str(p) for p in out_dir.glob("*.nii")), "log": run.stdout + run.stderr}))


if __name__ == "__main__":
    main()
