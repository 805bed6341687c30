"""One training step of a tiny M2M model in fp32 and under bf16 autocast, side by side on this CPU.

python bench/train_precision.py --checkpoint checkpoints/m2m-self-tiny --rounds 4

The two precisions alternate on the same batch (B sets of K latents), so a noisy machine slows
both alike; the ratio of their medians is the figure (scripts/train_tiny.sh trains in bf16).
It also counts the FLOPs of one step per image (forward + backward; torch's flop counter).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[1])
from m2m.loading import load_pipeline
from m2m.model import M2MModel


def step_seconds(model: M2MModel, latents: torch.Tensor, pixels: torch.Tensor, bf16: bool) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(latents, pixels).mean()
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="checkpoints/m2m-self-tiny")
    p.add_argument("--sets", type=int, default=8)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.checkpoint)
    model = M2MModel(pipe.unet, pipe.isa, pipe.scheduler, pipe.image_encoder).train()
    gen = torch.Generator().manual_seed(0)
    c, h, size = pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.vae.config.sample_size
    latents = torch.randn(args.sets, args.k, c, h, h, generator=gen)  # (B, K, c, h, w)
    pixels = torch.rand(args.sets, args.k, 3, size, size, generator=gen) * 2 - 1  # (B, K, 3, H, W): M2M-DINO's input
    with FlopCounterMode(display=False) as flops:
        step_seconds(model, latents, pixels, bf16=False)
    times = {"fp32": [], "bf16": []}
    for _ in range(args.rounds):  # the first round warms up: the medians leave it out
        for name in times:
            times[name].append(step_seconds(model, latents, pixels, bf16=name == "bf16"))
    med = {name: statistics.median(t[1:] if len(t) > 1 else t) for name, t in times.items()}
    images = args.sets * args.k
    print(f"{args.checkpoint}: {flops.get_total_flops() / images / 1e9:.2f} GFLOP per training image")
    for name, t in times.items():
        print(f"{name}: {' '.join(f'{x:.2f}' for x in t)} s per step ({images} images); median {med[name]:.2f} s")
    print(f"bf16 autocast / fp32 step time: {med['bf16'] / med['fp32']:.2f}")


if __name__ == "__main__":
    main()
