"""Fit an autoencoder's per-channel latent mean and std on training sets, so that every channel the UNet denoises
has mean 0 and std 1 (m2m/autoencoder.py `fit_channel_stats`), and save it as a new autoencoder folder.

    python -m train.training.latent_stats --vae checkpoints/vae-tiny-open --data open:train procedure:train \\
        nvs:train --sets 64 --out runs/vae-tiny-open-channels

The weights are unchanged; only the config's `latents_mean`, `latents_std` and `scaling_factor` are. A model
trained on the new folder (`--vae`) denoises the balanced latents; a model trained on the old one cannot use it.
`--changes` also prints the rms of the change from one image of a set to the next in those latents, and the
`--last-image-change-scale` that gives it unit rms (m2m/conditioning.py: what a change model denoises).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])
from m2m.autoencoder import fit_channel_stats, load_autoencoder, to_model_latents
from m2m.images import to_model_size, to_tensor
from train.data.loader import SetDataset


def training_sets(sources: list[str], sets: int, resolution: int) -> list[torch.Tensor]:
    """The first `sets` sets of each source, each (K, 3, H, W) in [-1, 1]."""
    out = []
    for source in sources:
        records = SetDataset(source, resolution=resolution, n_sets=sets, shuffle=False).records()
        out += [to_tensor([to_model_size(img, resolution) for img in r["images"]])
                for _, r in zip(range(sets), records, strict=False)]  # fmt: skip
    return out


@torch.no_grad()
def change_rms(vae: AutoencoderKL, sets: list[torch.Tensor]) -> float:
    """The rms of the change from each image of a set to the next, in the latents the UNet denoises."""
    changes = [z[1:] - z[:-1] for z in (to_model_latents(vae, vae.encode(x).latent_dist.mode()) for x in sets)]
    return torch.cat(changes).pow(2).mean().sqrt().item()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae", required=True, help="an autoencoder folder (AutoencoderKL or ColourAutoencoderKL)")
    p.add_argument("--data", nargs="+", default=["open:train"], help="training sources, each weighed by --sets")
    p.add_argument("--sets", type=int, default=64, help="sets taken from each source")
    p.add_argument("--out", required=True)
    p.add_argument("--changes", action="store_true", help="also the rms of a set's change from image to image")
    args = p.parse_args(argv)
    vae = load_autoencoder(args.vae, torch_dtype=torch.float32).eval()
    sets = training_sets(args.data, args.sets, vae.config.sample_size)
    pixels = torch.cat(sets)
    stats = fit_channel_stats(vae, pixels)
    vae.save_pretrained(args.out)
    if args.changes:
        rms = change_rms(vae, [x for x in sets if len(x) > 1])
        stats.update(change_rms=rms, last_image_change_scale=1 / rms)
    print(json.dumps({"images": len(pixels), **stats}))
    return stats


if __name__ == "__main__":
    main()
