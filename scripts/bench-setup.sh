#!/usr/bin/env bash
# Installs PyTorch for the speed benchmark (trainer/benches/vae_speed.rs) into .venv-bench/,
# apart from .venv/: nothing else needs torch, and CI never installs it.
# Idempotent: a second run with nothing changed does nothing but check.
#
# Why this package list: PyPI has only the CUDA build of torch for Linux x86_64 (the CPU-only
# wheels live on another index, which this project does not use). A plain
# `pip install torch==2.15.0` pulls triton and every CUDA library: 5.3 GiB. `--no-deps` with
# the pure-Python dependencies alone does not import: libtorch_cuda.so and libtorch_python.so
# link against the CUDA runtime, cuBLAS, cuDNN, cuFFT, cuSPARSE(Lt), cuFile, NCCL, NVRTC,
# CUPTI and NVSHMEM, so the dynamic loader needs those files even on a CPU-only machine. This
# list is exactly that closure (read off `readelf -d` of torch/lib/*.so), with the versions
# pip resolves for torch 2.15.0, installed with --no-deps: 4.0 GiB. Left out: triton (1.0 GiB,
# the compiler of torch.compile), cuSOLVER (0.26 GiB, loaded on demand by CUDA linear
# algebra), nvJitLink, cuda-bindings, CCCL and NVTX; the benchmark runs eager CPU kernels and
# needs none of them. numpy only silences torch's warning that it is missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

python="${PYTHON:-python3}"
command -v "$python" >/dev/null || { echo "bench-setup: $python not found; torch 2.15 needs Python 3.11+" >&2; exit 1; }
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  { echo "bench-setup: $("$python" --version 2>&1) is too old: torch 2.15 and tomllib need Python 3.11+" >&2; exit 1; }

packages="torch==2.15.0
filelock==4.2.12
fsspec==2026.9.0
Jinja2==3.1.6
MarkupSafe==3.0.4
mpmath==1.3.0
networkx==3.6.1
sympy==1.14.0
typing_extensions==4.16.0
numpy==2.4.6
nvidia-cuda-runtime==13.2.86
nvidia-cuda-cupti==13.2.86
nvidia-cuda-nvrtc==13.2.86
nvidia-cublas==13.4.1.3
nvidia-cudnn-cu13==9.26.0.51
nvidia-cufft==12.2.0.57
nvidia-cufile==1.17.1.22
nvidia-cusparse==12.7.10.12
nvidia-cusparselt-cu13==0.8.1
nvidia-nccl-cu13==2.30.7
nvidia-nvshmem-cu13==3.7.2"

stamp=.venv-bench/.fracmap-bench-packages
if [ ! -x .venv-bench/bin/python ]; then
  echo "bench-setup: creating .venv-bench"
  "$python" -m venv .venv-bench
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$packages" ]; then
  echo "bench-setup: installing torch 2.15.0 (CPU use of the PyPI wheel, ~4 GiB, see this script's header)"
  # shellcheck disable=SC2086 # one package a word
  .venv-bench/bin/python -m pip install --quiet --disable-pip-version-check --no-deps $packages
  .venv-bench/bin/python -c 'import torch; torch.nn.Conv3d(1, 1, 2)(torch.ones(1, 1, 2, 2, 2)).sum().backward()'
  printf '%s' "$packages" >"$stamp"
fi
echo "bench-setup: $(.venv-bench/bin/python -c 'import torch; print("torch", torch.__version__)') in .venv-bench"
