"""Seconds per generated image against the number of context images, all modes side by side in one run.

(a) plain     the same UNet without ISA, text cross-attention to 77 tokens: the text-to-image cost
(b) self      M2M-Self, context cache: each context image encoded once
(c) self-nc   M2M-Self, context recomputed at every denoising step (the paper's way)
(d) dino      M2M-DINO, context cache
(e) self-ref  M2M-Self with reference attention to the most recent context images, context cache (and with
              --recent-context-images, ISA's older images pooled to --older-context-tokens)
(f) self-last self-ref whose UNet also reads the last context image's latent (m2m/conditioning.py; the task models)

A generated image's time covers its denoising loop and VAE decode and, for the cached modes,
adding it to the cache (VAE encode + context pass) so that the set can go on. Encoding the given
context is a one-off per set and is reported apart ("prefill"). Modes and context sizes are
interleaved in every repeat, each mode right after the plain UNet at the same context size; a ratio
is the median of these paired ratios, so that slow phases of a shared machine cancel out.

    python bench/context_cost.py --preset tiny
    python bench/context_cost.py --preset sd21-base --latent-size 16 --steps 10 --repeats 2
    python bench/context_cost.py --preset sd21-base --device cuda --dtype fp16 --steps 50   # GPU, 64x64 latents
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from PIL import Image

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[1])
from m2m.images import to_pil
from m2m.pipeline import M2MPipeline
from m2m.presets import Preset, build_pipeline, get_preset
from m2m.sampling import SamplingParams, make_scheduler

MODES = ("plain", "self", "self-nc", "dino", "self-ref", "self-last")
TEXT_TOKENS = 77


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--latent-size", type=int, default=None, help="latent side (default: the preset's)")
    p.add_argument("--contexts", type=int, nargs="+", default=[0, 1, 4, 16])
    p.add_argument("--steps", type=int, default=50, help="the paper: DDIM, 50")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--reference-images", type=int, default=2, help="self-ref: the images reference attention reads")
    p.add_argument("--recent-context-images", type=int, default=None, help="self-ref: ISA's images in full")
    p.add_argument("--older-context-tokens", type=int, default=16, help="self-ref: ISA's tokens of older images")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    p.add_argument("--json", default=None, help="also write the results here")
    return p.parse_args()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


@torch.no_grad()
def plain_image(pipe: M2MPipeline, unet: UNet2DConditionModel, text: torch.Tensor, steps: int, guidance: float):
    """Text-to-image with classifier-free guidance: the cost M2M is compared with."""
    sched = make_scheduler(pipe.scheduler, "ddim")
    sched.set_timesteps(steps, device=pipe.device)
    size = unet.config.sample_size
    latent = torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(0)).to(pipe.device, unet.dtype)
    for t in sched.timesteps:
        pred = unet(sched.scale_model_input(torch.cat([latent] * 2), t), t, encoder_hidden_states=text).sample
        cond, uncond = pred.chunk(2)
        latent = sched.step(uncond + guidance * (cond - uncond), t, latent).prev_sample
    return to_pil(pipe.decode(latent))[0]


def m2m_image(pipe: M2MPipeline, images, cache, steps: int, guidance: float) -> None:
    """One autoregressive step as generate_iter runs it: the next image, then (cached) its encoding."""
    result = pipe.next_image(images, cache, SamplingParams(steps=steps, guidance=guidance))
    if cache is not None:
        pipe.encode_context([result.image], cache)
        cache.images.pop()  # keep the context size fixed for the next repeat


def build(preset: Preset, args, dtype) -> dict[str, object]:
    """The pipelines and the plain UNet (same weights, default attention, text tokens)."""
    pipes = {"self": build_pipeline(preset, "self", seed=0)}
    if "dino" in args.modes:
        pipes["dino"] = build_pipeline(preset, "dino", seed=0)
    design = preset.replace(reference_images=args.reference_images, older_context_tokens=args.older_context_tokens,
                            recent_context_images=args.recent_context_images)  # fmt: skip
    if "self-ref" in args.modes:  # the same weights: reference attention adds none
        pipes["self-ref"] = build_pipeline(design, "self", seed=0)
    if "self-last" in args.modes:  # one more input convolution's channels
        pipes["self-last"] = build_pipeline(design.replace(last_image_input=True), "self", seed=0)
    if args.device != "cpu" or dtype != torch.float32:
        for pipe in pipes.values():
            pipe.to(args.device, dtype)
    plain = UNet2DConditionModel(**pipes["self"].unet.config)
    plain.load_state_dict(pipes["self"].unet.state_dict())  # default processors: text cross-attention
    plain.to(args.device, dtype).eval()
    text = torch.randn(2, TEXT_TOKENS, plain.config.cross_attention_dim, device=args.device, dtype=dtype)
    return {"pipes": pipes, "plain": plain, "text": text}


def context_images(n: int, size: int) -> list[Image.Image]:
    g = torch.Generator().manual_seed(n)
    return [to_pil(torch.rand(1, 3, size, size, generator=g) * 2 - 1)[0] for _ in range(n)]


def run(args) -> dict:
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    preset = get_preset(args.preset)
    if args.latent_size:
        preset = preset.replace(unet={**preset.unet, "sample_size": args.latent_size})
    models = build(preset, args, dtype)
    pipes, res = models["pipes"], models["pipes"]["self"].resolution
    jobs, prefill = {}, {}
    for c in args.contexts:
        images = pipes["self"].prepare(context_images(c, res))
        for mode in args.modes:
            if mode == "plain":
                jobs[mode, c] = lambda: plain_image(
                    pipes["self"], models["plain"], models["text"], args.steps, args.guidance
                )
                continue
            pipe = pipes[mode if mode in pipes else "self"]
            cache = None
            if mode != "self-nc":
                prefill[mode, c] = timed(lambda p=pipe, i=images: p.encode_context(i), args.device)
                cache = pipe.encode_context(images)
            jobs[mode, c] = lambda p=pipe, i=images, ca=cache: m2m_image(p, i, ca, args.steps, args.guidance)
    for mode in args.modes:  # warm-up: allocator, kernels, lazy inits
        jobs[mode, args.contexts[0]]()
    times = {key: [] for key in jobs}
    for _ in range(args.repeats):
        for key, job in jobs.items():  # ordered by context, then mode: each mode runs right after plain
            times[key].append(timed(job, args.device))
    seconds = {key: statistics.median(v) for key, v in times.items()}
    paired = {(m, c): [t / p for t, p in zip(times[m, c], times["plain", c], strict=True)] for m, c in times}
    ratios = {key: statistics.median(v) for key, v in paired.items()}
    latent = preset.unet["sample_size"]
    return {"seconds": seconds, "ratios": ratios, "growth": growth(paired, args.contexts), "prefill": prefill,
            "resolution": res, "latent": latent}  # fmt: skip


def growth(paired: dict, contexts: list[int]) -> dict:
    """(mode, c) -> how much a new image costs at c context images over its cost at the fewest (> 0): the median,
    over repeats, of the two paired ratios' quotient, so that the plain UNet's drift between them cancels out."""
    first = min((c for c in contexts if c > 0), default=None)
    return {(m, c): statistics.median(a / b for a, b in zip(v, paired[m, first], strict=True))
            for (m, c), v in paired.items() if first is not None and c > 0 and m != "plain"}  # fmt: skip


def report(args, out: dict) -> str:
    sec, contexts = out["seconds"], args.contexts
    lines = [
        f"preset={args.preset} latent={out['latent']}x{out['latent']} image={out['resolution']}px steps={args.steps} "
        f"guidance={args.guidance} device={args.device} dtype={args.dtype} median of {args.repeats} repeats",
        "",
        "| mode | " + " | ".join(f"{c} ctx: s/img (×a)" for c in contexts) + " |",
        "|---|" + "---|" * len(contexts),
    ]
    for mode in args.modes:
        cells = []
        for c in contexts:
            cells.append(f"{sec[mode, c]:.3f} ({out['ratios'][mode, c]:.2f}×)")
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    first = min((c for c in contexts if c > 0), default=None)
    if out["growth"]:
        lines += ["", f"growth: a new image's cost at c context images over its cost at {first} (paired, median)", ""]
        lines += ["| mode | " + " | ".join(f"{c} ctx" for c in contexts if c > 0) + " |",
                  "|---|" + "---|" * sum(c > 0 for c in contexts)]  # fmt: skip
        for mode in (m for m in args.modes if m != "plain"):
            cells = [f"{out['growth'][mode, c]:.3f}×" for c in contexts if c > 0]
            lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    if out["prefill"]:
        lines.append("")
        lines.append("prefill (one-off encoding of the given context, s): " + ", ".join(
            f"{m}@{c}={v:.3f}" for (m, c), v in out["prefill"].items() if c
        ))  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if "plain" not in args.modes:
        args.modes.insert(0, "plain")
    torch.manual_seed(0)
    out = run(args)
    print(report(args, out))
    if args.json:
        flat = {f"{m}@{c}": {"seconds": v, "ratio": out["ratios"][m, c], "growth": out["growth"].get((m, c))}
                for (m, c), v in out["seconds"].items()}  # fmt: skip
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "per_image": flat}, f, indent=2)


if __name__ == "__main__":
    main()
