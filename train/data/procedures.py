"""Synthetic visual procedures: six families drawn step by step, 4 to 8 steps (a task fine-tune's data).

    python -m train.data.procedures --out data/procedures --split train --instances 3000

Families: stacking blocks, drawing a figure stroke by stroke, filling a grid, slicing a pie,
a plant growing, assembling a shape from pieces. Each instance draws its own colours, layout
and number of steps; step k shows the state after k actions, so a set is the procedure in
order. Instances whose index is a multiple of 10 belong to `heldout`; an instance is
deterministic given (split, index, seed).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])

SIZE = 128
SS = 2  # supersampling
Drawing = Callable[[ImageDraw.ImageDraw, int], None]  # draws the state after k actions
CUT = 8  # a pie's cut in px: at 2, the true next step through the autoencoder passed 0.06 (bench/pie_cuts.py)
# A figure's vertex jitter (rad) and pull-in spread: 0.2 and 0.4 until 2026-12-07, when a perfect model sampling the
# unseen vertex passed 0.59 of the next steps (bench/figure_strokes.py); regular now, so the first strokes say the next
FIGURE_JITTER, FIGURE_SPREAD = 0.0, 0.0


def _colour(rng: np.random.Generator, lo: int = 40, hi: int = 220) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(lo, hi, 3))


def stack_blocks(rng, steps):
    w, colours = rng.integers(28, 44), [_colour(rng) for _ in range(steps)]
    x0, h = int(rng.integers(20, 128 - 20 - w)), int(rng.integers(10, 14))
    shifts = rng.integers(-6, 7, steps)

    def draw(d: ImageDraw.ImageDraw, k: int):
        for i in range(k):
            x, y = x0 + shifts[i], 118 - (i + 1) * h
            d.rectangle([x * SS, y * SS, (x + w) * SS, (y + h) * SS], fill=colours[i], outline=(30, 30, 30), width=SS)

    return draw


@dataclass(frozen=True, eq=False)  # arrays: no field-wise == or hash
class Figure:
    """A figure's n + 1 vertices: nominal angles 2π/(n + 1) apart around a centre, each turned by its own jitter
    and its x and y pulled in by their own factors (`scale`); a stroke joins each vertex to the next."""

    centre: tuple[float, float]
    radius: float
    nominal: np.ndarray  # (n + 1,) angles before the jitter
    jitter: np.ndarray  # (n + 1,)
    scale: np.ndarray  # (n + 1, 2) factors on x and y

    def vertex(self, i: int, jitter: float | None = None, scale: tuple[float, float] | None = None):
        """Vertex i, or where it would be with another jitter and scale (a plausible guess of an unseen one)."""
        a = self.nominal[i] + (self.jitter[i] if jitter is None else jitter)
        sx, sy = self.scale[i] if scale is None else scale
        return self.centre[0] + self.radius * math.cos(a) * sx, self.centre[1] + self.radius * math.sin(a) * sy


def figure_plan(
    rng: np.random.Generator, n: int, jitter: float = FIGURE_JITTER, spread: float = FIGURE_SPREAD
) -> Figure:
    """The vertices of an n-stroke figure: angle jitter in ±`jitter` rad, factors in [1 - `spread`, 1]. Other
    values draw as many numbers, so an instance keeps its other choices (position, colour, width)."""
    cx, cy, r = rng.integers(48, 80), rng.integers(48, 80), rng.integers(26, 40)
    nominal = rng.uniform(0, 2 * math.pi) + np.arange(n + 1) * 2 * math.pi / (n + 1)
    turns = rng.uniform(-jitter, jitter, n + 1)
    scale = np.array([(rng.uniform(1 - spread, 1), rng.uniform(1 - spread, 1)) for _ in range(n + 1)])
    return Figure((float(cx), float(cy)), float(r), nominal, turns, scale)


def figure_strokes(vertices: list[tuple[float, float]], colour, width: int) -> Drawing:
    """Stroke i joins vertex i to vertex i + 1 (n strokes, n + 1 vertices: the figure stays open)."""

    def draw(d, k):
        for i in range(k):
            (x1, y1), (x2, y2) = vertices[i], vertices[i + 1]
            d.line([x1 * SS, y1 * SS, x2 * SS, y2 * SS], fill=colour, width=width * SS)

    return draw


def figure_parts(rng, steps, jitter=FIGURE_JITTER, spread=FIGURE_SPREAD) -> tuple[Figure, tuple[int, int, int], int]:
    """An instance's figure, stroke colour and stroke width, in the order the generator draws them."""
    return figure_plan(rng, steps, jitter, spread), _colour(rng, 0, 120), int(rng.integers(3, 6))


def draw_figure(rng, steps, jitter: float = FIGURE_JITTER, spread: float = FIGURE_SPREAD):
    figure, colour, width = figure_parts(rng, steps, jitter, spread)
    return figure_strokes([figure.vertex(i) for i in range(steps + 1)], colour, width)


