"""Open-ended image sets: no two sets share a "caption" (issue 13; DESIGN.md §3).

MIS has a new caption for every set; MIS-synth had 336, and the models learnt the list. Here a
caption is a draw of continuous parameters, so nothing can be memorised, only read:

- **shape**: polygons and stars (any number of points, any inner ratio), superellipses, rings,
  crosses, crescents, smooth random closed curves, unions of 2-3 of them, or a **drawing**
  (clip art or emoji, `train/data/sprites.py`, a tenth held out);
- **colours** drawn freely in HSV, 1-3 per set, plus an accent;
- **background**: flat, gradient, stripes, dots, checks or noise, at a random scale, angle, contrast;
- **rendering**: flat, outline of any width (filled or not), patterned fill, shading; a shadow or not.

Each image of a set redraws its caption with its own count, positions, sizes, rotations, flips
and a little colour jitter, as MIS's images differ in their initial noise.

Everything is rendered in batches with tensor ops (anti-aliased signed distances, sprites by
affine `grid_sample`), on any device. Set `i` of a split is fixed by (split, seed, i): its
parameters come from a counter-based hash of a key made of those three, drawn for a whole batch
at once with integer tensor ops on the batch's device, so a set is the same in any batch, on CPU
and CUDA (up to float rounding), and training never waits for a CPU. Splits: `train`, `heldout`
(a disjoint seed stream), `hard` (shape families, hues and drawings that `train` never sees), and
`simple` / `simple-train` (one procedural shape in a flat colour on a flat background: scored on
every family, and a curriculum's start, without `hard`'s families).

    python -m train.data.open_sets --out data/open --sets 10000 --set-size 8   # MIS-layout shards
"""

from __future__ import annotations

import functools
import itertools
import math
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])
from m2m.images import to_pil
from train.data.sprites import load_sprites

SIZE = 128
FAMILIES = ("polygon", "superellipse", "ring", "cross", "crescent", "curve", "union", "drawing")
HARD_FAMILIES = ("cross", "crescent")  # shape families of the `hard` split only
HARD_HUES = (0.70, 0.80)  # a band of hues (HSV, violet) used by the `hard` split only
BACKGROUNDS = ("flat", "gradient", "stripes", "dots", "checks", "noise")
RENDERINGS = ("flat", "outline", "pattern", "shaded")
SPRITE_MODES = ("original", "tinted", "silhouette")
SPLITS = {"train": 11, "heldout": 12, "hard": 13, "simple": 14, "simple-train": 15}  # disjoint seed streams
SIMPLE_SPLITS = ("simple", "simple-train")  # one flat shape on a flat background: scored, and a curriculum's start
PRIMS, INSTANCES, FOURIER = 3, 3, 4  # primitives per shape, instances per image, harmonics per curve
MAX_COUNTS = (1, 1, 1, 2, 3)  # a set's most instances per image, equally likely; each image has 1 to that many
MAX_SET = 25  # images per set, as in MIS
MASK32 = 0xFFFFFFFF
LAYOUT_STREAM = 1 << 16  # counter words of the images' own keys: beyond any caption draw


# --- Draws: a counter-based hash, for whole batches on their device -------------------------------


def _mul32(x: int | Tensor, m: int) -> int | Tensor:
    """x * m mod 2**32 for x < 2**32, in 16-bit halves of m: no product passes 2**48 (int64 on any device)."""
    return (x * (m & 0xFFFF) + (((x * (m >> 16)) & 0xFFFF) << 16)) & MASK32


