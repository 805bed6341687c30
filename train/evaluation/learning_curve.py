"""Plot own-set retrieval against training images seen, with the issue's bar and the autoencoder's ceiling.

    python -m train.evaluation.learning_curve --csv docs/learning-curve.csv --out docs/learning-curve.png

The CSV holds one measured point per row (model, images, colour, shape), each from
`train/evaluation/evaluate.py --data open:heldout --contexts 4` on a snapshot of a run (docs/open-sets.md §4).
Drawn with Pillow on a log scale of images: two panels, colour and shape; colour's trend in log(images) is
extended (dotted), to read off the images a bar implies.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageDraw

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])

PANEL_W, PANEL_H, MARGIN = 420, 300, 50
# a colour per series, up to 16
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#e7ba52")  # fmt: skip
LEGEND_ROW = 18
TREND_SPAN = 2  # a trend is drawn for a series whose images grow at least this many times: over less, it is noise


def read_points(path: Path) -> dict[str, list[tuple[float, float, float]]]:
    """model -> [(images, colour, shape)] sorted by images."""
    points = defaultdict(list)
    with path.open() as f:
        for row in csv.DictReader(f):
            points[row["model"]].append((float(row["images"]), float(row["colour"]), float(row["shape"])))
    return {model: sorted(p) for model, p in points.items()}


class Panel:
    """One chart: x = log10(images) over [lo, hi], y = retrieval over [0, 1], drawn at `origin`."""

    def __init__(self, draw: ImageDraw.ImageDraw, origin: tuple[int, int], lo: float, hi: float, title: str):
        self.draw, (self.x0, self.y0), self.lo, self.hi = draw, origin, math.log10(lo), math.log10(hi)
        draw.rectangle([self.x0, self.y0, self.x0 + PANEL_W, self.y0 + PANEL_H], outline="black")
        draw.text((self.x0, self.y0 - 16), title, fill="black")
        for y in (0.0, 0.25, 0.5, 0.75, 1.0):
            draw.text((self.x0 - 34, self.xy(10**self.lo, y)[1] - 6), f"{y:.2f}", fill="black")
        for e in range(math.ceil(self.lo), math.floor(self.hi) + 1):
            x = self.xy(10**e, 0)[0]
            draw.line([x, self.y0 + PANEL_H, x, self.y0 + PANEL_H + 4], fill="black")
            draw.text((x - 10, self.y0 + PANEL_H + 6), f"1e{e}", fill="black")

    def xy(self, images: float, y: float) -> tuple[float, float]:
        fx = (math.log10(images) - self.lo) / (self.hi - self.lo)
        return self.x0 + fx * PANEL_W, self.y0 + (1 - y) * PANEL_H

    def hline(self, y: float, label: str, colour: str, right: bool = False) -> None:
        (xa, ya), (xb, _) = self.xy(10**self.lo, y), self.xy(10**self.hi, y)
        for x in range(int(xa), int(xb), 8):  # dashed
            self.draw.line([x, ya, min(x + 4, xb), ya], fill=colour)
        self.draw.text((xb - 6 * len(label) - 4 if right else xa + 4, ya - 12), label, fill=colour)

    def trend(self, points: list[tuple[float, float]], colour: str, cap: float) -> None:
        """The least-squares line of y on log10(images), dotted from the last point on, up to `cap`."""
        xs, ys = [math.log10(i) for i, _ in points], [y for _, y in points]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        spread = sum((x - mx) ** 2 for x in xs)
        if spread == 0:  # every point at one number of images: no trend to draw
            return
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / spread
        steps = [xs[-1] + (self.hi - xs[-1]) * f / 40 for f in range(41)]
        line = [self.xy(10**x, max(0.0, min(cap, my + slope * (x - mx)))) for x in steps]
        for a, b in zip(line[::2], line[1::2], strict=False):
            self.draw.line([a, b], fill=colour)

    def series(self, points: list[tuple[float, float]], colour: str) -> None:
        xy = [self.xy(i, y) for i, y in points]
        if len(xy) > 1:
            self.draw.line(xy, fill=colour, width=2)
        for x, y in xy:
            self.draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)


def legend_width(draw: ImageDraw.ImageDraw, name: str) -> float:
    """An entry's width: its line, its name and the gap after it."""
    return 26 + draw.textlength(name) + 30


def legend_rows(names: list[str], width: float) -> list[list[str]]:
    """The legend's entries, in order, wrapped into rows that fit `width`."""
    draw, rows, x = ImageDraw.Draw(Image.new("RGB", (1, 1))), [[]], 0.0
    for name in names:
        w = legend_width(draw, name)
        if rows[-1] and x + w > width:
            rows.append([])
            x = 0.0
        rows[-1].append(name)
        x += w
    return rows


def plot(points: dict, ceilings: dict[str, float], bars: dict[str, float], chance: float,
         source: str = "open:heldout") -> Image.Image:  # fmt: skip
    images = [i for p in points.values() for i, _, _ in p]
    lo, hi = 10 ** math.floor(math.log10(min(images))), 10 ** math.ceil(math.log10(max(images)) + 3)
    width = 2 * PANEL_W + 3 * MARGIN
    rows = legend_rows(list(points), width - 2 * MARGIN)
    img = Image.new("RGB", (width, PANEL_H + 3 * MARGIN + LEGEND_ROW * (len(rows) - 1)), "white")
    draw = ImageDraw.Draw(img)
    for k, metric in enumerate(("colour", "shape")):
        panel = Panel(draw, (MARGIN + k * (PANEL_W + MARGIN), MARGIN), lo, hi,
                      f"{metric} retrieval among 16, {source}, c = 4 (x: training images)")  # fmt: skip
        panel.hline(bars[metric], f"bar {bars[metric]:.2f}", "black")
        panel.hline(ceilings[metric], f"autoencoder round trip {ceilings[metric]:.2f}", "gray", right=True)
        panel.hline(chance, "chance", "gray")
        for m, p in enumerate(points.values()):
            series = [(i, c if metric == "colour" else s) for i, c, s in p]
            panel.series(series, COLOURS[m % len(COLOURS)])
            if metric == "colour" and series[-1][0] >= TREND_SPAN * series[0][0]:
                panel.trend(series, COLOURS[m % len(COLOURS)], ceilings[metric])
    colour = {model: COLOURS[m % len(COLOURS)] for m, model in enumerate(points)}  # as in the panels
    top = PANEL_H + 2 * MARGIN + 10
    for r, row in enumerate(rows):
        x, y = MARGIN, top + r * LEGEND_ROW
        for model in row:
            draw.line([x, y, x + 20, y], fill=colour[model], width=2)
            draw.text((x + 26, y - 6), model, fill=colour[model])
            x += legend_width(draw, model)
    note = f"dotted: colour's least-squares trend in log(images), up to the round trip (over {TREND_SPAN}x images)"
    draw.text((MARGIN, y + 14), note, fill="gray")
    return img


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", default="docs/learning-curve.csv")
    p.add_argument("--out", default="docs/learning-curve.png")
    p.add_argument("--colour-ceiling", type=float, default=0.906, help="the round trip of the truth (evaluate.py)")
    p.add_argument("--shape-ceiling", type=float, default=0.562)
    args = p.parse_args(argv)
    ceilings = {"colour": args.colour_ceiling, "shape": args.shape_ceiling}
    plot(read_points(Path(args.csv)), ceilings, {"colour": 0.90, "shape": 0.80}, 1 / 16).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
