"""Fit the tiny preset's AutoencoderKL to MIS-synth; report its reconstruction PSNR on held-out images.

    python -m train.training.autoencoder --out runs/vae-tiny      # 2,000 steps, 1,500 of them at half resolution

The loss is MSE plus a small KL term (SD's autoencoder less its GAN and LPIPS terms, which would
need weights to download). The first `--warm-steps` run at half resolution: the network is fully
convolutional, and what is slow to learn (an image's overall colours, which every GroupNorm
normalises away and the network must learn to carry in its channel patterns) is learnt 4x cheaper.
At the end the latent scale (`scaling_factor`) is set to 1 / std of the held-out latents, so that
the diffusion model sees unit-variance latents. The result is a
diffusers folder (`m2m.autoencoder.load_autoencoder(out)`) and `metrics.json`.

    # the decoder only, on more colours: the encoder (so the latent space, so every diffusion model
    # trained on it) stays as it is, while decoded colours get closer to the task data's
    python -m train.training.autoencoder --init runs/vae-tiny --decoder-only --warm-steps 0 --steps 1000 \
        --lr 5e-4 --data synth:train,procedure:train,runs/nvs-train \
        --eval-data synth:heldout,procedure:heldout,nvs:heldout --out runs/vae-tiny-decoder
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.optimization import get_cosine_schedule_with_warmup
from tqdm import tqdm

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])
from m2m.autoencoder import load_autoencoder, widen_latents
from m2m.presets import build_autoencoder, get_preset
from m2m.sets import atomic_folder
from train.data.loader import make_loader
from train.data.open_sets import OpenBatches


def images(loader) -> torch.Tensor:
    """Endless images (N, 3, H, W) in [-1, 1] from a loader of sets."""
    while True:
        for batch in loader:
            yield batch["pixels"].flatten(0, 1)


def stream(source: str, batch_sets: int, res: int, workers: int, seed: int, device) -> Iterator[torch.Tensor]:
    """Endless images of one source; open sets are rendered on `device` itself."""
    if source.startswith("open:"):
        batches = OpenBatches.from_source(source, batch_sets, 4, 4, device, seed=seed, size=res)
        return (b["pixels"].flatten(0, 1) for b in batches.iterate(0))
    return images(make_loader(source, batch_sets, 4, 4, res, workers, n_sets=10**7, seed=seed))


def mixed(sources: list[str], batch_sets: int, res: int, workers: int, seed: int, device="cpu"):
    """Endless images, one batch from each source in turn (sets of 4; views and steps as windows)."""
    streams = [stream(src, batch_sets, res, workers, seed, device) for src in sources]
    while True:
        for images_of in streams:
            yield next(images_of).to(device)


def held_out_sets(source: str, n: int, res: int, seed: int) -> torch.Tensor:
    """n held-out sets of 4 images (N, 3, H, W) from a source's held-out split, or from shards as they are."""
    kind, _, split = source.partition(":")
    held = f"{kind}:heldout" if split == "train" else source
    batches = make_loader(held, 16, 4, 4, res, 0, n_sets=n, shuffle=False, seed=seed)
    return torch.cat([b["pixels"].flatten(0, 1) for b in batches])[: 4 * n]


def chroma(x: torch.Tensor) -> torch.Tensor:
    """Images (N, 3, H, W) -> their colour without its lightness, per 4x4 block: (N, 3, H/4, W/4)."""
    return F.avg_pool2d(x - x.mean(1, keepdim=True), 4)


def loss_fn(vae: AutoencoderKL, x: torch.Tensor, kl_weight: float, chroma_weight: float = 0.0) -> torch.Tensor:
    """MSE of the reconstruction from the posterior mean, plus a small KL term that keeps the latents bounded.

    Decoding a *sample* starts from unit-variance noise on the latents; at this size and budget the decoder
    then learns to ignore them (it gave one mean image per background). The diffusion model encodes with
    the mean as well (`latent_dist.mode()`), so the autoencoder is trained as it is used.
    `chroma_weight` adds the MSE of the blocks' colour apart from their lightness: lightness is most of
    an image's variance and is learnt first; on open sets, 595 steps without this term gave an
    autoencoder whose latents carried no colour at all (a linear probe's R² for chroma: 0.0; grey: 0.92).
    """
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.mode()).sample
    loss = F.mse_loss(recon, x) + kl_weight * posterior.kl().mean()
    if chroma_weight:
        loss = loss + chroma_weight * F.mse_loss(chroma(recon), chroma(x))
    return loss