def lowbias32(x: int | Tensor) -> int | Tensor:
    """A 32-bit integer hash (C. Wellons' lowbias32) of an int or an int64 tensor of 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def mix(key: int | Tensor, word: int | Tensor) -> int | Tensor:
    """A new 32-bit key from a key and a 32-bit word (ints or int64 tensors, broadcast)."""
    return lowbias32(lowbias32((word + 0x9E3779B9) & MASK32) ^ key)


class Draws:
    """Uniform draws for many keys at once from a counter-based hash: draw n of a key is `mix(key, n)`.

    Every key makes the same sequence of draws, so a batch of sets draws together with tensor ops on its device, and
    a key's values depend on the key and their place in that sequence only, never on the batch.
    """

    def __init__(self, keys: Tensor, chunk: int = 64):
        self.keys, self.chunk, self.used = keys, chunk, 0  # keys (...,) int64 in [0, 2**32)
        self.bits = keys.new_empty(*keys.shape, 0)  # (..., N): the hashes made so far
        self.fractions = self.bits.float()  # (..., N): the same as floats in [0, 1)

    def _next(self, shape: tuple[int, ...]) -> slice:
        n = math.prod(shape)
        while self.bits.shape[-1] < self.used + n:  # made in chunks: the values do not depend on the chunking
            made = self.bits.shape[-1]
            counter = torch.arange(made, made + max(n, self.chunk), device=self.keys.device)  # (C,)
            bits = mix(self.keys[..., None], counter)  # (..., C)
            fractions = (bits >> 8).float() * 2**-24  # 24 bits: exact in float32 on any device
            self.bits, self.fractions = torch.cat([self.bits, bits], -1), torch.cat([self.fractions, fractions], -1)
        self.used += n
        return slice(self.used - n, self.used)

    def take(self, *shape: int) -> Tensor:
        """The next hashes of every key: (..., *shape) int64 in [0, 2**32)."""
        drawn = self._next(shape)  # before reading self.bits: it may make more
        return self.bits[..., drawn].reshape(*self.keys.shape, *shape)

    def uniform(self, lo: float, hi: float, *shape: int) -> Tensor:
        """Floats in [lo, hi): (..., *shape)."""
        drawn = self._next(shape)
        return lo + (hi - lo) * self.fractions[..., drawn].reshape(*self.keys.shape, *shape)

    def integers(self, lo: int, hi: int | Tensor, *shape: int) -> Tensor:
        """Integers in [lo, hi]: (..., *shape); hi an int or a tensor of the keys' shape."""
        span = hi - lo + 1
        if isinstance(span, Tensor):
            span = span.reshape(*span.shape, *(1,) * len(shape))
        return lo + ((self.take(*shape) * span) >> 32)  # the high bits of a 32-bit fraction times the span

    def choice(self, options: tuple[int, ...] | list[int]) -> Tensor:
        """One of `options` per key (repeats weigh): (...,), without copying the options to the device."""
        i = self.integers(0, len(options) - 1)  # (...,)
        value = torch.full_like(i, options[0])
        for j in range(1, len(options)):
            if options[j] != options[j - 1]:
                value = value + (options[j] - options[j - 1]) * (i >= j)
        return value

    def chance(self, p: float, *shape: int) -> Tensor:
        return self.uniform(0, 1, *shape) < p


def set_key(split: str, index: int | Tensor, seed: int = 0) -> int | Tensor:
    """The 32-bit key of set `index` (an int, or an int64 tensor of them) of a split: all its draws come from it."""
    if split not in SPLITS:
        raise ValueError(f"open sets: the split must be one of {sorted(SPLITS)}, got {split!r}")
    key = lowbias32(SPLITS[split])
    for word in (seed & MASK32, (seed >> 32) & MASK32, index & MASK32, (index >> 32) & MASK32):
        key = mix(key, word)
    return key


# --- Captions: what a set shares --------------------------------------------------------------


def hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """(...,) each in [0, 1] -> (..., 3) RGB in [0, 1]."""
    k = torch.stack([torch.full_like(h, n) for n in (5.0, 3.0, 1.0)], -1)  # (..., 3)
    k = (k + h[..., None] * 6) % 6
    return v[..., None] - v[..., None] * s[..., None] * (torch.minimum(k, 4 - k).clamp(0, 1))


def draw_hue(d: Draws, split: str, *shape: int) -> Tensor:
    """Hues (B, *shape) anywhere but the hard band (train, heldout), or inside it (hard)."""
    lo, hi = HARD_HUES
    if split == "hard":
        return d.uniform(lo, hi, *shape)
    u = d.uniform(0, 1 - (hi - lo), *shape)
    return torch.where(u < lo, u, u + (hi - lo))


def draw_colours(d: Draws, split: str) -> dict[str, Tensor]:
    """1-3 foreground colours, an accent and two background colours that contrast with them."""
    n = d.integers(1, 3)  # (B,)
    value = d.uniform(0.3, 1.0)[:, None]  # (B, 1)
    fg = hsv_to_rgb(
        draw_hue(d, split, 3), d.uniform(0.25, 1.0, 3) ** 0.7, (value + d.uniform(-0.15, 0.15, 3)).clamp(0.2, 1)
    )  # (B, 3, 3)
    accent = hsv_to_rgb(draw_hue(d, split), d.uniform(0.0, 1.0), d.uniform(0.1, 1.0))  # (B, 3)
    train_split = "train" if split == "hard" else split  # backgrounds keep to the training hues
    bg_value = (value + d.uniform(0.35, 0.65)[:, None]) % 1.0  # (B, 1)
    bg_h = draw_hue(d, train_split, 2)  # (B, 2)
    bg_v = torch.cat([bg_value, (bg_value + d.uniform(-0.3, 0.3)[:, None]).clamp(0.05, 1.0)], -1)  # (B, 2)
    bg = hsv_to_rgb(bg_h, d.uniform(0.0, 0.6, 2), bg_v.clamp(0.05, 1.0))  # (B, 2, 3)
    return {"palette": fg, "n_colours": n, "accent": accent, "bg": bg}


def first(p: dict, n: int | Tensor) -> Tensor:
    """The first n primitives (n an int or per set (B, 1)): (B|1, P)."""
    return torch.arange(PRIMS, device=p["kind"].device) < n


