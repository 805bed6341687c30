"""Synthetic novel views: procedural 3D objects ray-marched in torch at 8 azimuths (a task fine-tune's data).

    python -m train.data.nvs --out data/nvs --split train --objects 2000

Each object is a signed distance function from one of 12 shape families, with random
proportions, two colours split by a random plane (so that turning it shows), and a material
(matte or glossy). A fixed camera elevation, azimuths 0°, 45°, …, 315°, one key light and an
ambient term, on a plain background. A set is the object's views in azimuth order. Objects
whose index is a multiple of 10 belong to `heldout`, the others to `train`; an object is
deterministic given (split, index, seed).
"""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])

SIZE = 128
AZIMUTHS = 8
ELEVATION = math.radians(25)
# The two-tone split plane's normal has its vertical (y) part scaled by this: a near-horizontal split (a band around
# the turning axis) hid the turn of every round object (1.0, an isotropic normal, until 2026-12-07; bench/nvs_turns.py)
PLANE_TILT = 0.25


# --- signed distance functions of a point batch p (N, 3); r: random proportions ------------------


def _box(p: Tensor, b: Tensor) -> Tensor:
    q = p.abs() - b
    return q.clamp(min=0).norm(dim=-1) + q.max(-1).values.clamp(max=0)


def _cylinder(p: Tensor, r: float, h: float) -> Tensor:
    d = torch.stack([p[:, [0, 2]].norm(dim=-1) - r, p[:, 1].abs() - h], -1)
    return d.clamp(min=0).norm(dim=-1) + d.max(-1).values.clamp(max=0)


def _torus(p: Tensor, big: float, small: float) -> Tensor:
    q = torch.stack([p[:, [0, 2]].norm(dim=-1) - big, p[:, 1]], -1)
    return q.norm(dim=-1) - small


def _capsule(p: Tensor, a: Tensor, b: Tensor, r: float) -> Tensor:
    pa, ba = p - a, b - a
    h = ((pa @ ba) / (ba @ ba)).clamp(0, 1)
    return (pa - h[:, None] * ba).norm(dim=-1) - r


def _cone(p: Tensor, r: float, h: float) -> Tensor:
    radial = p[:, [0, 2]].norm(dim=-1)
    side = (radial * h + (p[:, 1] - h / 2) * r) / math.hypot(r, h)  # distance to the slanted side (approximate)
    return torch.maximum(side, (p[:, 1] + h / 2).neg()).maximum(p[:, 1] - h / 2)


def _ellipsoid(p: Tensor, axes: Tensor) -> Tensor:
    """Semi-axes (3,); a distance bound that stays one for flat shapes (until 2026-12-07 a "sphere" took its axes in
    [0, 1) under a scaled distance: some were slivers the tracer missed, and their turn could not be seen)."""
    k0, k1 = (p / axes).norm(dim=-1), (p / axes**2).norm(dim=-1)
    return k0 * (k0 - 1) / k1.clamp(min=1e-8)


def _shift(p: Tensor, *xyz: float) -> Tensor:
    return p - p.new_tensor(xyz)


