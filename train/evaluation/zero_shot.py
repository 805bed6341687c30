"""Zero-shot continuation of real photographs: do generated images keep the context's palette and style?

    python -m train.evaluation.zero_shot --checkpoint checkpoints/m2m-self-tiny

The context sets are `examples/zero-shot/<photo>/`: four crops of each of eight photographs that
scikit-image ships (made by examples/make_examples.py). The tiny models never saw a photograph,
so this asks what the paper shows on MSCOCO: whether the context's colours and look carry over.
For each set the model generates `--generate` images; the no-context baseline uses the same
seeds with an empty context. Measured against each set's context:

- palette distance: total variation between 4x4x4-bin RGB histograms (0 same, 1 disjoint)
- palette retrieval: share of generated images whose nearest context palette is their own (chance 1/8)
- style distance / retrieval: the same with low-level statistics (brightness, contrast,
  saturation, edge density), each standardised over all context images
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])
from m2m.images import load_image
from m2m.loading import load_pipeline
from m2m.sampling import add_arguments, from_arguments


def palette(img: Image.Image, bins: int = 4) -> np.ndarray:
    """Normalised RGB histogram (bins**3,)."""
    q = (np.asarray(img.convert("RGB"), dtype=np.int64) * bins) // 256  # (H, W, 3)
    idx = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    hist = np.bincount(idx.ravel(), minlength=bins**3).astype(np.float64)
    return hist / hist.sum()


def style_stats(img: Image.Image) -> np.ndarray:
    """(brightness, contrast, saturation, edge density) in [0, 1]."""
    rgb = np.asarray(img.convert("RGB"), dtype=np.float64) / 255
    grey = np.asarray(img.convert("L"), dtype=np.float64) / 255
    sat = np.asarray(img.convert("HSV"), dtype=np.float64)[..., 1] / 255
    edges = np.asarray(img.convert("L").filter(ImageFilter.FIND_EDGES), dtype=np.float64) / 255
    return np.array([rgb.mean(), grey.std(), sat.mean(), (edges > 0.1).mean()])


def consistency(contexts: list[list[Image.Image]], outputs: list[list[Image.Image]]) -> dict[str, float]:
    """Palette and style distance to the own context, and retrieval of the own context among all sets."""
    ctx_pal = np.stack([np.mean([palette(i) for i in ctx], 0) for ctx in contexts])  # (S, 64)
    all_stats = np.stack([style_stats(i) for ctx in contexts for i in ctx])
    mean, std = all_stats.mean(0), all_stats.std(0) + 1e-8
    ctx_sty = np.stack([np.mean([(style_stats(i) - mean) / std for i in ctx], 0) for ctx in contexts])  # (S, 4)
    pal_d, sty_d, pal_hit, sty_hit = [], [], [], []
    for s, gen in enumerate(outputs):
        for img in gen:
            dp = 0.5 * np.abs(ctx_pal - palette(img)).sum(1)  # (S,)
            ds = np.linalg.norm(ctx_sty - (style_stats(img) - mean) / std, axis=1)  # (S,)
            pal_d.append(dp[s])
            sty_d.append(ds[s])
            pal_hit.append(dp.argmin() == s)
            sty_hit.append(ds.argmin() == s)
    return {
        "palette_distance": float(np.mean(pal_d)),
        "palette_retrieval": float(np.mean(pal_hit)),
        "style_distance": float(np.mean(sty_d)),
        "style_retrieval": float(np.mean(sty_hit)),
    }


def load_sets(folder: Path) -> dict[str, list[Image.Image]]:
    sets = {d.name: [load_image(p) for p in sorted(d.glob("*.png"))] for d in sorted(folder.iterdir()) if d.is_dir()}
    if len(sets) < 2:
        raise SystemExit(f"{folder}: need at least two context sets (run examples/make_examples.py)")
    return sets


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--sets", default="examples/zero-shot")
    p.add_argument("--generate", type=int, default=4)
    add_arguments(p)  # --steps, --guidance, --seed (set i: seed + i), --scheduler, --max-context
    p.add_argument("--out", default=None, help="JSON (default: runs/zero-shot-<checkpoint>.json)")
    args = p.parse_args(argv)

    pipe = load_pipeline(args.checkpoint)
    pipe.set_progress_bar_config(disable=True)
    sets = load_sets(Path(args.sets))
    contexts = list(sets.values())
    params = from_arguments(args)
    seeds = [params.replace(seed=params.seed + i) for i in range(len(contexts))]
    model = [pipe(ctx, num_images=args.generate, params=p).images for ctx, p in zip(contexts, seeds, strict=True)]
    floor = [pipe([], num_images=args.generate, params=p).images for p in seeds]
    results = {"model": consistency(contexts, model), "no-context": consistency(contexts, floor),
               "chance_retrieval": 1 / len(contexts)}  # fmt: skip
    keys = list(results["model"])
    print("| group | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for group in ("model", "no-context"):
        print(f"| {group} | " + " | ".join(f"{results[group][k]:.3f}" for k in keys) + " |")
    out = Path(args.out or f"runs/zero-shot-{Path(args.checkpoint).name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"args": vars(args), "parameters": params.to_json(), "sets": list(sets), "results": results}
    out.write_text(json.dumps(record, indent=2))
    return results


if __name__ == "__main__":
    main()