def draw_primitives(d: Draws, family: Tensor) -> dict[str, Tensor]:
    """Up to PRIMS primitives (B, P, ...): radial kind (0 star, 1 superellipse, 2 curve), parameters, placement.

    Every set draws every family's parameters, in one order; its family (B,) picks which apply.
    """
    b, device = family.shape[0], family.device
    zeros = torch.zeros(b, PRIMS, device=device)
    p = {
        "kind": d.integers(0, 2, PRIMS), "active": (torch.arange(PRIMS, device=device) < 1).expand(b, -1),
        "subtract": zeros.bool(), "points": d.integers(3, 9, PRIMS).float(),
        "inner": d.uniform(0.3, 1.0, PRIMS), "exponent": 2 ** d.uniform(-0.8, 2.5, PRIMS),
        "amp": d.uniform(-1, 1, PRIMS, FOURIER) * d.uniform(0.05, 0.25, PRIMS, 1),
        "phase": d.uniform(0, 2 * math.pi, PRIMS, FOURIER), "hole": zeros,
        "offset": torch.zeros(b, PRIMS, 2, device=device), "scale": zeros + 1,
        "rotation": d.uniform(0, 2 * math.pi, PRIMS), "aspect": zeros + 1,
    }  # fmt: skip
    for shape, families in FAMILY_SHAPES:
        on = functools.reduce(torch.logical_or, [family == FAMILIES.index(f) for f in families])  # (B,)
        shape(d, p, on[:, None])
    return p


def _polygon(d: Draws, p: dict, on: Tensor) -> None:
    """`on` (B, 1): the sets of this family."""
    regular = on & first(p, 1) & d.chance(0.4)[:, None]  # a regular polygon: the inner vertices sit on its edges
    p["kind"] = torch.where(on & first(p, 1), 0, p["kind"])
    p["inner"] = torch.where(regular, torch.cos(math.pi / p["points"]), p["inner"])


def _superellipse(d: Draws, p: dict, on: Tensor) -> None:
    aspect, one = d.uniform(0.45, 1.0)[:, None], on & first(p, 1)  # (B, 1), (B, P)
    p["kind"], p["aspect"] = torch.where(one, 1, p["kind"]), torch.where(one, aspect, p["aspect"])


def _ring(d: Draws, p: dict, on: Tensor) -> None:
    kind, hole, one = d.choice((0, 1, 1))[:, None], d.uniform(0.35, 0.75)[:, None], on & first(p, 1)
    p["kind"], p["hole"] = torch.where(one, kind, p["kind"]), torch.where(one, hole, p["hole"])
    p["inner"] = torch.where(one, torch.cos(math.pi / p["points"]), p["inner"])


def _cross(d: Draws, p: dict, on: Tensor) -> None:
    width, length = d.uniform(0.18, 0.45)[:, None], d.uniform(0.8, 1.0)[:, None]  # (B, 1)
    exponent, turn = d.uniform(4, 10)[:, None], d.uniform(-0.3, 0.3)[:, None]
    two, second = on & first(p, 2), on & first(p, 2) & ~first(p, 1)  # (B, P)
    p["active"], p["kind"] = p["active"] | two, torch.where(two, 1, p["kind"])
    p["exponent"], p["scale"] = torch.where(two, exponent, p["exponent"]), torch.where(two, length, p["scale"])
    p["aspect"] = torch.where(two, width / length, p["aspect"])
    p["rotation"] = torch.where(second, p["rotation"][:, :1] + math.pi / 2 + turn, p["rotation"])


def _crescent(d: Draws, p: dict, on: Tensor) -> None:
    angle, shift, scale = d.uniform(0, 2 * math.pi), d.uniform(0.25, 0.6), d.uniform(0.75, 1.0)[:, None]
    two, second = on & first(p, 2), on & first(p, 2) & ~first(p, 1)  # (B, P)
    p["active"], p["subtract"] = p["active"] | two, p["subtract"] | second
    p["kind"], p["exponent"] = torch.where(two, 1, p["kind"]), torch.where(two, 2.0, p["exponent"])
    p["aspect"], p["scale"] = torch.where(two, 1.0, p["aspect"]), torch.where(second, scale, p["scale"])
    offset = shift[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], -1)  # (B, 2)
    p["offset"] = torch.where(second[..., None], offset[:, None], p["offset"])  # (B, P, 2)


def _curve(d: Draws, p: dict, on: Tensor) -> None:
    p["kind"] = torch.where(on & first(p, 1), 2, p["kind"])


def _union(d: Draws, p: dict, on: Tensor) -> None:
    some = on & first(p, d.integers(2, 3)[:, None])  # (B, P): 2 or 3 primitives
    scale, offset, aspect = d.uniform(0.4, 0.7, PRIMS), d.uniform(-0.45, 0.45, PRIMS, 2), d.uniform(0.5, 1.0, PRIMS)
    p["active"], p["scale"] = p["active"] | some, torch.where(some, scale, p["scale"])
    p["offset"] = torch.where(some[..., None], offset, p["offset"])  # (B, P, 2)
    p["aspect"] = torch.where(some, aspect, p["aspect"])