FAMILIES = {
    "sphere": lambda p, r: _ellipsoid(p, p.new_tensor([0.3 + 0.3 * r[0], 0.3 + 0.3 * r[1], 0.3 + 0.3 * r[2]])),
    "box": lambda p, r: _box(p, p.new_tensor([0.3 + 0.3 * r[0], 0.3 + 0.3 * r[1], 0.2 + 0.3 * r[2]])),
    "cylinder": lambda p, r: _cylinder(p, 0.25 + 0.25 * r[0], 0.35 + 0.3 * r[1]),
    "cone": lambda p, r: _cone(p, 0.35 + 0.25 * r[0], 0.8 + 0.4 * r[1]),
    "torus": lambda p, r: _torus(p.roll(1, -1) if r[2] > 0.5 else p, 0.4 + 0.15 * r[0], 0.12 + 0.1 * r[1]),
    "capsule": lambda p, r: _capsule(
        p, p.new_tensor([-0.5, -0.2, 0]), p.new_tensor([0.5, 0.2 * r[0], 0]), 0.18 + 0.12 * r[1]
    ),
    "snowman": lambda p, r: torch.minimum(
        (_shift(p, 0, -0.3, 0)).norm(dim=-1) - (0.35 + 0.1 * r[0]),
        (_shift(p, 0, 0.3, 0)).norm(dim=-1) - (0.2 + 0.08 * r[1]),
    ),
    "table": lambda p, r: torch.minimum(
        _box(_shift(p, 0, 0.2, 0), p.new_tensor([0.6, 0.06, 0.4 + 0.15 * r[0]])),
        torch.stack(
            [
                _box(_shift(p, sx * 0.5, -0.2, sz * (0.3 + 0.12 * r[0])), p.new_tensor([0.05, 0.35, 0.05]))
                for sx in (-1, 1)
                for sz in (-1, 1)
            ]
        )
        .min(0)
        .values,
    ),
    "lshape": lambda p, r: torch.minimum(
        _box(_shift(p, -0.2, 0, 0), p.new_tensor([0.45, 0.15, 0.2 + 0.1 * r[0]])),
        _box(_shift(p, 0.2, 0.3, 0), p.new_tensor([0.15, 0.4, 0.2 + 0.1 * r[0]])),
    ),
    "mug": lambda p, r: torch.minimum(
        torch.maximum(_cylinder(p, 0.35, 0.4), -_cylinder(_shift(p, 0, 0.1, 0), 0.28, 0.4)),
        _torus(_shift(p, 0.42, 0, 0)[:, [0, 2, 1]], 0.18, 0.05 + 0.03 * r[0]),
    ),
    "arch": lambda p, r: torch.maximum(
        _box(p, p.new_tensor([0.6, 0.45, 0.2])), -_cylinder(_shift(p, 0, -0.45, 0)[:, [0, 2, 1]], 0.3 + 0.1 * r[0], 0.5)
    ),
    "dumbbell": lambda p, r: torch.minimum(
        torch.minimum(
            _shift(p, -0.5, 0, 0).norm(dim=-1) - (0.2 + 0.1 * r[0]),
            _shift(p, 0.5, 0, 0).norm(dim=-1) - (0.2 + 0.1 * r[1]),
        ),
        _capsule(p, p.new_tensor([-0.5, 0, 0]), p.new_tensor([0.5, 0, 0]), 0.07),
    ),
}


@functools.lru_cache(maxsize=1)
def _rays(size: int) -> tuple[Tensor, Tensor]:
    """Orthographic camera at azimuth 0: origins (H*W, 3) on the image plane, direction (3,)."""
    u = torch.linspace(-1.1, 1.1, size)
    y, x = torch.meshgrid(-u, u, indexing="ij")
    e = ELEVATION
    forward = torch.tensor([0.0, -math.sin(e), -math.cos(e)])
    up = torch.tensor([0.0, math.cos(e), -math.sin(e)])
    right = torch.tensor([1.0, 0.0, 0.0])
    origins = -3 * forward + x.reshape(-1, 1) * right + y.reshape(-1, 1) * up
    return origins, forward


