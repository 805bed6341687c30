"""How fine the colour metric's chroma bins should be: own-set retrieval of the truth, of a change no one
sees (JPEG q95) and of changes anyone sees (hue turned, saturation scaled), for several bin counts.

A good metric keeps the first two near 1 and drops the others; grey images must stay at chance.

    python bench/colour_metric.py --data open:heldout open:hard --sets 64 --bins 16 24 32 48 64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[1])
from m2m.images import to_model_size, to_pil, to_tensor
from train.evaluation.check_autoencoder import images_of
from train.evaluation.set_metrics import as_jpeg, colour_histograms, own_set_retrieval, recoloured

CHANGES = {
    "truth": lambda x: x,
    "JPEG q95": lambda x: torch.stack([to_tensor([as_jpeg(img) for img in to_pil(s)]) for s in x]),
    "hue +15°": lambda x: recoloured(x, degrees=15),
    "hue +30°": lambda x: recoloured(x, degrees=30),
    "saturation ×0.5": lambda x: recoloured(x, saturation=0.5),
    "saturation ×2": lambda x: recoloured(x, saturation=2.0),
    "grey": lambda x: recoloured(x, saturation=0.0),
}


def retrievals(pixels: torch.Tensor, context: int, bins: int, group: int) -> dict[str, float]:
    """pixels (S, K, 3, H, W): the first `context` images of each set are its context, the rest are changed."""

    def hist(x: torch.Tensor) -> torch.Tensor:  # (S, n, 3, H, W) -> (S, n, bins²)
        return colour_histograms(x.flatten(0, 1), bins).unflatten(0, x.shape[:2])

    ctx, rest = hist(pixels[:, :context]), pixels[:, context:]
    return {name: own_set_retrieval(hist(change(rest)), ctx, group) for name, change in CHANGES.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", default=["open:heldout", "open:hard"])
    p.add_argument("--sets", type=int, default=64)
    p.add_argument("--context", type=int, default=4)
    p.add_argument("--length", type=int, default=8)
    p.add_argument("--bins", type=int, nargs="+", default=[16, 24, 32, 48, 64])
    args = p.parse_args(argv)
    print(f"| data | bins per axis | {' | '.join(CHANGES)} |\n|---|---|{'---|' * len(CHANGES)}")
    for source in args.data:
        sets = images_of(source, args.sets, args.length)
        pixels = torch.stack([to_tensor([to_model_size(img, 128) for img in s]) for s in sets])  # (S, K, 3, H, W)
        for bins in args.bins:
            r = retrievals(pixels, args.context, bins, min(16, len(sets)))
            print(f"| {source} | {bins} | {' | '.join(f'{v:.3f}' for v in r.values())} |", flush=True)


if __name__ == "__main__":
    main()
