"""How much does a turn change an object's latent? Per family, the rms of the change from one view to the next, in the
latents a change model denoises (its autoencoder's, with its per-channel stats), over training renders:

    python bench/nvs_changes.py --checkpoint checkpoints/m2m-self-tiny-nvs --data data/nvs --sets 160

A change model denoises that change times one scale for every set (`last_image_change_scale`, 1 / the rms over all
families), so a family whose turn changes little sits at a low signal against the noise schedule's
(m2m/conditioning.py: `last_image_change_relative`). `smallest`: the smallest step of the family's sets.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[1])
from m2m.autoencoder import to_model_latents
from m2m.images import to_tensor
from m2m.loading import load_pipeline
from train.data.loader import SetDataset


@torch.no_grad()
def step_rms(vae, images) -> torch.Tensor:
    """A set's views -> the rms of each step from a view to the next in the model's latents: (K - 1,)."""
    z = to_model_latents(vae, vae.encode(to_tensor(images)).latent_dist.mode())  # (K, c, h, w)
    return (z[1:] - z[:-1]).pow(2).mean((1, 2, 3)).sqrt()


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="checkpoints/m2m-self-tiny-nvs")
    p.add_argument("--data", default="data/nvs", help="rendered sets (train/data/nvs.py)")
    p.add_argument("--sets", type=int, default=160)
    args = p.parse_args(argv)
    vae = load_pipeline(args.checkpoint).vae
    steps = defaultdict(list)
    for record in list(SetDataset(args.data, n_sets=args.sets, shuffle=False).records())[: args.sets]:
        steps[record["meta"]["object"]["family"]].append(step_rms(vae, record["images"]))
    rms = {family: torch.cat(s) for family, s in steps.items()}
    every = torch.cat(list(rms.values()))
    print(f"all {sum(len(s) for s in steps.values())} sets: rms of a step {every.pow(2).mean().sqrt():.2f}")
    print("| family | sets | rms of a step | smallest |\n|---|---|---|---|")
    for family, r in sorted(rms.items(), key=lambda item: item[1].pow(2).mean()):
        print(f"| {family} | {len(steps[family])} | {r.pow(2).mean().sqrt():.2f} | {r.min():.2f} |")
    return {family: r.tolist() for family, r in rms.items()}


if __name__ == "__main__":
    main()
