#!/usr/bin/env bash
# Trains the default models that models/ ships, from nothing, and exports them there:
#
#   models/vae/1/       the quick VAE (configs/vae_quick.toml), 32^3 crops at 2 mm
#   models/unet_box/1/  the weak U-Net from fracture boxes (configs/weak_box.toml) on its error maps
#   models/p2p_lstm/1/  the 2.5D pix2pix-LSTM (configs/p2p_lstm.toml) on the true masks of the same crops
#
# Data: the 40-case phantom of `fracmap-train synth --cases 40 --normal-only 10 --seed 7`
# (docs/experiments/box_vs_slice.md), fold 0 held out for testing, fold 1 choosing the epoch.
# Every step is seeded: the same revision gives the same weights. About 15 minutes on 2 idle
# CPU cores (the pix2pix-LSTM about 12 more). The work lands in runs/default-models/ (or the folder given as $1).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
work="${1:-runs/default-models}"

bash scripts/setup.sh
cargo build --release --locked -p fracmap-trainer
bin=target/release/fracmap-train

rm -rf "$work"
mkdir -p "$work"
"$bin" synth --out "$work/data" --cases 40 --normal-only 10 --seed 7
"$bin" vae --config configs/vae_quick.toml --data "$work/data/manifest.json" --fold 0 --out "$work/vae"
"$bin" weak --config configs/weak_box.toml --data "$work/data/manifest.json" --vae "$work/vae" --fold 0 --out "$work/unet_box"
"$bin" p2p --config configs/p2p_lstm.toml --data "$work/data/manifest.json" --fold 0 --out "$work/p2p_lstm"

# Export into a fresh repository first, then swap it in: models/ never holds half an export.
staged="$work/models"
"$bin" export --run "$work/vae" --out "$staged" --version 1
"$bin" export --run "$work/unet_box" --out "$staged" --name unet_box --version 1
"$bin" export --run "$work/p2p_lstm" --out "$staged" --version 1
for name in vae unet_box p2p_lstm; do
  rm -rf "models/$name"
  mv "$staged/$name" "models/$name"
done
echo "default models written: models/vae/1, models/unet_box/1, models/p2p_lstm/1"
