#!/usr/bin/env bash
# The main job, end to end, on a fresh machine: install what is missing, build, generate a
# small phantom dataset, check it, cut and cache vertebra crops, draw the cases, train and
# evaluate the quick VAE, train the weak U-Net on its error maps from fracture boxes, export
# both to a model repository; then start the inference server on the shipped default models
# (models/), send it a phantom CT from the command-line client and write what comes back;
# the same CT to the 2.5D pix2pix-LSTM, and again as a DICOM series, answered as a DICOM SEG.
# Everything lands in runs/demo/ (a new run replaces the previous one).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/setup.sh
step() { printf '\n== %s\n' "$*"; }
out=runs/demo
mkdir -p "$out"

step "build"
cargo build --workspace --locked
bin=target/debug

step "phantom: 6 spine CT cases (2 normal-only, 1 unlabeled, 3 folds) with true fracture masks"
"$bin/fracmap-train" synth --out "$out/data" --cases 6 --normal-only 2 --unlabeled 1 --seed 7 --folds 3
"$bin/fracmap-train" check --data "$out/data/manifest.json"

step "crops: every vertebra cut, resampled to 1 mm and cached as 64^3 patches"
"$bin/fracmap-train" crops --data "$out/data/manifest.json" --out "$out/crops"

step "pictures: axial, coronal and sagittal planes through each case's fracture"
"$bin/fracmap-train" show --data "$out/data/manifest.json" --out "$out/show"

step "vae: train the quick VAE (32^3 crops at 2 mm) on the normal vertebrae, then evaluate its error map"
rm -rf "$out/vae"
"$bin/fracmap-train" vae --config configs/vae_quick.toml --data "$out/data/manifest.json" --fold 0 --out "$out/vae"
"$bin/fracmap-train" eval-vae --run "$out/vae" --pictures 4

step "weak: the phase-2 U-Net from fracture boxes, on the VAE's error maps; test-fold numbers and draft masks"
rm -rf "$out/weak_box"
"$bin/fracmap-train" weak --config configs/weak_box.toml --data "$out/data/manifest.json" --vae "$out/vae" --fold 0 --out "$out/weak_box"
step "export: the VAE and the U-Net as ONNX with their manifests, into the model repository $out/models"
rm -rf "$out/models"
"$bin/fracmap-train" export --run "$out/vae" --out "$out/models"
"$bin/fracmap-train" export --run "$out/weak_box" --out "$out/models" --name unet_box

step "server: serve the shipped default models (models/, see scripts/default-models.sh) with metrics"
free_port() { .venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
metrics_port=$(free_port)
server="http://127.0.0.1:$port"
"$bin/fracmap-server" --listen "127.0.0.1:$port" --device auto --models models \
  --metrics-listen "127.0.0.1:$metrics_port" > "$out/server.log" 2>&1 &
server_pid=$!
trap 'kill "$server_pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  "$bin/fracmap" info --server "$server" --connect-timeout 1 > /dev/null 2>&1 && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$out/server.log"; echo "demo: the server exited" >&2; exit 1; }
  sleep 0.2
done
"$bin/fracmap" info --server "$server"
echo "services (reflection, as grpcurl sees them):"
.venv/bin/grpcurl -plaintext "127.0.0.1:$port" list | sed 's/^/  /'

step "segment: the client sends a phantom CT with its vertebrae's body boxes; probability, mask, overlays and summary come back"
# The first test-fold case with a fracture, and its body boxes as --box LABEL=z0:z1,y0:y1,x0:x1.
read -r ct boxes < <(.venv/bin/python - "$out/data/manifest.json" <<'PY'
import json, sys
manifest = json.load(open(sys.argv[1]))
cases = [c for c in manifest["cases"] if c.get("fold") == 0] or manifest["cases"]
case = next((c for c in cases if any(v["status"] != "normal" for v in c["vertebrae"])), cases[0])
span = lambda b, a: f"{b[a][0]}:{b[a][1]}"
boxes = [f"--box={v['level']}={span(v['body_box'], 'z')},{span(v['body_box'], 'y')},{span(v['body_box'], 'x')}"
         for v in case["vertebrae"]]
print(case["ct"], " ".join(boxes))
PY
)
rm -rf "$out/segment"
# shellcheck disable=SC2086 # the boxes are separate arguments
"$bin/fracmap" segment "$out/data/$ct" $boxes --out "$out/segment" --report --server "$server"
ls -l "$out/segment" | sed 's/^/  /'

step "p2p_lstm: the same CT answered by the shipped 2.5D pix2pix-LSTM (the server runs its slice sequences in 3D)"
rm -rf "$out/segment_p2p"
# shellcheck disable=SC2086
"$bin/fracmap" segment "$out/data/$ct" $boxes --model p2p_lstm --out "$out/segment_p2p" --server "$server"

step "dicom: the same CT as a DICOM series, sent file by file; the answer also comes back as a DICOM SEG and Parametric Map"
rm -rf "$out/dicom"
"$bin/fracmap" to-dicom "$out/data/$ct" --out "$out/dicom/series"
# shellcheck disable=SC2086
"$bin/fracmap" segment "$out/dicom/series" $boxes --out "$out/dicom/answer" --server "$server"
.venv/bin/python - "$out/dicom/answer" <<'PY'
import sys, pydicom
seg = pydicom.dcmread(f"{sys.argv[1]}/fracture_seg.dcm")
print(f"  pydicom reads the SEG: {seg.Modality}, {seg.NumberOfFrames} frames of {seg.Rows} x {seg.Columns}, "
      f"segment '{seg.SegmentSequence[0].SegmentLabel}', {int(seg.pixel_array.sum())} voxels marked")
PY
echo "metrics (Prometheus, http://127.0.0.1:$metrics_port/metrics):"
.venv/bin/python -c "import urllib.request, sys; print(urllib.request.urlopen(sys.argv[1]).read().decode())" \
  "http://127.0.0.1:$metrics_port/metrics" | grep -E '^fracmap_(requests_total|models_loaded)' | sed 's/^/  /'
kill -TERM "$server_pid"
wait "$server_pid"
trap - EXIT
echo "server stopped cleanly (log: $out/server.log)"

printf '\ndemo: done; outputs under %s/\n' "$out"