def render_view(sdf, azimuth: float, colours: Tensor, plane: Tensor, glossy: bool, bg: Tensor, size: int = SIZE):
    """Sphere-trace one view; returns an (H, W, 3) uint8 array."""
    origins, d = _rays(size)
    c, s = math.cos(azimuth), math.sin(azimuth)
    rot = torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]])  # the object turns; the camera stays
    o, d = origins @ rot.T, d @ rot.T
    t = torch.zeros(len(o))
    for _ in range(64):
        t = t + sdf(o + t[:, None] * d).clamp(min=0) * 0.9
    p = o + t[:, None] * d
    hit = sdf(p) < 2e-3
    eps = 1e-3
    normal = torch.stack([sdf(p + eps * e) - sdf(p - eps * e) for e in torch.eye(3)], -1)
    normal = normal / normal.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    light = torch.tensor([0.5, 0.8, 0.6]) @ rot.T
    light = light / light.norm()
    diffuse = (normal @ light).clamp(min=0)
    half = light - d
    spec = (normal @ (half / half.norm())).clamp(min=0) ** 40 * (0.6 if glossy else 0.0)
    albedo = torch.where(((p @ plane[:3]) > plane[3])[:, None], colours[0], colours[1])  # two-tone object
    shade = albedo * (0.3 + 0.7 * diffuse[:, None]) + spec[:, None]
    img = torch.where(hit[:, None], shade, bg).clamp(0, 1)
    return (img.reshape(size, size, 3) * 255).round().to(torch.uint8).numpy()


def object_spec(split: str, index: int, seed: int = 0, tilt: float = PLANE_TILT) -> dict:
    """Family, proportions, colours, material and background of object `index` of a split; `tilt` scales the split
    plane's normal's vertical part (another value keeps the object's other choices)."""
    global_index = index * 10 if split == "heldout" else index + index // 9 + 1  # multiples of 10 are held out
    rng = np.random.default_rng([seed, global_index])
    family = list(FAMILIES)[int(rng.integers(len(FAMILIES)))]
    hue = rng.random(2)
    hue[1] = (hue[0] + 0.25 + 0.5 * hue[1]) % 1  # the two tones a quarter to half the hue circle apart, so they part
    colours = [_hsv(h, 0.5 + 0.5 * rng.random(), 0.5 + 0.5 * rng.random()) for h in hue]
    normal = rng.normal(size=3) * np.array([1.0, tilt, 1.0])  # (x, y, z): y is the axis the object turns about
    return {
        "family": family,
        "proportions": rng.random(3).tolist(),
        "colours": colours,
        "plane": [*(normal / np.linalg.norm(normal)).tolist(), float(rng.uniform(-0.2, 0.2))],
        "glossy": bool(rng.random() < 0.5),
        "background": _hsv(rng.random(), 0.15 * rng.random(), 0.85 + 0.15 * rng.random()),
    }


def _hsv(h: float, s: float, v: float) -> list[float]:
    rgb = Image.new("HSV", (1, 1), (int(h * 255), int(s * 255), int(v * 255))).convert("RGB").getpixel((0, 0))
    return [c / 255 for c in rgb]


def render_object(spec: dict, views: int = AZIMUTHS, size: int = SIZE) -> list[Image.Image]:
    """The object's views in azimuth order, 360°/views apart."""
    r = spec["proportions"]
    sdf = functools.partial(FAMILIES[spec["family"]], r=r)
    colours, plane = torch.tensor(spec["colours"]), torch.tensor(spec["plane"])
    bg = torch.tensor(spec["background"])
    with torch.no_grad():
        return [Image.fromarray(render_view(sdf, 2 * math.pi * k / views, colours, plane, spec["glossy"], bg, size))
                for k in range(views)]  # fmt: skip


def set_record(split: str, index: int, k: int = AZIMUTHS, seed: int = 0) -> dict:
    """Object `index` of a split as a shard sample: its views in azimuth order."""
    spec = object_spec(split, index, seed)
    settings = {"source": "nvs-synth", "split": split, "azimuths": AZIMUTHS, "elevation_deg": math.degrees(ELEVATION)}
    return {
        "key": f"nvs-{split}-{index:07d}",
        "images": render_object(spec)[:k],
        "meta": {"caption": f"a {spec['family']}", "object": spec, "ordered": True,
                 "labels": {"content": list(FAMILIES).index(spec["family"])}, "settings": settings},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    from train.data.shards import write_shards_cli

    write_shards_cli(__doc__, set_record, "objects", 2000, 250, argv)


if __name__ == "__main__":
    main()