FAMILY_SHAPES = (  # each family's rule, in the order every set draws them; a drawing's primitives stay unused
    (_polygon, ("polygon", "drawing")), (_superellipse, ("superellipse",)), (_ring, ("ring",)),
    (_cross, ("cross",)), (_crescent, ("crescent",)), (_curve, ("curve",)), (_union, ("union",)),
)  # fmt: skip


def split_families(split: str) -> list[str]:
    """The families a split's sets draw from, equally likely."""
    if split in SIMPLE_SPLITS:  # procedural families, no drawings; the curriculum's never those of `hard`
        return [f for f in FAMILIES if f != "drawing" and (split == "simple" or f not in HARD_FAMILIES)]
    return [f for f in FAMILIES if (f in HARD_FAMILIES) == (split == "hard") or f == "drawing"]


def draw_family(d: Draws, split: str, n_sprites: int) -> tuple[Tensor, Tensor]:
    """The shape family (B,) of a split's sets and their drawing (B,), -1 for none.

    The draws do not depend on the atlas: without one, a drawing's set takes the split's first shape family, and the
    sprite is picked by a uniform draw scaled to the atlas, so every other parameter stays the same.
    """
    families = [FAMILIES.index(f) for f in split_families(split)]
    family, pick = d.choice(families), d.uniform(0, 1)  # (B,), (B,)
    drawing = family == FAMILIES.index("drawing")
    if n_sprites == 0:
        return torch.where(drawing, families[0], family), torch.full_like(family, -1)  # the split's first family
    return family, torch.where(drawing, (pick * n_sprites).long().clamp(max=n_sprites - 1), -1)


def draw_caption(d: Draws, split: str, n_sprites: int) -> dict[str, Tensor]:
    """Everything a set shares: shape or drawing, colours, background and rendering; each (B, ...)."""
    family, sprite = draw_family(d, split, n_sprites)
    caption = {
        "family": family, "sprite": sprite, "sprite_mode": d.choice((0, 0, 1, 2)),
        **{f"prim_{k}": v for k, v in draw_primitives(d, family).items()},
        **draw_colours(d, split),
        "background": d.integers(0, len(BACKGROUNDS) - 1),
        "bg_freq": d.uniform(2, 10), "bg_angle": d.uniform(0, math.pi), "bg_contrast": d.uniform(0.15, 1),
        "bg_noise": d.uniform(0, 1, 1, 6, 6),
        "rendering": d.integers(0, len(RENDERINGS) - 1), "outline": d.uniform(0.05, 0.3),
        "outline_fill": d.chance(0.5), "pattern": d.choice((0, 1)),
        "pat_freq": d.uniform(6, 20), "pat_angle": d.uniform(0, math.pi), "light": d.uniform(0, 2 * math.pi),
        "shadow": d.chance(0.3), "shadow_offset": d.uniform(0.03, 0.08)[:, None].repeat(1, 2),
        "max_count": d.choice(MAX_COUNTS),
        "size": d.uniform(0.35, 0.75), "spin": d.uniform(0, 1) ** 2 * math.pi,
        "base_rotation": d.uniform(0, 2 * math.pi), "flips": d.chance(0.5),
    }  # fmt: skip
    return simplified(caption) if split in SIMPLE_SPLITS else caption


def simplified(caption: dict[str, Tensor]) -> dict[str, Tensor]:
    """`open:simple`: one shape in one flat colour on a flat background, no shadow, one instance per image.

    Overrides after every draw, so that the draw stream (and each set's shape) is the one the full caption takes.
    """
    flat = {"background": 0, "rendering": 0, "shadow": False, "n_colours": 1, "max_count": 1}
    return caption | {key: torch.full_like(caption[key], value) for key, value in flat.items()}  # each (B,)


def draw_layout(keys: Tensor, caption: dict, k: int) -> dict[str, Tensor]:
    """What differs between the k images of the sets: count, positions, sizes, rotations, flips, jitter; (B, K, ...).

    Image j of a set draws from a key of its own, (set key, j), so the first k images of a set do not depend on k.
    """
    d = Draws(mix(keys[:, None], LAYOUT_STREAM + torch.arange(k, device=keys.device)), chunk=32)  # (B, K) keys
    cap = {key: caption[key][:, None, None] for key in ("size", "base_rotation", "spin", "flips")}  # (B, 1, 1)
    count = d.integers(1, caption["max_count"][:, None])  # (B, K)
    active = torch.arange(INSTANCES, device=keys.device) < count[..., None]  # (B, K, M)
    size = cap["size"] / count.float().sqrt()[..., None] * d.uniform(0.75, 1.15, INSTANCES)  # (B, K, M)
    centre = d.uniform(-1, 1, INSTANCES, 2) * (1 - size[..., None]).clamp(min=0.05)  # (B, K, M, 2)
    rotation = cap["base_rotation"] + cap["spin"] * d.uniform(-1, 1, INSTANCES)  # (B, K, M)
    flip = torch.where(cap["flips"] & d.chance(0.5, INSTANCES), -1.0, 1.0)  # (B, K, M)
    colour = d.integers(0, caption["n_colours"][:, None] - 1, INSTANCES)  # (B, K, M)
    return {"active": active, "size": size, "centre": centre, "rotation": rotation, "flip": flip,
            "colour": colour, "jitter": d.uniform(-0.04, 0.04, 3)}  # fmt: skip


