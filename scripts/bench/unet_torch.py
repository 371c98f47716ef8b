"""The PyTorch twin of fracmap's phase-2 U-Net (trainer/src/weak/model.rs) with its weak loss
(trainer/src/weak/loss.rs), for the speed benchmark trainer/benches/unet_speed.rs: the same
layers, loss and optimiser, timed on the batch the benchmark hands over. Prints one JSON
object on stdout.

Architecture (must stay equal to model.rs; the benchmark compares parameter counts), every
"conv stage" Conv3d(k3 p1) + norm + LeakyReLU, channels c_i = base * 2^i:
  encoder i < levels-1   conv stages (c_in -> c_i, c_i -> c_i) = skip i,
                         down Conv3d(c_i -> 2 c_i, k2 s2), linear
  bottleneck             conv stages (-> c_{levels-1}, c_{levels-1} -> c_{levels-1})
  decoder, coarsest first: up ConvTranspose3d(2 c_i -> c_i, k2 s2), linear,
                         cat([skip i, up]) on the channel axis, conv stages (2 c_i -> c_i, c_i -> c_i)
  head                   Conv3d(base -> 1, k1), linear, bias = logit(output_prior)
Norms as vae_torch.py builds them (group: GroupNorm(gcd(c, norm_groups), c)).

Loss: w_out L_out + w_in L_in + w_contrast L_contrast + w_consistency L_consistency, each
term per crop then averaged over the crops it applies to (0 where none), with the log-space
aggregation of loss.rs (see weak_loss below). Optimiser: AdamW(lr, betas 0.9 / 0.999, eps 1e-8,
weight_decay) as train.rs builds it.

Usage: python unet_torch.py --config RESOLVED.toml --batch-file BATCH.f32 --batch N
       [--steps N] [--warmup N] [--threads N]. The config must spell out [model], [loss] and
[train] in full. The batch file holds little-endian f32, one block after the other: the input
[N, in_channels, D, H, W] (channel 1 is the error map E, the consistency target), M_in and
M_out, each [N, 1, D, H, W].
"""

import argparse
import json
import math
import os
import sys
import tomllib

import torch
import torch.nn.functional as F
from torch import nn

# Shared with the VAE's twin: the norms, Burn's way of counting parameters, the timer.
from vae_torch import burn_param_count, norm_layer, timed

# loss.rs's stand-in for ln P outside a mask.
LN_ZERO = -1e4


class UNet(nn.Module):
    def __init__(self, model):
        super().__init__()
        base, levels, in_channels = model["base_channels"], model["levels"], model["in_channels"]
        slope, norm, groups = model["leaky_relu_slope"], model["norm"], model["norm_groups"]

        def stage(c_in, c_out):
            conv = nn.Conv3d(c_in, c_out, 3, padding=1)
            return nn.Sequential(conv, norm_layer(norm, c_out, groups), nn.LeakyReLU(slope))

        def convs(c_in, c_out):
            return nn.Sequential(stage(c_in, c_out), stage(c_out, c_out))

        deepest = levels - 1
        channels = [base << i for i in range(levels)]
        self.encoder = nn.ModuleList(
            nn.ModuleDict(
                {
                    "convs": convs(in_channels if i == 0 else channels[i], channels[i]),
                    "down": nn.Conv3d(channels[i], 2 * channels[i], 2, stride=2),
                }
            )
            for i in range(deepest)
        )
        self.bottleneck = convs(in_channels if deepest == 0 else channels[deepest], channels[deepest])
        self.decoder = nn.ModuleList(
            nn.ModuleDict(
                {
                    "up": nn.ConvTranspose3d(2 * channels[i], channels[i], 2, stride=2),
                    "convs": convs(2 * channels[i], channels[i]),
                }
            )
            for i in reversed(range(deepest))
        )
        self.head = nn.Conv3d(base, 1, 1)
        prior = model["output_prior"]
        with torch.no_grad():
            self.head.bias.fill_(math.log(prior / (1.0 - prior)))

    def forward(self, x):
        skips = []
        for level in self.encoder:
            features = level["convs"](x)
            x = level["down"](features)
            skips.append(features)
        x = self.bottleneck(x)
        for level, skip in zip(self.decoder, reversed(skips)):
            x = level["convs"](torch.cat([skip, level["up"](x)], 1))
        return self.head(x)


