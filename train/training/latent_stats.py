"""Fit an autoencoder's per-channel latent mean and std on training sets, so that every channel the UNet denoises
has mean 0 and std 1 (m2m/autoencoder.py `fit_channel_stats`), and save it as a new autoencoder folder.

    python -m train.training.latent_stats --vae checkpoints/vae-tiny-open --data open:train procedure:train \\
        nvs:train --sets 64 --out runs/vae-tiny-open-channels

The weights are unchanged; only the config's `latents_mean`, `latents_std` and `scaling_factor` are. A model
trained on the new folder (`--vae`) denoises the balanced latents; a model trained on the old one cannot use it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])
from m2m.autoencoder import fit_channel_stats, load_autoencoder
from m2m.images import to_model_size, to_tensor
from train.data.loader import SetDataset


def training_images(sources: list[str], sets: int, resolution: int) -> torch.Tensor:
    """Every image of the first `sets` sets of each source: (N, 3, H, W) in [-1, 1]."""
    images = []
    for source in sources:
        records = SetDataset(source, resolution=resolution, n_sets=sets, shuffle=False).records()
        images += [to_model_size(img, resolution) for _, r in zip(range(sets), records, strict=False)
                   for img in r["images"]]  # fmt: skip
    return to_tensor(images)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae", required=True, help="an autoencoder folder (AutoencoderKL or ColourAutoencoderKL)")
    p.add_argument("--data", nargs="+", default=["open:train"], help="training sources, each weighed by --sets")
    p.add_argument("--sets", type=int, default=64, help="sets taken from each source")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    vae = load_autoencoder(args.vae, torch_dtype=torch.float32).eval()
    pixels = training_images(args.data, args.sets, vae.config.sample_size)
    stats = fit_channel_stats(vae, pixels)
    vae.save_pretrained(args.out)
    print(json.dumps({"images": len(pixels), **stats}))
    return stats


if __name__ == "__main__":
    main()