def draw_sets(
    split: str, indices: Sequence[int], k: int, seed: int = 0, n_sprites: int = 0, device="cpu"
) -> dict[str, Tensor]:
    """Captions (B, ...) and layouts (B, K, ...) of sets `indices` (a range: made on the device) of a split.

    All sets are drawn at once, with tensor ops on `device`; CPU and CUDA give the same values up to float rounding.
    """
    if isinstance(indices, range):  # made on the device: no copy from the host
        index = torch.arange(indices.start, indices.stop, indices.step, device=device)  # (B,)
    else:
        index = torch.as_tensor(indices, dtype=torch.long, device=device)  # (B,)
    keys = set_key(split, index, seed)  # (B,)
    caption = draw_caption(Draws(keys, chunk=160), split, n_sprites)
    return caption | {f"lay_{key}": v for key, v in draw_layout(keys, caption, k).items()}


# --- Rendering: the same tensor ops on any device ------------------------------------------------


def pixel_grid(size: int, device) -> Tensor:
    """Pixel centres in [-1, 1], x right and y down: (S, S, 2)."""
    c = (torch.arange(size, device=device) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([x, y], -1)


def rotate(xy: Tensor, angle: Tensor) -> Tensor:
    """Rotate points (N, S, S, 2) by -angle (N,): into a frame turned by `angle`."""
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    return torch.stack([cos * xy[..., 0] + sin * xy[..., 1], -sin * xy[..., 0] + cos * xy[..., 1]], -1)


def coverage(distance: Tensor, pixel: float) -> Tensor:
    """Anti-aliased coverage of a signed distance (inside > 0) given in image units."""
    return (0.5 + distance / pixel).clamp(0, 1)


def radius(theta: Tensor, cap: dict, j: int) -> Tensor:
    """The boundary radius r(θ) (N, S, S) of primitive j, all rows of one kind: star, superellipse or curve."""
    kind = int(cap["prim_kind"][0, j])
    if kind == 0:  # star / polygon: the line between an outer and an inner vertex
        n, inner = cap["prim_points"][:, j, None, None], cap["prim_inner"][:, j, None, None]
        alpha = math.pi / n
        phi = torch.remainder(theta, 2 * alpha)
        phi = torch.minimum(phi, 2 * alpha - phi)  # folded into one half-sector
        return (
            inner
            * torch.sin(alpha)
            / (torch.cos(phi) * inner * torch.sin(alpha) - torch.sin(phi) * (inner * torch.cos(alpha) - 1))
        )
    if kind == 1:  # superellipse |x|^m + |y|^m = 1
        m = cap["prim_exponent"][:, j, None, None]
        return (torch.cos(theta).abs().clamp(min=1e-6) ** m + torch.sin(theta).abs().clamp(min=1e-6) ** m) ** (-1 / m)
    harmonics = torch.arange(2, 2 + FOURIER, device=theta.device)  # smooth closed curve: a few harmonics
    waves = torch.cos(theta[..., None] * harmonics + cap["prim_phase"][:, j, None, None])  # (N, S, S, F)
    return 1 + (waves * cap["prim_amp"][:, j, None, None]).sum(-1)


def take(tensors: dict[str, Tensor], rows: Tensor) -> dict[str, Tensor]:
    return {key: v[rows] for key, v in tensors.items()}


def primitive_distance(local: Tensor, cap: dict, j: int) -> Tensor:
    """Signed distance (inside > 0) to primitive j, in instance units: (N, S, S)."""
    scale, aspect = cap["prim_scale"][:, j], cap["prim_aspect"][:, j]
    q = rotate(local - cap["prim_offset"][:, j, None, None], cap["prim_rotation"][:, j]) / scale[:, None, None, None]
    q = torch.stack([q[..., 0] / aspect[:, None, None], q[..., 1]], -1)
    rho, theta = q.norm(dim=-1), torch.atan2(q[..., 1], q[..., 0])
    r = torch.empty_like(rho)
    for kind in cap["prim_kind"][:, j].unique().tolist():
        rows = (cap["prim_kind"][:, j] == kind).nonzero()[:, 0]
        r[rows] = radius(theta[rows], take(cap, rows), j)
    unit = (scale * aspect)[:, None, None]  # a q-unit in instance units, on the narrow side
    hole = cap["prim_hole"][:, j, None, None]
    return torch.where(hole > 0, torch.minimum(r - rho, rho - hole * r), r - rho) * unit


def shape_distance(local: Tensor, cap: dict) -> Tensor:
    """Signed distance (inside > 0, approximately, in instance units) to the set's shape: (N, S, S)."""
    total = torch.full(local.shape[:-1], -1e3, device=local.device)
    for j in range(PRIMS):
        rows = cap["prim_active"][:, j].nonzero()[:, 0]
        if len(rows) == 0:
            continue
        dist = primitive_distance(local[rows], take(cap, rows), j)
        sub = cap["prim_subtract"][rows, j, None, None]
        total[rows] = torch.where(sub, torch.minimum(total[rows], -dist), torch.maximum(total[rows], dist))
    return total


def stripes(u: Tensor, freq: Tensor) -> Tensor:
    return 0.5 + 0.5 * torch.tanh(4 * torch.sin(math.pi * freq * u))


def bg_pattern(kind: int, uv: Tensor, f: Tensor, noise: Tensor) -> Tensor:
    """Pattern `kind` of BACKGROUNDS in [0, 1] (N, S, S) at frequency f (N, 1, 1), in the turned frame uv."""
    u, v, size = uv[..., 0], uv[..., 1], uv.shape[1]
    if kind == 0:  # flat
        return torch.zeros_like(u)
    if kind == 1:  # gradient
        return ((u + 1.4) / 2.8).clamp(0, 1)
    if kind == 2:
        return stripes(u, f)
    if kind == 3:  # dots: the distance to the nearest lattice point
        return coverage(0.25 - (torch.remainder(uv * f[..., None] / 2, 1) - 0.5).norm(dim=-1), f / size)
    if kind == 4:  # checks
        return 0.5 + 0.5 * torch.tanh(4 * torch.sin(math.pi * f * u) * torch.sin(math.pi * f * v))
    return F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)[:, 0].clamp(0, 1)