@torch.no_grad()
def evaluate(vae: AutoencoderKL, held_out: torch.Tensor) -> dict[str, float]:
    """PSNR of mean-latent reconstructions, and the latents' std (for the scaling factor)."""
    vae.eval()
    held_out = held_out.to(vae.device)
    latents = torch.cat([vae.encode(c).latent_dist.mode() for c in held_out.split(32)])
    recon = torch.cat([vae.decode(z).sample.clamp(-1, 1) for z in latents.split(32)])
    mse = ((recon - held_out) / 2).pow(2).mean((1, 2, 3))  # per image, in [0, 1] units
    vae.train()
    return {"psnr": float((10 * torch.log10(1 / mse)).mean()), "latent_std": float(latents.std())}


def save(vae: AutoencoderKL, out: Path, metrics: dict) -> None:
    """Written to a temporary folder and renamed: a stop never leaves half a checkpoint."""
    with atomic_folder(out) as tmp:
        vae.save_pretrained(tmp)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/vae-tiny")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-sets", type=int, default=4, help="sets of 4 images per step")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--kl-weight", type=float, default=1e-6)
    p.add_argument("--chroma-weight", type=float, default=0.0, help="weight of the colour term (see loss_fn)")
    p.add_argument("--warm-steps", type=int, default=1500, help="first steps at half resolution")
    p.add_argument("--eval-sets", type=int, default=25, help="held-out sets of 4 images")
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default="synth:train", help="comma-separated sources, one batch from each in turn")
    p.add_argument("--init", default=None, help="a trained AutoencoderKL folder to go on from")
    p.add_argument("--latent-channels", type=int, help="new: default the preset's; with --init: widen to this many")
    p.add_argument("--decoder-only", action="store_true", help="freeze the encoder: the latent space stays")
    p.add_argument("--eval-data", default=None, help="held-out sources (default: each source's held-out split)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast there)")
    p.add_argument("--minutes", type=float, default=None, help="stop (and save) after this long")
    return p.parse_args(argv)


def build(
    args: argparse.Namespace,
) -> tuple[AutoencoderKL, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The autoencoder (new or from --init), its optimiser and its warm-up-and-cosine schedule."""
    torch.manual_seed(args.seed)
    preset = get_preset(args.preset)
    if args.latent_channels and not args.init:
        preset = preset.replace(vae={**preset.vae, "latent_channels": args.latent_channels})
    vae = load_autoencoder(args.init) if args.init else build_autoencoder(preset)
    if args.init and args.latent_channels not in (None, vae.config.latent_channels):
        if args.decoder_only:
            raise ValueError("--latent-channels changes the encoder, which --decoder-only keeps")
        vae = widen_latents(vae, args.latent_channels)
    vae.train()
    vae.to(args.device)
    if args.decoder_only:
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    opt = torch.optim.AdamW([q for q in vae.parameters() if q.requires_grad], lr=args.lr, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(opt, min(200, args.steps // 10 + 1), args.steps)
    return vae, opt, schedule


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    vae, opt, schedule = build(args)
    autocast = torch.autocast("cuda", torch.bfloat16) if vae.device.type == "cuda" else nullcontext()
    res = vae.config.sample_size
    sources = args.data.split(",")
    evals = args.eval_data.split(",") if args.eval_data else sources
    held_out = {src: held_out_sets(src, args.eval_sets, res, args.seed + 1) for src in evals}
    out, batches = Path(args.out), mixed(sources, args.batch_sets, res, args.workers, args.seed, args.device)
    started = time.monotonic()
    for step in (bar := tqdm(range(1, args.steps + 1), desc="autoencoder")):
        x = next(batches)  # (N, 3, H, W)
        if step <= args.warm_steps:  # half resolution first: 4x cheaper steps while colours and shapes are learnt
            x = F.avg_pool2d(x, 2)
        with autocast:
            loss = loss_fn(vae, x, args.kl_weight, args.chroma_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        late = args.minutes is not None and time.monotonic() - started > 60 * args.minutes
        if step % args.save_every == 0 or step == args.steps or late:
            per_source = {src: evaluate(vae, x) for src, x in held_out.items()}
            metrics = {"step": step, **per_source[evals[0]], "per_source": per_source, "command": vars(args)}
            if not args.decoder_only:  # a frozen encoder keeps its latents, so its scale too
                vae.register_to_config(scaling_factor=1.0 / metrics["latent_std"])
            save(vae, out, metrics)
            psnrs = ", ".join(f"{src} {m['psnr']:.2f} dB" for src, m in per_source.items())
            tqdm.write(f"step {step}: held-out PSNR {psnrs}; latent std {metrics['latent_std']:.3f}")
        if late:
            break
    return metrics


if __name__ == "__main__":
    main()
