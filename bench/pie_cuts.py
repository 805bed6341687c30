"""How wide a pie's cut must be for a procedure model to pass slice-pie at all: the step accuracy of the truth's
round trip through a model's autoencoder (what a perfect diffusion model could give), per cut width.

python bench/pie_cuts.py --checkpoint checkpoints/m2m-self-tiny-procedure --widths 2 4 6 8 10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[1])
from m2m.loading import load_pipeline
from m2m.pipeline import M2MPipeline
from train.data import procedures
from train.evaluation.evaluate import round_trip
from train.evaluation.tasks import scores, to_unit


def ceiling(pipe: M2MPipeline, width: int, pies: list[int], ks: tuple[int, ...]) -> tuple[float, int]:
    """The truth's round trip's step accuracy over the held-out pies `pies`, redrawn with cuts `width` px wide."""
    passed = []
    for index in pies:
        _, steps, background, rng = procedures.instance("heldout", index)
        images = procedures.draw_steps(procedures.slice_pie(rng, steps, cut=width), steps, background)
        for k in (k for k in ks if k < len(images)):
            truth = to_unit(round_trip(pipe, [images[k]]))  # (1, 3, H, W)
            passed.append(scores(truth, to_unit(images), k)["step_accuracy"])
    return float(np.mean(passed)), len(passed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="checkpoints/m2m-self-tiny-procedure")
    p.add_argument("--widths", type=int, nargs="+", default=[2, 4, 6, 8, 10])
    p.add_argument("--pies", type=int, default=24, help="held-out slice-pie instances")
    args = p.parse_args()
    pipe = load_pipeline(args.checkpoint)
    pies = procedures.held_out("slice-pie", args.pies)
    print("| cut (px) | truth's step accuracy | steps |\n|---|---|---|")
    for width in args.widths:
        accuracy, n = ceiling(pipe, width, pies, (2, 3, 4))
        print(f"| {width} | {accuracy:.2f} | {n} |")


if __name__ == "__main__":
    main()