def background(cap: dict, xy: Tensor) -> Tensor:
    """(N, 3, S, S): two colours mixed by one of six patterns at the set's scale, angle and contrast."""
    n = cap["bg"].shape[0]
    uv = rotate(xy.expand(n, -1, -1, -1), cap["bg_angle"])  # (N, S, S, 2)
    p = torch.empty(uv.shape[:-1], device=xy.device)
    for kind in cap["background"].unique().tolist():
        rows = (cap["background"] == kind).nonzero()[:, 0]
        p[rows] = bg_pattern(kind, uv[rows], cap["bg_freq"][rows, None, None], cap["bg_noise"][rows])
    bg0, bg1 = cap["bg"][:, 0, :, None, None], cap["bg"][:, 1, :, None, None]  # (N, 3, 1, 1)
    return bg0 + (cap["bg_contrast"][:, None, None, None] * p[:, None]) * (bg1 - bg0)


def instance_frame(xy: Tensor, lay: dict, m: int) -> Tensor:
    """Image points in instance m's frame (N, S, S, 2): centred, turned, mirrored, in units of its size."""
    n = lay["size"].shape[0]
    local = rotate(xy.expand(n, -1, -1, -1) - lay["centre"][:, m, None, None], lay["rotation"][:, m])
    local = local / lay["size"][:, m, None, None, None]
    return torch.stack([local[..., 0] * lay["flip"][:, m, None, None], local[..., 1]], -1)


def shape_layers(cap: dict, lay: dict, local: Tensor, m: int, pixel: float) -> list[tuple[Tensor, Tensor]]:
    """Instance m of a drawn shape as (coverage (N, 1, S, S), colour (N, 3, S|1, S|1)) layers, bottom first."""
    n = local.shape[0]
    base = cap["palette"][torch.arange(n, device=local.device), lay["colour"][:, m]] + lay["jitter"]  # (N, 3)
    dist = shape_distance(local, cap) * lay["size"][:, m, None, None]  # image units
    cover = coverage(dist, pixel)[:, None]  # (N, 1, S, S)
    colour = base[..., None, None].expand(-1, -1, *local.shape[1:3])
    r = cap["rendering"][:, None, None, None]
    u = rotate(local, cap["pat_angle"])[..., 0]  # (N, S, S)
    lattice_per_unit = cap["pat_freq"][:, None, None] / (4 * lay["size"][:, m, None, None])  # dot cells per image unit
    pattern = torch.where(cap["pattern"][:, None, None] == 0, stripes(u, cap["pat_freq"][:, None, None]),
                          coverage(0.3 - (torch.remainder(local * cap["pat_freq"][:, None, None, None] / 4, 1) - 0.5)
                                   .norm(dim=-1), pixel * lattice_per_unit))  # fmt: skip
    patterned = torch.lerp(colour, cap["accent"][..., None, None] + lay["jitter"][..., None, None], pattern[:, None])
    light = torch.stack([torch.cos(cap["light"]), torch.sin(cap["light"])], -1)  # (N, 2)
    shade = (0.75 + 0.45 * (local * light[:, None, None]).sum(-1)).clamp(0.3, 1.3)[:, None]  # (N, 1, S, S)
    colour = torch.where(r == 2, patterned, torch.where(r == 3, colour * shade, colour))
    inner = coverage(dist - cap["outline"][:, None, None] * lay["size"][:, m, None, None], pixel)[:, None]
    outline = r == 1
    band = torch.where(outline, (cover - inner).clamp(0, 1), cover)
    fill = inner * (outline & cap["outline_fill"][:, None, None, None])
    accent = (cap["accent"] + lay["jitter"])[..., None, None]
    return [(fill, accent), (band, colour)]


