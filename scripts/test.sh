#!/usr/bin/env bash
# The test command: installs what is missing (scripts/setup.sh), then lints and runs every
# test of the workspace, including the cross-checks against nibabel, scikit-learn and
# ONNX Runtime, and checks that the CUDA build of the server still compiles.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/setup.sh
step() { printf '\n== %s\n' "$*"; }

step "format"
cargo fmt --all --check
step "clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "tests"
cargo test --workspace --locked
step "server with the CUDA execution provider compiles"
cargo check -p fracmap-server --features cuda --locked
