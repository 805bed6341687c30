"""Can a figure's next stroke be told from its first ones? The step accuracy on held-out draw-figure steps of what a
perfect model could give, through a model's autoencoder:

- `truth`: the true next step (the autoencoder's ceiling);
- `guess`: the next stroke drawn to where its vertex is expected (its nominal angle, the mean pull-in) — the best
  single answer of a model that knows everything but the unseen vertex's own jitter;
- `sample`: that vertex drawn again from its distribution (a diffusion model samples; 4 draws each);

for the family as it was until 2026-12-07 (vertex jitter ±0.2 rad, pull-in 0.6–1) and as it is now, regular (no
jitter, no pull-in).

python bench/figure_strokes.py --checkpoint checkpoints/m2m-self-tiny-procedure
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

VARIANTS = {"until 2026-12-07": (0.2, 0.4), "regular (now)": (0.0, 0.0)}  # (angle jitter in rad, pull-in spread)
KS = (2, 3, 4)


def passed(pipe: M2MPipeline, images: list, target, k: int) -> float:
    """Whether the round trip of `target` (the next image a model gave) passes step k of `images`."""
    out = to_unit(round_trip(pipe, [target]))  # (1, 3, H, W)
    return scores(out, to_unit(images), k)["step_accuracy"]


def figure_steps(index: int, jitter: float, spread: float, vertex=None, k: int = 0) -> list:
    """Held-out figure `index`, its images step 1 .. n; with `vertex`, vertex k + 1 (the end of stroke k + 1)
    replaced by vertex(figure, k + 1)."""
    _, steps, background, rng = procedures.instance("heldout", index)
    figure, colour, width = procedures.figure_parts(rng, steps, jitter, spread)
    vertices = [figure.vertex(i) for i in range(steps + 1)]
    if vertex is not None:
        vertices[k + 1] = vertex(figure, k + 1)
    return procedures.draw_steps(procedures.figure_strokes(vertices, colour, width), steps, background)


def ceilings(pipe: M2MPipeline, figures: list[int], jitter: float, spread: float, draws: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    guess = lambda f, i: f.vertex(i, jitter=0.0, scale=(1 - spread / 2, 1 - spread / 2))  # noqa: E731
    sample = lambda f, i: f.vertex(  # noqa: E731
        i, jitter=rng.uniform(-jitter, jitter), scale=tuple(rng.uniform(1 - spread, 1, 2))
    )
    results: dict[str, list[float]] = {"truth": [], "guess": [], "sample": []}
    for index in figures:
        images = figure_steps(index, jitter, spread)
        for k in (k for k in KS if k < len(images)):
            results["truth"].append(passed(pipe, images, images[k], k))
            results["guess"].append(passed(pipe, images, figure_steps(index, jitter, spread, guess, k)[k], k))
            for _ in range(draws):
                drawn = figure_steps(index, jitter, spread, sample, k)[k]
                results["sample"].append(passed(pipe, images, drawn, k))
    return {name: float(np.mean(values)) for name, values in results.items()} | {"steps": len(results["truth"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="checkpoints/m2m-self-tiny-procedure")
    p.add_argument("--figures", type=int, default=24, help="held-out draw-figure instances")
    p.add_argument("--draws", type=int, default=4, help="samples of the unseen vertex per step")
    args = p.parse_args()
    pipe = load_pipeline(args.checkpoint)
    figures = procedures.held_out("draw-figure", args.figures)
    print("| figure | truth | guess | sample | steps |\n|---|---|---|---|---|")
    for name, (jitter, spread) in VARIANTS.items():
        c = ceilings(pipe, figures, jitter, spread, args.draws)
        print(f"| {name} | {c['truth']:.2f} | {c['guess']:.2f} | {c['sample']:.2f} | {c['steps']} |")


if __name__ == "__main__":
    main()