def sprite_layer(cap: dict, lay: dict, local: Tensor, m: int, sprites: Tensor) -> tuple[Tensor, Tensor]:
    """Instance m of a drawing: its RGBA sprite warped into place (coverage (N, 1, S, S), colour (N, 3, S, S))."""
    n = local.shape[0]
    rgba = sprites[cap["sprite"].clamp(min=0).to(sprites.device)].to(local.device, torch.float32) / 255  # (N, 4, h, w)
    warped = F.grid_sample(rgba, local, mode="bilinear", padding_mode="zeros", align_corners=False)  # (N, 4, S, S)
    rgb, alpha = warped[:, :3], warped[:, 3:]
    rgb = rgb / alpha.clamp(min=1e-3)  # grid_sample mixed colour with transparent black at the edges
    base = (cap["palette"][torch.arange(n, device=local.device), lay["colour"][:, m]] + lay["jitter"])[..., None, None]
    lum = (rgb * torch.tensor([0.3, 0.59, 0.11], device=rgb.device)[:, None, None]).sum(1, keepdim=True)
    mode = cap["sprite_mode"][:, None, None, None]
    colour = torch.where(mode == 0, rgb + lay["jitter"][..., None, None],
                         torch.where(mode == 1, base * (0.3 + 0.9 * lum), base.expand_as(rgb)))  # fmt: skip
    return alpha, colour


def draw_instance(canvas: Tensor, cap: dict, lay: dict, m: int, xy: Tensor, sprites: Tensor | None) -> Tensor:
    """Paint instance m (its shadow, then its layers) over canvas (N, 3, S, S)."""
    size = xy.shape[0]
    local = instance_frame(xy, lay, m)
    layers = shape_layers(cap, lay, local, m, 2 / size)
    drawing = (cap["sprite"] >= 0)[:, None, None, None]
    if sprites is not None and bool(drawing.any()):  # drawings take the place of the shape
        alpha, sprite_colour = sprite_layer(cap, lay, local, m, sprites)
        (fill, accent), (band, colour) = layers
        layers = [(torch.where(drawing, 0.0, fill), accent),
                  (torch.where(drawing, alpha, band), torch.where(drawing, sprite_colour, colour))]  # fmt: skip
    cover = sum(c for c, _ in layers).clamp(0, 1)
    canvas = canvas * (1 - 0.45 * shadow(cover, cap, size) * cap["shadow"][:, None, None, None])
    for c, col in layers:
        canvas = torch.lerp(canvas, col.expand_as(canvas), c)
    return canvas


def render(sets: dict[str, Tensor], size: int = SIZE, device="cpu", sprites: Tensor | None = None) -> Tensor:
    """Sets drawn by `draw_sets` -> images (B, K, 3, S, S) in [-1, 1]."""
    b, k = sets["lay_active"].shape[:2]
    cap = {key: v.to(device).repeat_interleave(k, 0) for key, v in sets.items() if not key.startswith("lay_")}
    lay = {key[4:]: v.to(device).flatten(0, 1) for key, v in sets.items() if key.startswith("lay_")}  # (N, ...)
    xy = pixel_grid(size, device)
    canvas = background(cap, xy)  # (N, 3, S, S)
    for m in range(INSTANCES):
        rows = lay["active"][:, m].nonzero()[:, 0]  # the images that have an m-th instance
        if len(rows):
            canvas[rows] = draw_instance(canvas[rows], take(cap, rows), take(lay, rows), m, xy, sprites)
    return (canvas.clamp(0, 1) * 2 - 1).unflatten(0, (b, k))


