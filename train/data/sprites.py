"""Drawings for open-ended sets: clip art and emoji as one atlas of small RGBA sprites.

Both come from Debian, offline and public domain / OFL:

    apt-get install openclipart-png fonts-noto-color-emoji    # 8,121 drawings; the font's emoji
    python -m train.data.sprites --out data/sprites.npz            # 7,184 + 1,285 sprites (4 min here)

A sprite is the drawing cropped to its opaque part, centred on a transparent square and resized,
stored with premultiplied alpha (so that warping it mixes colours correctly). A tenth of the
drawings, chosen by a hash of their names, is held out: the `hard` split of `train/data/open_sets.py`
draws only those, the others never.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])

CLIPART = Path("/usr/share/openclipart/png")
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_RANGES = ((0x2600, 0x27BF), (0x1F300, 0x1F5FF), (0x1F600, 0x1F64F), (0x1F680, 0x1F6FF), (0x1F900, 0x1FAFF))
DEFAULT_ATLAS = Path("data/sprites.npz")


def is_heldout(name: str) -> bool:
    return zlib.crc32(name.encode()) % 10 == 0


def clipart(root: Path = CLIPART) -> Iterator[tuple[str, Image.Image]]:
    for path in sorted(root.rglob("*.png")):
        try:
            with Image.open(path) as img:
                yield str(path.relative_to(root)), img.convert("RGBA")
        except (OSError, Image.DecompressionBombError):  # a few files are broken or huge
            continue


def emoji(font_path: Path = EMOJI_FONT) -> Iterator[tuple[str, Image.Image]]:
    """Every emoji the font has (Noto Color Emoji is a bitmap font: size 109 only)."""
    font = ImageFont.truetype(str(font_path), 109)
    for lo, hi in EMOJI_RANGES:
        for code in range(lo, hi + 1):
            img = Image.new("RGBA", (160, 160))
            ImageDraw.Draw(img).text((10, 10), chr(code), font=font, embedded_color=True)
            if img.getbbox() is not None:
                yield f"emoji/{code:05x}", img


def to_sprite(img: Image.Image, size: int) -> np.ndarray | None:
    """Cropped to its opaque part, centred on a transparent square: (4, size, size) uint8, premultiplied.

    None for what is no drawing on a transparent ground (a full page, a photo, a sliver).
    """
    alpha = np.asarray(img.getchannel("A"))
    if (alpha < 16).mean() < 0.1:
        return None
    box = img.getchannel("A").point(lambda a: 255 if a >= 16 else 0).getbbox()
    if box is None:
        return None
    w, h = box[2] - box[0], box[3] - box[1]
    if min(w, h) < 8 or max(w, h) > 4 * min(w, h):
        return None
    side = int(max(w, h) * 1.06)
    square = Image.new("RGBA", (side, side))
    square.paste(img.crop(box), ((side - w) // 2, (side - h) // 2))
    rgba = np.asarray(square.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float32) / 255
    rgba[..., :3] *= rgba[..., 3:]
    return (rgba * 255).round().astype(np.uint8).transpose(2, 0, 1)


def build(out: Path, size: int = 64) -> dict[str, int]:
    names, sprites = [], []
    for name, img in tqdm(itertools.chain(clipart(), emoji()), desc="sprites"):
        sprite = to_sprite(img, size)
        if sprite is not None:
            names.append(name)
            sprites.append(sprite)
    heldout = np.array([is_heldout(n) for n in names])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, rgba=np.stack(sprites), names=np.array(names), heldout=heldout)
    return {"sprites": len(names), "heldout": int(heldout.sum())}


def load_sprites(split: str, path: str | Path | None = None) -> torch.Tensor | None:
    """This split's sprites (n, 4, h, w) uint8: held-out drawings for `hard`, the others else; None if no atlas."""
    path = Path(path) if path else DEFAULT_ATLAS
    if not path.exists():
        return None
    with np.load(path) as atlas:
        keep = atlas["heldout"] == (split == "hard")
        return torch.from_numpy(atlas["rgba"][keep])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_ATLAS)
    p.add_argument("--size", type=int, default=64)
    print(build(**vars(p.parse_args(argv))))


if __name__ == "__main__":
    main()
