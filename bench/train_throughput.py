"""Training images/s of a tiny M2M model, and the share of each step spent outside the UNet.

One training step on open sets (train/data/open_sets.py) is timed in three parts, each synchronised:
  data     render a batch of sets on the training device
  encode   the autoencoder's encode of every image (and nothing else: DINO tokens are the model's)
  model    the M2M forward (UNet, ISA; M2M-DINO: the frozen encoder), backward and optimiser step
"outside" is data + encode over the whole step. The parts alternate in every step, so a slow
phase of a shared machine hits them alike.

    python bench/train_throughput.py --device cpu --batch-sets 8 --steps 5
    python bench/train_throughput.py --device cuda --batch-sets 256 --precision bf16 --compile --channels-last

The model's step is the training script's (train/training/m2m.py): fused AdamW on a GPU, and with --compile /
--channels-last the same `speed_up`.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[1])
from m2m.model import M2MModel
from m2m.presets import build_pipeline, get_preset
from train.data.open_sets import OpenBatches
from train.data.sprites import load_sprites
from train.training.m2m import bf16_is_fast, parse_args, speed_up, to_latents


def timed(fn: Callable, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def bench(variant: str, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    preset = get_preset("tiny")
    if variant == "self":  # the design the architecture table chose (reference attention has no weights)
        preset = preset.replace(reference_images=args.reference_images)
    pipe = build_pipeline(preset, variant)
    model = M2MModel(pipe.unet, pipe.isa, pipe.scheduler, pipe.image_encoder).to(device).train()
    vae = pipe.vae.to(device).requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=device.type == "cuda")
    flags = ["--compile"] * args.compile + ["--channels-last"] * args.channels_last
    speed_up(model, parse_args([*flags, "--compile-backend", args.compile_backend]))
    data = OpenBatches("train", args.batch_sets, args.k, args.k, device, sprites=load_sprites("train"))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    autocast = torch.autocast(device.type, dtype, enabled=dtype is not None)
    parts = {"data": [], "encode": [], "model": []}
    for i in range(args.warmup + args.steps):
        batch, t_data = timed(functools.partial(data.batch, i), device)
        pixels = batch["pixels"]
        with autocast:
            latents, t_encode = timed(functools.partial(to_latents, vae, pixels), device)
        dino_pixels = pixels if variant == "dino" else None
        _, t_model = timed(functools.partial(train_step, model, opt, autocast, latents, dino_pixels), device)
        if i >= args.warmup:
            for key, t in zip(parts, (t_data, t_encode, t_model), strict=True):
                parts[key].append(t)
    med = {key: statistics.median(v) for key, v in parts.items()}
    total, images = sum(med.values()), args.batch_sets * args.k
    return {"variant": variant, "images_per_step": images, "images_per_s": images / total,
            "images_per_s_model_only": images / med["model"], "outside_share": (med["data"] + med["encode"]) / total,
            **{f"{key}_s": round(v, 4) for key, v in med.items()}}  # fmt: skip


def train_step(model: M2MModel, opt, autocast, latents: torch.Tensor, pixels: torch.Tensor | None) -> None:
    with autocast:
        loss = model(latents.float(), pixels).mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def rate(images_per_s: float) -> str:
    """Whole images/s, or 3 significant digits below 100: a loaded CPU can take seconds per image."""
    return f"{images_per_s:.0f}" if images_per_s >= 100 else f"{images_per_s:.3g}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--variants", nargs="+", default=["self", "dino"])
    p.add_argument("--batch-sets", type=int, default=8)
    p.add_argument("--k", type=int, default=4, help="images per set")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="auto: bf16 where it is fast (GPUs, AVX512 CPUs), else fp32",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model's step (as training --compile)")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--reference-images", type=int, default=0, help="M2M-Self's reference attention (0: off)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.precision == "auto":
        args.precision = "bf16" if bf16_is_fast(torch.device(args.device)) else "fp32"
    rows = [bench(v, args) for v in args.variants]
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    fast = " ".join(f for f, on in (("compiled", args.compile), ("channels-last", args.channels_last)) if on)
    print(f"{name}, {torch.get_num_threads()} threads, {args.precision}, batch {args.batch_sets} sets x {args.k}"
          f"{', ' + fast if fast else ''}")  # fmt: skip
    print("| variant | images/s | images/s (model alone) | outside the UNet | data s | encode s | model s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {rate(r['images_per_s'])} | {rate(r['images_per_s_model_only'])} | "
              f"{r['outside_share']:.1%} | {r['data_s']} | {r['encode_s']} | {r['model_s']} |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
