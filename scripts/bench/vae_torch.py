"""The PyTorch twin of fracmap's Phase 1 VAE (trainer/src/vae/model.rs), for the speed
benchmark trainer/benches/vae_speed.rs: the same layers, loss and optimiser, timed on random
crops. Prints one JSON object on stdout.

Architecture (must stay equal to model.rs; the benchmark compares parameter counts):
  encoder   levels x [Conv3d(k4 s2 p1) + norm + LeakyReLU], channels base * 2^i
  to_mu, to_logvar   Linear(C * D * H * W -> latent)
  z = mu + exp(logvar / 2) * eps
  from_latent        Linear(latent -> C * D * H * W) + LeakyReLU
  decoder   levels - 1 x [ConvTranspose3d(k4 s2 p1) + norm + LeakyReLU], mirrored
  head      ConvTranspose3d(base -> 1, k4 s2 p1), linear
Norm "group" is GroupNorm(gcd(c, norm_groups), c); "instance" is GroupNorm(c, c) (Burn's
InstanceNorm is affine by default, PyTorch's InstanceNorm3d is not); "batch" BatchNorm3d.
Loss: L1 or MSE mean over voxels + beta * KL (sum over latent, mean over batch).
Optimiser: AdamW(lr, betas 0.9 / 0.999, eps 1e-8, weight_decay) as train.rs builds it.

Usage: python vae_torch.py --config configs/vae.toml [--batch N] [--steps N] [--warmup N]
       [--threads N]. The config must spell out [model], [loss] and [train] in full (the
benchmark hands over the resolved configuration, defaults included).
"""

import argparse
import json
import math
import os
import statistics
import sys
import time
import tomllib

import torch
from torch import nn


def norm_layer(kind, channels, max_groups):
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, max_groups), channels)
    if kind == "instance":
        return nn.GroupNorm(channels, channels)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    raise ValueError(f"model.norm = {kind!r}: expected group, instance or batch")


class Vae(nn.Module):
    def __init__(self, model):
        super().__init__()
        base, levels, latent = model["base_channels"], model["levels"], model["latent_dim"]
        slope, norm, groups = model["leaky_relu_slope"], model["norm"], model["norm_groups"]
        channels = [base << i for i in range(levels)]

        def stage(conv, c_out):
            return nn.Sequential(conv, norm_layer(norm, c_out, groups), nn.LeakyReLU(slope))

        inputs = [1] + channels[:-1]
        down = [stage(nn.Conv3d(c_in, c_out, 4, 2, 1), c_out) for c_in, c_out in zip(inputs, channels)]
        self.encoder = nn.Sequential(*down)
        self.bottleneck = [channels[-1]] + [n >> levels for n in model["input_shape"]]
        flat = math.prod(self.bottleneck)
        self.to_mu = nn.Linear(flat, latent)
        self.to_logvar = nn.Linear(flat, latent)
        self.from_latent = nn.Sequential(nn.Linear(latent, flat), nn.LeakyReLU(slope))
        # Decoder stage i mirrors encoder stage levels-1-i; encoder stage 0's mirror is the head.
        mirrored = list(zip(channels[:0:-1], channels[-2::-1]))
        up = [stage(nn.ConvTranspose3d(c_in, c_out, 4, 2, 1), c_out) for c_in, c_out in mirrored]
        self.decoder = nn.Sequential(*up)
        self.head = nn.ConvTranspose3d(base, 1, 4, 2, 1)

    def encode(self, x):
        flat = self.encoder(x).flatten(1)
        return self.to_mu(flat), self.to_logvar(flat)

    def decode(self, z):
        features = self.from_latent(z).reshape(z.shape[0], *self.bottleneck)
        return self.head(self.decoder(features))

    def forward(self, x, eps):
        mu, logvar = self.encode(x)
        return self.decode(mu + torch.exp(logvar * 0.5) * eps), mu, logvar

    def forward_inference(self, x):
        return self.decode(self.encode(x)[0])


def burn_param_count(vae):
    """Parameters as Burn's `num_params` counts them: BatchNorm's running mean and variance
    are module state there, buffers here."""
    norms = [m for m in vae.modules() if isinstance(m, nn.BatchNorm3d)]
    running = sum(m.running_mean.numel() + m.running_var.numel() for m in norms)
    return sum(p.numel() for p in vae.parameters()) + running


def vae_loss(recon_kind, beta, x, reconstruction, mu, logvar):
    diff = x - reconstruction
    recon = diff.abs().mean() if recon_kind == "l1" else diff.square().mean()
    kl = -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(1).mean()
    return recon + beta * kl


def machine_cpu_seconds():
    """Busy CPU seconds of all cores (Linux /proc/stat: user, nice, system, irq, softirq,
    steal; USER_HZ = 100), or None where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(t) for t in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(ticks[i] for i in (0, 1, 2, 5, 6, 7) if i < len(ticks)) / 100.0


def timed(fn, steps, warmup):
    """Seconds per call of `fn` for `steps` calls after `warmup` untimed ones; the cores this
    process kept busy meanwhile (CPU time / wall time) and those the rest of the machine did."""
    for _ in range(warmup):
        fn()
    seconds = []
    machine_start, cpu_start, wall_start = machine_cpu_seconds(), time.process_time(), time.perf_counter()
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    wall = time.perf_counter() - wall_start
    busy = (time.process_time() - cpu_start) / wall
    machine_end = machine_cpu_seconds()
    others = None if machine_end is None else max(0.0, (machine_end - machine_start) / wall - busy)
    return {
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "seconds": seconds,
        "cores_busy": busy,
        "others_busy": others,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--batch", type=int, help="default: train.batch_size")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    with open(args.config, "rb") as f:
        config = tomllib.load(f)
    try:
        model_cfg, loss_cfg, train_cfg = config["model"], config["loss"], config["train"]
        batch = args.batch or train_cfg["batch_size"]
        torch.set_num_threads(args.threads)
        torch.manual_seed(train_cfg["seed"])
        vae = Vae(model_cfg)
        optimizer = torch.optim.AdamW(
            vae.parameters(), lr=train_cfg["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=train_cfg["weight_decay"]
        )
        recon_kind, beta, latent = loss_cfg["recon"], loss_cfg["beta"], model_cfg["latent_dim"]
        shape = model_cfg["input_shape"]
    except KeyError as e:
        sys.exit(f"{args.config}: missing {e}; give a config that spells out [model], [loss] and [train]")

    x = torch.rand(batch, 1, *shape)
    # Noise is drawn outside the timed step, as the Burn side does.
    noise = iter(torch.randn(args.warmup + args.steps, batch, latent))

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        loss = vae_loss(recon_kind, beta, x, *vae(x, next(noise)))
        loss.backward()
        optimizer.step()
        return loss.item()

    def forward():
        with torch.inference_mode():
            return vae.forward_inference(x)

    train = timed(train_step, args.steps, args.warmup)
    vae.eval()
    inference = timed(forward, args.steps, args.warmup)
    print(
        json.dumps(
            {
                "torch_version": torch.__version__,
                "threads": torch.get_num_threads(),
                "params": burn_param_count(vae),
                "batch": batch,
                "train_step": train,
                "forward": inference,
            }
        )
    )


if __name__ == "__main__":
    main()
