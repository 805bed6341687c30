"""Does a held-out object's turn show? Per family, over held-out objects, 4 views given, the 5th to come:

- `last ~ next`: SSIM at 32 px between the last given view and the next one (copy-last's score: near 1, the turn
  hardly shows, and a model must be more exact than that to be counted);
- `truth`: the turn accuracy of the true next view through a model's autoencoder (what a perfect model could give);

for the objects with their two-tone split plane's normal isotropic (often a band around the turning axis, as until
2026-12-07; the spheres and the tones are today's) and as they are now (its vertical part scaled by nvs.PLANE_TILT).

python bench/nvs_turns.py --checkpoint checkpoints/m2m-self-tiny-nvs --objects 90
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[1])
from m2m.loading import load_pipeline
from m2m.pipeline import M2MPipeline
from train.data import nvs
from train.evaluation.evaluate import round_trip
from train.evaluation.tasks import scores, to_unit

K = 4  # views given


def object_scores(pipe: M2MPipeline, index: int, tilt: float) -> tuple[str, float, float]:
    """Held-out object `index`: its family, copy-last's SSIM at 32 px and the truth's turn accuracy."""
    spec = nvs.object_spec("heldout", index, tilt=tilt)
    images = nvs.render_object(spec)
    views = to_unit(images)  # (8, 3, H, W)
    last, truth = views[K - 1 : K], to_unit(round_trip(pipe, [images[K]]))  # (1, 3, H, W) each
    return spec["family"], scores(last, views, K)["ssim_32"], scores(truth, views, K)["turn_accuracy"]


def table(pipe: M2MPipeline, objects: int, tilt: float) -> dict[str, tuple[float, float, int]]:
    by_family = defaultdict(list)
    for index in range(objects):
        family, similar, turn = object_scores(pipe, index, tilt)
        by_family[family].append((similar, turn))
    rows = {f: (*np.mean(v, axis=0), len(v)) for f, v in sorted(by_family.items())}
    every = [x for v in by_family.values() for x in v]
    return rows | {"all": (*np.mean(every, axis=0), len(every))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="checkpoints/m2m-self-tiny-nvs")
    p.add_argument("--objects", type=int, default=90, help="held-out objects")
    args = p.parse_args()
    pipe = load_pipeline(args.checkpoint)
    old, new = table(pipe, args.objects, 1.0), table(pipe, args.objects, nvs.PLANE_TILT)
    print(f"| family | objects | isotropic split: last ~ next | truth | tilt {nvs.PLANE_TILT}: last ~ next | truth |")
    print("|---|---|---|---|---|---|")
    for family, (similar, turn, n) in old.items():
        similar_now, turn_now, _ = new[family]
        print(f"| {family} | {n} | {similar:.3f} | {turn:.2f} | {similar_now:.3f} | {turn_now:.2f} |")


if __name__ == "__main__":
    main()
