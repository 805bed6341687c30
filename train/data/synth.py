"""MIS-synth: an offline procedural domain with the structure of MIS (DESIGN.md §3).

A "caption" is a latent description: a content class (what is drawn) and a style (a palette
with its background, and a rendering: flat, outline or textured). Each image of a set redraws
the same caption with its own layout, pose, count and detail, as MIS's images share a caption
and differ in their initial noise. Everything is deterministic by seed.

    python -m train.data.synth --out data/mis-synth --sets 10000 --set-size 8
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])

SIZE = 128
SUPERSAMPLE = 2
Poly = tuple[list[tuple[float, float]], bool]  # points in unit coordinates, True = filled, False = hole


def _ngon(n: int, r: float = 1.0, phase: float = 0.0, cx: float = 0.0, cy: float = 0.0, sx: float = 1.0):
    return [(cx + sx * r * math.cos(phase + 2 * math.pi * i / n), cy + r * math.sin(phase + 2 * math.pi * i / n))
            for i in range(n)]  # fmt: skip


def _star() -> list[Poly]:
    pts = [(r * math.cos(math.pi * i / 5 - math.pi / 2), r * math.sin(math.pi * i / 5 - math.pi / 2))
           for i, r in zip(range(10), [1.0, 0.42] * 5, strict=True)]  # fmt: skip
    return [(pts, True)]


def _heart() -> list[Poly]:
    t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    x, y = 16 * np.sin(t) ** 3, -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return [(list(zip(x / 17, y / 17 - 0.1, strict=True)), True)]


def _flower() -> list[Poly]:
    petals = [
        (_ngon(24, 0.36, 0, 0.55 * math.cos(a), 0.55 * math.sin(a)), True) for a in np.arange(5) * 2 * math.pi / 5
    ]
    return [*petals, (_ngon(24, 0.3), False)]


SHAPES = {
    "circle": lambda: [(_ngon(48), True)],
    "square": lambda: [(_ngon(4, 1.0, math.pi / 4), True)],
    "triangle": lambda: [(_ngon(3, 1.0, -math.pi / 2), True)],
    "star": _star,
    "heart": _heart,
    "cross": lambda: [([(-.3, -1), (.3, -1), (.3, -.3), (1, -.3), (1, .3), (.3, .3), (.3, 1), (-.3, 1), (-.3, .3),
                        (-1, .3), (-1, -.3), (-.3, -.3)], True)],
    "ring": lambda: [(_ngon(48), True), (_ngon(48, 0.55), False)],
    "diamond": lambda: [(_ngon(4, 1.0, 0, sx=0.6), True)],
    "arrow": lambda: [([(-1, -.3), (.2, -.3), (.2, -.75), (1, 0), (.2, .75), (.2, .3), (-1, .3)], True)],
    "moon": lambda: [(_ngon(48), True), (_ngon(48, 0.85, 0, 0.45, -0.15), False)],
    "house": lambda: [([(-.75, 1), (.75, 1), (.75, 0), (-.75, 0)], True), ([(-1, .05), (0, -1), (1, .05)], True),
                      ([(-.2, 1), (.2, 1), (.2, .45), (-.2, .45)], False)],
    "tree": lambda: [([(0, -1), (.8, .45), (-.8, .45)], True), ([(-.18, .4), (.18, .4), (.18, 1), (-.18, 1)], True)],
    "flower": _flower,
    "fish": lambda: [(_ngon(32, 0.55, 0, -0.1, 0, sx=1.4), True), ([(.55, 0), (1, -.5), (1, .5)], True),
                     (_ngon(12, 0.08, 0, -0.7, -0.1), False)],
}  # fmt: skip
CLASSES = tuple(SHAPES)

# (background, pattern, foreground colours): each palette brings its own background
PALETTES = (
    ((245, 240, 225), "plain", ((214, 69, 65), (38, 70, 83), (233, 196, 106))),
    ((20, 24, 48), "dots", ((255, 183, 3), (251, 133, 0), (255, 230, 160))),
    ((220, 238, 250), "gradient", ((2, 62, 138), (0, 150, 199), (72, 202, 228))),
    ((34, 60, 40), "stripes", ((149, 213, 178), (216, 243, 220), (82, 183, 136))),
    ((250, 220, 230), "plain", ((199, 0, 57), (144, 12, 63), (88, 24, 69))),
    ((40, 40, 40), "gradient", ((230, 230, 230), (160, 160, 160), (250, 250, 250))),
    ((255, 244, 204), "stripes", ((128, 0, 128), (75, 0, 130), (186, 85, 211))),
    ((200, 230, 201), "dots", ((230, 81, 0), (245, 124, 0), (255, 167, 38))),
)
RENDERINGS = ("flat", "outline", "textured")
STYLES = tuple((p, r) for p in range(len(PALETTES)) for r in RENDERINGS)  # 24 styles


@dataclass(frozen=True)
class Caption:
    """The latent description shared by every image of a set."""

    content: int  # index into CLASSES
    style: int  # index into STYLES

    @property
    def text(self) -> str:
        palette, rendering = STYLES[self.style]
        return f"{CLASSES[self.content]}, {rendering}, palette {palette}"


def is_heldout(caption: Caption) -> bool:
    """About 1 in 8 class-and-style combinations is never seen in training (every class and style is)."""
    return (caption.content * 7 + caption.style * 3) % 8 == 0


def captions(split: str) -> list[Caption]:
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    every = [Caption(c, s) for c in range(len(CLASSES)) for s in range(len(STYLES))]
    return [c for c in every if is_heldout(c) == (split == "heldout")]


def background(palette: int, rng: np.random.Generator) -> Image.Image:
    colour, pattern, fg = PALETTES[palette]
    n = SIZE * SUPERSAMPLE
    img = Image.new("RGB", (n, n), colour)
    draw = ImageDraw.Draw(img)
    accent = tuple(int(0.85 * a + 0.15 * b) for a, b in zip(colour, fg[0], strict=True))
    if pattern == "stripes":
        period, offset = n // 8, int(rng.integers(0, n // 8))
        for x in range(-n, 2 * n, period):
            draw.line([(x + offset, 0), (x + offset - n, n)], fill=accent, width=period // 3)
    elif pattern == "dots":
        step, jitter = n // 6, rng.integers(0, n // 6, size=2)
        for x in range(0, n + step, step):
            for y in range(0, n + step, step):
                draw.ellipse((x - 6 + jitter[0], y - 6 + jitter[1], x + 6 + jitter[0], y + 6 + jitter[1]), fill=accent)
    elif pattern == "gradient":
        ramp = np.linspace(0, 1, n)[:, None, None]
        arr = (1 - ramp) * np.array(colour) + ramp * np.array(accent)
        img = Image.fromarray(np.repeat(arr, n, axis=1).astype(np.uint8))
    return img


def place(shape: str, cx: float, cy: float, radius: float, angle: float) -> list[Poly]:
    """The shape's polygons moved to (cx, cy), scaled and rotated, in pixels."""
    ca, sa = math.cos(angle), math.sin(angle)
    return [([(cx + radius * (x * ca - y * sa), cy + radius * (x * sa + y * ca)) for x, y in pts], filled)
            for pts, filled in SHAPES[shape]()]  # fmt: skip


