#!/usr/bin/env bash
# Installs what fracmap needs beside Rust, from package registries only, into the project:
#   .venv/       Python packages (ONNX Runtime's wheel, onnx, nibabel, scikit-learn, grpcio)
#   .deps/lib/   libonnxruntime.so -> the shared library shipped inside the onnxruntime wheel
# Idempotent: a second run with nothing changed does nothing but check.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

python="${PYTHON:-python3}"
command -v "$python" >/dev/null || { echo "setup: $python not found; fracmap needs Python 3.9+ with pip" >&2; exit 1; }
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust first" >&2; exit 1; }

stamp=.venv/.fracmap-requirements
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$python" -m venv .venv
fi
if ! cmp -s scripts/requirements.txt "$stamp" 2>/dev/null; then
  echo "setup: installing Python packages (scripts/requirements.txt)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r scripts/requirements.txt
  cp scripts/requirements.txt "$stamp"
fi

lib=$(.venv/bin/python - <<'PY'
import glob, os, onnxruntime
capi = os.path.join(os.path.dirname(onnxruntime.__file__), "capi")
libs = sorted(glob.glob(os.path.join(capi, "libonnxruntime.so.*")))
print(libs[-1] if libs else "")
PY
)
[ -n "$lib" ] || { echo "setup: the onnxruntime wheel has no libonnxruntime.so.* under capi/" >&2; exit 1; }
mkdir -p .deps/lib
ln -sfn "$lib" .deps/lib/libonnxruntime.so
echo "setup: ONNX Runtime library: $lib"