def shadow(cover: Tensor, cap: dict, size: int) -> Tensor:
    """The coverage (N, 1, S, S) moved by the set's shadow offset: where the instance casts its shadow."""
    n = cover.shape[0]
    grid = pixel_grid(size, cover.device).expand(n, -1, -1, -1) - cap["shadow_offset"][:, None, None]
    return F.grid_sample(cover, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# --- Sets as the loader and shards want them ----------------------------------------------------


@dataclass
class OpenSets:
    """Render whole batches of sets of one split (the fast path: training draws batches on its device)."""

    split: str = "train"
    seed: int = 0
    size: int = SIZE
    sprites: Tensor | None = None  # (n, 4, h, w) uint8 RGBA, premultiplied: this split's drawings

    def batch(self, indices: Sequence[int], k: int, device="cpu") -> Tensor:
        n = 0 if self.sprites is None else self.sprites.shape[0]
        sets = draw_sets(self.split, indices, k, self.seed, n, device)
        return render(sets, self.size, device, self.sprites)  # (B, K, 3, S, S)

    def captions(self, indices: Sequence[int]) -> list[str]:
        n = 0 if self.sprites is None else self.sprites.shape[0]
        sets = draw_sets(self.split, indices, 1, self.seed, n)
        return [caption_text(sets, i) for i in range(len(indices))]


def caption_text(sets: dict, i: int) -> str:
    family = FAMILIES[int(sets["family"][i])]
    what = (
        f"drawing {int(sets['sprite'][i])} ({SPRITE_MODES[int(sets['sprite_mode'][i])]})"
        if family == "drawing"
        else family
    )
    palette = sets["palette"][i][: int(sets["n_colours"][i])]
    colours = ", ".join("#{:02x}{:02x}{:02x}".format(*(int(255 * c) for c in rgb)) for rgb in palette)
    return (f"{what}; {RENDERINGS[int(sets['rendering'][i])]} in {colours}; "
            f"{BACKGROUNDS[int(sets['background'][i])]} background")  # fmt: skip


def set_record(split: str, index: int, k: int, seed: int = 0, sprites: Tensor | None = None) -> dict:
    """Set `index` of a split as a shard sample (PIL images), for the loader, shards and evaluation."""
    sets = draw_sets(split, [index], min(k, MAX_SET), seed, 0 if sprites is None else sprites.shape[0])
    pixels = render(sets, SIZE, "cpu", sprites)[0]  # (K, 3, S, S)
    return {
        "key": f"open-{split}-{index:07d}",
        "images": to_pil(pixels),
        "meta": {"caption": caption_text(sets, 0), "seeds": {"set": set_key(split, index, seed)},
                 "settings": {"source": "open", "split": split, "size": SIZE}},
    }  # fmt: skip


class OpenBatches:
    """Endless training batches of open sets, rendered on the training device.

    Batch i of rank r holds sets (i * world + r) * B ... + B - 1 with one set length K drawn from
    (seed, i): a resume at step i continues with exactly the batches it would have seen. On a CPU
    the next batch is rendered in a thread while the current one trains (torch ops release the GIL).
    """

    def __init__(self, split: str, batch_sets: int, min_k: int, max_k: int, device, rank: int = 0,
                 world: int = 1, seed: int = 0, size: int = SIZE, sprites: Tensor | None = None):  # fmt: skip
        if not 1 <= min_k <= max_k <= MAX_SET:
            raise ValueError(f"open sets: need 1 <= min_k <= max_k <= {MAX_SET}, got {min_k}, {max_k}")
        self.sets = OpenSets(split, seed, size, None if sprites is None else sprites.to(device))
        self.b, self.min_k, self.max_k, self.device = batch_sets, min_k, max_k, torch.device(device)
        self.rank, self.world, self.seed = rank, world, seed

    @classmethod
    def from_source(cls, source: str, batch_sets: int, min_k: int, max_k: int, device, atlas: str | None = None,
                    **kwargs) -> OpenBatches:  # fmt: skip
        """`open:<split>` with that split's drawings (`train/data/sprites.py`; none without an atlas)."""
        split = source.removeprefix("open:")
        return cls(split, batch_sets, min_k, max_k, device, sprites=load_sprites(split, atlas), **kwargs)

    def batch(self, i: int) -> dict[str, Tensor]:
        k = int(
            torch.randint(self.min_k, self.max_k + 1, (), generator=torch.Generator().manual_seed(self.seed * 7919 + i))
        )
        first = (i * self.world + self.rank) * self.b
        return {"pixels": self.sets.batch(range(first, first + self.b), k, self.device)}  # (B, K, 3, S, S)

    def iterate(self, start: int) -> Iterator[dict[str, Tensor]]:
        """Batches start, start + 1, ...; each next one drawn and rendered in a thread while the current one trains
        (on CUDA on a side stream, which the training stream waits for before it reads the batch)."""
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        with ThreadPoolExecutor(1) as pool:
            ahead = pool.submit(self.batch_on, start, stream)
            for i in itertools.count(start + 1):
                ready = ahead.result()
                if stream is not None:
                    current = torch.cuda.current_stream(self.device)
                    current.wait_stream(stream)
                    ready["pixels"].record_stream(current)  # its memory is freed after the step that reads it
                ahead = pool.submit(self.batch_on, i, stream)
                yield ready

    def batch_on(self, i: int, stream) -> dict[str, Tensor]:
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            return self.batch(i)


def main(argv: list[str] | None = None) -> None:
    import argparse

    from train.data.shards import write_shards_cli

    split = argparse.ArgumentParser(add_help=False)
    split.add_argument("--split", default="train")  # parsed first: it picks the drawings
    record = functools.partial(set_record, sprites=load_sprites(split.parse_known_args(argv)[0].split))
    write_shards_cli(__doc__, record, "sets", 10000, 500, argv, set_size=8, splits=tuple(SPLITS))


if __name__ == "__main__":
    main()