class CropMask:
    """A 0/1 mask per crop, [B, N]: its weights, the voxels outside it, its voxel count and
    whether it is non-empty, the last two [B, 1] (loss.rs's CropMask)."""

    def __init__(self, mask):
        member = mask > 0.5
        self.weights = member.float()
        self.excluded = ~member
        self.count = self.weights.sum(1, keepdim=True)
        self.present = self.count.clamp_max(1.0)

    def mean(self, values):
        return (values * self.weights).sum(1, keepdim=True) / self.count.clamp_min(1.0)

    def ln_aggregate(self, agg, ln_probability):
        """ln(agg(P)) over each crop's mask, in log space (a shifted log-sum-exp for mean)."""
        masked = ln_probability.masked_fill(self.excluded, LN_ZERO)
        top = masked.max(1, keepdim=True).values
        if agg == "max":
            return top
        top = top.detach()
        total = (masked - top).exp().sum(1, keepdim=True)
        return top + total.log() - self.count.clamp_min(1.0).log()


def mean_over_crops(values, applies):
    return (values * applies).sum() / applies.sum().clamp_min(1.0)


def weak_loss(loss, logits, inside, outside, error):
    """loss.rs's weak_loss: all inputs [B, 1, D, H, W]; returns the weighted total."""
    logits = logits.flatten(1)
    inside, outside = CropMask(inside.flatten(1)), CropMask(outside.flatten(1))
    probability = torch.sigmoid(logits)
    ln_probability = F.logsigmoid(logits)

    outside_term = mean_over_crops(outside.mean(F.softplus(logits)), outside.present)
    inside_term = mean_over_crops(-inside.ln_aggregate(loss["agg"], ln_probability), inside.present)
    outside_level = outside.ln_aggregate(loss["agg2"], ln_probability).exp()
    inside_level = inside.ln_aggregate(loss["agg2"], ln_probability).exp()
    hinge = torch.relu(outside_level - inside_level + loss["margin"])
    contrast = mean_over_crops(hinge, inside.present * outside.present)
    difference = probability - error.flatten(1)
    consistency = difference.abs().mean() if loss["consistency"] == "l1" else difference.square().mean()
    return (
        loss["w_out"] * outside_term
        + loss["w_in"] * inside_term
        + loss["w_contrast"] * contrast
        + loss["w_consistency"] * consistency
    )


def read_batch(path, batch, in_channels, shape):
    """The input, M_in and M_out of the batch file (see the module doc)."""
    voxels = batch * math.prod(shape)
    sizes = [voxels * in_channels, voxels, voxels]
    expected = 4 * sum(sizes)
    if os.path.getsize(path) != expected:
        sys.exit(f"{path}: {os.path.getsize(path)} bytes, expected {expected} for batch {batch} x {shape}")
    values = torch.from_file(path, size=sum(sizes), dtype=torch.float32)
    x, inside, outside = values.split(sizes)
    return x.reshape(batch, in_channels, *shape), inside.reshape(batch, 1, *shape), outside.reshape(batch, 1, *shape)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--batch-file", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    with open(args.config, "rb") as f:
        config = tomllib.load(f)
    try:
        model_cfg, loss_cfg, train_cfg = config["model"], config["loss"], config["train"]
        torch.set_num_threads(args.threads)
        torch.manual_seed(train_cfg["seed"])
        unet = UNet(model_cfg)
        optimizer = torch.optim.AdamW(
            unet.parameters(), lr=train_cfg["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=train_cfg["weight_decay"]
        )
        in_channels, shape = model_cfg["in_channels"], model_cfg["input_shape"]
    except KeyError as e:
        sys.exit(f"{args.config}: missing {e}; give a config that spells out [model], [loss] and [train]")

    x, inside, outside = read_batch(args.batch_file, args.batch, in_channels, shape)
    # The error map is the input's second channel, as in the trainer.
    error = x[:, 1:2].contiguous()

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        loss = weak_loss(loss_cfg, unet(x), inside, outside, error)
        loss.backward()
        optimizer.step()
        return loss.item()

    def forward():
        with torch.inference_mode():
            return torch.sigmoid(unet(x))

    # The untrained network's loss, outside the timings: a check that the loss is wired, to
    # read beside Burn's (the weights differ, the output prior makes them close).
    with torch.no_grad():
        initial_loss = weak_loss(loss_cfg, unet(x), inside, outside, error).item()
    train = timed(train_step, args.steps, args.warmup)
    unet.eval()
    inference = timed(forward, args.steps, args.warmup)
    print(
        json.dumps(
            {
                "torch_version": torch.__version__,
                "threads": torch.get_num_threads(),
                "params": burn_param_count(unet),
                "batch": args.batch,
                "initial_loss": initial_loss,
                "train_step": train,
                "forward": inference,
            }
        )
    )


if __name__ == "__main__":
    main()
