"""The per-set parameter draws that `draw_sets` replaced: one torch generator per set, one set at a time.

Kept only as the baseline that bench/set_drawing.py times the batched draws against (training never uses it).
Its distributions are the batched draws' ones (compared over 3,000 sets of every split when they were replaced);
its values are not: the batched draws hash their keys instead of seeding a generator.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from train.data.open_sets import (
    BACKGROUNDS,
    FAMILIES,
    FOURIER,
    HARD_HUES,
    INSTANCES,
    MAX_COUNTS,
    MAX_SET,
    PRIMS,
    RENDERINGS,
    SIMPLE_SPLITS,
    SPLITS,
    hsv_to_rgb,
    simplified,
    split_families,
)


class Draw:
    """Random draws from one set's own generator."""

    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(seed)

    def uniform(self, lo: float, hi: float, *shape: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(shape or (1,), generator=self.gen)

    def integers(self, lo: int, hi: int, *shape: int) -> Tensor:
        """Integers in [lo, hi]."""
        return torch.randint(lo, hi + 1, shape or (1,), generator=self.gen)

    def choice(self, options: tuple | list | range) -> object:
        return options[int(self.integers(0, len(options) - 1))]

    def chance(self, p: float) -> bool:
        return bool(self.uniform(0, 1) < p)


def set_seed(split: str, index: int, seed: int = 0) -> int:
    if split not in SPLITS:
        raise ValueError(f"open sets: the split must be one of {sorted(SPLITS)}, got {split!r}")
    return int(np.random.SeedSequence([seed, index, SPLITS[split]]).generate_state(1)[0])


def draw_hue(d: Draw, split: str, n: int) -> Tensor:
    """Hues anywhere but the hard band (train, heldout), or inside it (hard)."""
    lo, hi = HARD_HUES
    if split == "hard":
        return d.uniform(lo, hi, n)
    u = d.uniform(0, 1 - (hi - lo), n)
    return torch.where(u < lo, u, u + (hi - lo))


def draw_colours(d: Draw, split: str) -> dict[str, Tensor]:
    """1-3 foreground colours, an accent and two background colours that contrast with them."""
    n = int(d.integers(1, 3))
    value = d.uniform(0.3, 1.0)
    fg = hsv_to_rgb(
        draw_hue(d, split, 3), d.uniform(0.25, 1.0, 3) ** 0.7, (value + d.uniform(-0.15, 0.15, 3)).clamp(0.2, 1)
    )
    accent = hsv_to_rgb(draw_hue(d, split, 1), d.uniform(0.0, 1.0, 1), d.uniform(0.1, 1.0, 1))[0]
    train_split = "train" if split == "hard" else split  # backgrounds keep to the training hues
    bg_value = (value + d.uniform(0.35, 0.65)) % 1.0
    bg_h = draw_hue(d, train_split, 2)
    bg_v = torch.cat([bg_value, (bg_value + d.uniform(-0.3, 0.3)).clamp(0.05, 1.0)])
    bg = hsv_to_rgb(bg_h, d.uniform(0.0, 0.6, 2), bg_v.clamp(0.05, 1.0))
    return {"palette": fg, "n_colours": torch.tensor(n), "accent": accent, "bg": bg}  # (3, 3), (), (3,), (2, 3)


def draw_primitives(d: Draw, family: str) -> dict[str, Tensor]:
    """Up to PRIMS primitives: radial kind (0 star, 1 superellipse, 2 curve), its parameters and placement."""
    p = {
        "kind": d.integers(0, 2, PRIMS), "active": torch.tensor([True, False, False]),
        "subtract": torch.zeros(PRIMS, dtype=torch.bool), "points": d.integers(3, 9, PRIMS).float(),
        "inner": d.uniform(0.3, 1.0, PRIMS), "exponent": 2 ** d.uniform(-0.8, 2.5, PRIMS),
        "amp": d.uniform(-1, 1, PRIMS, FOURIER) * d.uniform(0.05, 0.25, PRIMS, 1),
        "phase": d.uniform(0, 2 * math.pi, PRIMS, FOURIER), "hole": torch.zeros(PRIMS),
        "offset": torch.zeros(PRIMS, 2), "scale": torch.ones(PRIMS), "rotation": d.uniform(0, 2 * math.pi, PRIMS),
        "aspect": torch.ones(PRIMS),
    }  # fmt: skip
    FAMILY_SHAPES[family](d, p)
    return p


def _polygon(d: Draw, p: dict) -> None:
    p["kind"][0] = 0
    if d.chance(0.4):  # a regular polygon: the inner vertices sit on its edges
        p["inner"][0] = math.cos(math.pi / p["points"][0])


def _superellipse(d: Draw, p: dict) -> None:
    p["kind"][0], p["aspect"][0] = 1, d.uniform(0.45, 1.0)


def _ring(d: Draw, p: dict) -> None:
    p["kind"][0] = d.choice((0, 1, 1))
    p["inner"][0] = math.cos(math.pi / p["points"][0])
    p["hole"][0] = d.uniform(0.35, 0.75)


def _cross(d: Draw, p: dict) -> None:
    width, length = d.uniform(0.18, 0.45), d.uniform(0.8, 1.0)
    p["active"][:2] = True
    p["kind"][:2], p["exponent"][:2] = 1, d.uniform(4, 10)
    p["aspect"][:2], p["scale"][:2] = width / length, length
    p["rotation"][1] = p["rotation"][0] + math.pi / 2 + d.uniform(-0.3, 0.3)


def _crescent(d: Draw, p: dict) -> None:
    p["active"][:2], p["subtract"][1] = True, True
    p["kind"][:2], p["exponent"][:2], p["aspect"][:2] = 1, 2.0, 1.0
    angle, shift = d.uniform(0, 2 * math.pi), d.uniform(0.25, 0.6)
    p["offset"][1] = shift * torch.cat([torch.cos(angle), torch.sin(angle)])
    p["scale"][1] = d.uniform(0.75, 1.0)


def _curve(d: Draw, p: dict) -> None:
    p["kind"][0] = 2


def _union(d: Draw, p: dict) -> None:
    n = int(d.integers(2, 3))
    p["active"][:n] = True
    p["scale"][:n] = d.uniform(0.4, 0.7, n)
    p["offset"][:n] = d.uniform(-0.45, 0.45, n, 2)
    p["aspect"][:n] = d.uniform(0.5, 1.0, n)


FAMILY_SHAPES = {
    "polygon": _polygon, "superellipse": _superellipse, "ring": _ring, "cross": _cross, "crescent": _crescent,
    "curve": _curve, "union": _union, "drawing": _polygon,  # a drawing's primitives stay unused
}  # fmt: skip


def draw_caption(d: Draw, split: str, n_sprites: int) -> dict[str, Tensor]:
    """Everything a set shares: shape or drawing, colours, background and rendering."""
    families = split_families(split)
    family, pick = d.choice(families), float(d.uniform(0, 1))
    if family == "drawing" and n_sprites == 0:
        family = families[0]  # the split's first shape family
    caption = {
        "family": torch.tensor(FAMILIES.index(family)),
        "sprite": torch.tensor(min(int(pick * n_sprites), n_sprites - 1) if family == "drawing" else -1),
        "sprite_mode": d.choice((0, 0, 1, 2)) * torch.ones((), dtype=torch.long),
        **{f"prim_{k}": v for k, v in draw_primitives(d, family).items()},
        **draw_colours(d, split),
        "background": torch.tensor(d.choice(range(len(BACKGROUNDS)))),
        "bg_freq": d.uniform(2, 10)[0], "bg_angle": d.uniform(0, math.pi)[0], "bg_contrast": d.uniform(0.15, 1)[0],
        "bg_noise": d.uniform(0, 1, 1, 6, 6),
        "rendering": torch.tensor(d.choice(range(len(RENDERINGS)))), "outline": d.uniform(0.05, 0.3)[0],
        "outline_fill": torch.tensor(d.chance(0.5)), "pattern": torch.tensor(d.choice((0, 1))),
        "pat_freq": d.uniform(6, 20)[0], "pat_angle": d.uniform(0, math.pi)[0], "light": d.uniform(0, 2 * math.pi)[0],
        "shadow": torch.tensor(d.chance(0.3)), "shadow_offset": d.uniform(0.03, 0.08) * torch.tensor([1.0, 1.0]),
        "max_count": d.choice(MAX_COUNTS) * torch.ones((), dtype=torch.long),
        "size": d.uniform(0.35, 0.75)[0], "spin": d.uniform(0, 1)[0] ** 2 * math.pi,
        "base_rotation": d.uniform(0, 2 * math.pi)[0], "flips": torch.tensor(d.chance(0.5)),
    }  # fmt: skip
    return simplified(caption) if split in SIMPLE_SPLITS else caption


def draw_layout(d: Draw, caption: dict, k: int) -> dict[str, Tensor]:
    """What differs between the k images of a set: count, positions, sizes, rotations, flips, jitter.

    Always drawn for at least MAX_SET images, so that the first k images of a set do not depend on k.
    """
    k_asked, k = k, max(k, MAX_SET)
    count = d.integers(1, int(caption["max_count"]), k)  # (K,)
    active = torch.arange(INSTANCES)[None] < count[:, None]  # (K, M)
    size = caption["size"] / count.float().sqrt()[:, None] * d.uniform(0.75, 1.15, k, INSTANCES)  # (K, M)
    centre = d.uniform(-1, 1, k, INSTANCES, 2) * (1 - size[..., None]).clamp(min=0.05)  # (K, M, 2)
    rotation = caption["base_rotation"] + caption["spin"] * d.uniform(-1, 1, k, INSTANCES)
    flip = torch.where(caption["flips"] & (d.uniform(0, 1, k, INSTANCES) < 0.5), -1.0, 1.0)
    colour = d.integers(0, int(caption["n_colours"]) - 1, k, INSTANCES)
    layout = {"active": active, "size": size, "centre": centre, "rotation": rotation, "flip": flip,
              "colour": colour, "jitter": d.uniform(-0.04, 0.04, k, 3)}  # fmt: skip
    return {key: v[:k_asked] for key, v in layout.items()}


def draw_sets(split: str, indices: list[int], k: int, seed: int = 0, n_sprites: int = 0) -> dict[str, Tensor]:
    """Captions (B, ...) and layouts (B, K, ...) of sets `indices` of a split, each from its own generator."""
    captions, layouts = [], []
    for i in indices:
        d = Draw(set_seed(split, i, seed))
        captions.append(draw_caption(d, split, n_sprites))
        layouts.append(draw_layout(d, captions[-1], k))
    stack = {key: torch.stack([c[key] for c in captions]) for key in captions[0]}
    return stack | {f"lay_{key}": torch.stack([lay[key] for lay in layouts]) for key in layouts[0]}