def paint(img: Image.Image, polys: list[Poly], rendering: str, fg, rng: np.random.Generator) -> None:
    """Draw one object onto `img` in the style's rendering."""
    n = img.size[0]
    main, second = (fg[i] for i in rng.permutation(len(fg))[:2])
    if rendering == "outline":
        draw, width = ImageDraw.Draw(img), int(rng.integers(5, 9))
        for xy, _ in polys:
            draw.polygon(xy, outline=main, width=width)
        return
    mask = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(mask)
    for xy, filled in polys:
        draw.polygon(xy, fill=255 if filled else 0)
    if rendering == "flat":
        img.paste(main, mask=mask)
        return
    texture = Image.new("RGB", (n, n), main)  # textured: stripes of two palette colours at a random angle
    draw = ImageDraw.Draw(texture)
    period = int(rng.integers(10, 18))
    for x in range(-n, 2 * n, period):
        draw.line([(x, 0), (x + n // 2, n)], fill=second, width=period // 2)
    img.paste(texture.rotate(float(rng.uniform(0, 180))), mask=mask)


def render(caption: Caption, seed: int) -> Image.Image:
    """One image of the caption: layout, pose, count and detail come from `seed`."""
    rng = np.random.default_rng(seed)
    palette, rendering = STYLES[caption.style]
    img = background(palette, rng)
    n = SIZE * SUPERSAMPLE
    count = int(rng.integers(1, 4))
    radius = n * {1: 0.3, 2: 0.2, 3: 0.16}[count]
    for _ in range(count):
        r = radius * rng.uniform(0.75, 1.15)
        cx, cy = rng.uniform(r, n - r, size=2)
        polys = place(CLASSES[caption.content], cx, cy, r, float(rng.uniform(-0.6, 0.6)))
        paint(img, polys, rendering, PALETTES[palette][2], rng)
    return img.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def make_set(caption: Caption, seed: int, k: int) -> list[Image.Image]:
    """K images of one caption, image i drawn from seed (seed, i)."""
    return [render(caption, int(np.random.SeedSequence([seed, i]).generate_state(1)[0])) for i in range(k)]


def sample_caption(split: str, index: int, seed: int = 0) -> Caption:
    """The caption of set `index` of a split: uniform over the split's combinations, deterministic."""
    pool = captions(split)
    return pool[int(np.random.default_rng([seed, index, split == "heldout"]).integers(len(pool)))]


def set_record(split: str, index: int, k: int, seed: int = 0) -> dict:
    """Set `index` of a split as a shard sample: images, caption, labels, seeds."""
    caption = sample_caption(split, index, seed)
    set_seed = int(np.random.SeedSequence([seed, index, 7 + (split == "heldout")]).generate_state(1)[0])
    return {
        "key": f"{split}-{index:07d}",
        "images": make_set(caption, set_seed, k),
        "meta": {
            "caption": caption.text,
            "labels": {"content": caption.content, "style": caption.style},
            "seeds": {"set": set_seed},
            "settings": {"source": "mis-synth", "split": split, "size": SIZE},
        },
    }


def main(argv: list[str] | None = None) -> None:
    from train.data.shards import write_shards_cli

    write_shards_cli(__doc__, set_record, "sets", 10000, 500, argv, set_size=8)


if __name__ == "__main__":
    main()