def fill_grid(rng, steps):
    """Cells filled in reading order from a random corner, along rows or columns: the first two say which."""
    side = int(rng.integers(3, 5))
    order = np.arange(side * side).reshape(side, side)  # (side, side): each cell's index, row-major
    order = order.T if rng.integers(2) else order
    cells = order[:: rng.choice([-1, 1]), :: rng.choice([-1, 1])].ravel()[:steps]
    colour, cell = _colour(rng), 96 // side

    def draw(d, k):
        for i in range(side * side):
            x, y = 16 + (i % side) * cell, 16 + (i // side) * cell
            fill = colour if i in cells[:k] else (250, 250, 250)
            d.rectangle([x * SS, y * SS, (x + cell) * SS, (y + cell) * SS], fill=fill, outline=(60, 60, 60), width=SS)

    return draw


def slice_pie(rng, steps, cut: int = CUT):
    colour, start = _colour(rng), float(rng.uniform(0, 360))

    def draw(d, k):
        d.ellipse([20 * SS, 20 * SS, 108 * SS, 108 * SS], fill=colour, outline=(40, 40, 40), width=SS)
        for i in range(k):  # the i-th cut: a gap from the centre, wide enough to survive the autoencoder
            a = math.radians(start + i * 360 / steps)
            d.line([64 * SS, 64 * SS, (64 + 44 * math.cos(a)) * SS, (64 + 44 * math.sin(a)) * SS],
                   fill=(255, 255, 255), width=cut * SS)  # fmt: skip

    return draw


def grow_plant(rng, steps):
    stem, leaf, flower = _colour(rng, 20, 120), _colour(rng, 20, 160), _colour(rng, 120, 255)
    x0, height, side = int(rng.integers(40, 88)), int(rng.integers(70, 95)), rng.choice([-1, 1])

    def draw(d, k):
        d.rectangle([0, 112 * SS, SIZE * SS, SIZE * SS], fill=(120, 90, 60))
        top = 112 - height * k / steps
        d.line([x0 * SS, 112 * SS, x0 * SS, top * SS], fill=stem, width=3 * SS)
        for i in range(1, k):
            y, s = 112 - height * i / steps, side * (1 if i % 2 else -1)
            d.ellipse([min(x0, x0 + s * 16) * SS, (y - 5) * SS, max(x0, x0 + s * 16) * SS, (y + 5) * SS], fill=leaf)
        if k == steps:
            d.ellipse([(x0 - 9) * SS, (top - 9) * SS, (x0 + 9) * SS, (top + 9) * SS], fill=flower)

    return draw


def assemble_shape(rng, steps):
    cx, cy, r = 64, 64, int(rng.integers(34, 46))
    colours = [_colour(rng) for _ in range(steps)]
    offset = float(rng.uniform(0, 2 * math.pi))

    def draw(d, k):
        d.ellipse([(cx - r) * SS, (cy - r) * SS, (cx + r) * SS, (cy + r) * SS], outline=(170, 170, 170), width=SS)
        for i in range(k):  # wedge-shaped pieces put in place one by one
            a0, a1 = offset + 2 * math.pi * i / steps, offset + 2 * math.pi * (i + 1) / steps
            pts = [(cx, cy)] + [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in np.linspace(a0, a1, 8)]
            d.polygon([(x * SS, y * SS) for x, y in pts], fill=colours[i], outline=(30, 30, 30))

    return draw


FAMILIES = {
    "stack-blocks": stack_blocks, "draw-figure": draw_figure, "fill-grid": fill_grid,
    "slice-pie": slice_pie, "grow-plant": grow_plant, "assemble-shape": assemble_shape,
}  # fmt: skip


def instance(split: str, index: int, seed: int = 0) -> tuple[str, int, tuple[int, int, int], np.random.Generator]:
    """Family, number of steps, background and drawing generator of instance `index` of a split. Families take turns by
    index within each split: by the global index, a multiple of 10, held-out instances were of the even families
    only (three of six, until 2026-12-07)."""
    heldout = split == "heldout"
    global_index = index * 10 if heldout else index + index // 9 + 1
    rng = np.random.default_rng([seed, global_index, 17])
    family = list(FAMILIES)[(index if heldout else global_index) % len(FAMILIES)]
    steps = int(rng.integers(4, 9))
    return family, steps, tuple(int(c) for c in rng.integers(225, 256, 3)), rng


def held_out(family: str, count: int) -> list[int]:
    """The first `count` held-out instances of a family (held-out families take turns by index)."""
    return [i for i in range(len(FAMILIES) * count) if instance("heldout", i)[0] == family][:count]


def render(split: str, index: int, seed: int = 0) -> tuple[str, list[Image.Image]]:
    """Instance `index` of a split: its family and its images, step 1 .. n (the state after each action)."""
    family, steps, background, rng = instance(split, index, seed)
    return family, draw_steps(FAMILIES[family](rng, steps), steps, background)


def draw_steps(draw: Drawing, steps: int, background: tuple[int, int, int]) -> list[Image.Image]:
    """A family's drawing as its images, step 1 .. n, supersampled then brought down to SIZE."""
    images = []
    for k in range(1, steps + 1):
        img = Image.new("RGB", (SIZE * SS, SIZE * SS), background)
        draw(ImageDraw.Draw(img), k)
        images.append(img.resize((SIZE, SIZE), Image.Resampling.LANCZOS))
    return images


def set_record(split: str, index: int, k: int = 8, seed: int = 0) -> dict:
    family, images = render(split, index, seed)
    return {
        "key": f"procedure-{split}-{index:07d}",
        "images": images[:k],
        "meta": {"caption": family, "labels": {"content": list(FAMILIES).index(family)}, "steps": len(images),
                 "ordered": True, "settings": {"source": "procedure-synth", "split": split}},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    from train.data.shards import write_shards_cli

    write_shards_cli(__doc__, set_record, "instances", 3000, 500, argv)


if __name__ == "__main__":
    main()
