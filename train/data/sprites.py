"""Drawings for open-ended sets: clip art and emoji as one atlas of small RGBA sprites.

Both come from Debian, offline and public domain / OFL:

    apt-get install openclipart-png fonts-noto-color-emoji    # 8,121 drawings; the font's emoji
    python -m train.data.sprites --out data/sprites.npz            # 7,184 + 1,285 sprites (4 min here)
    python -m train.data.sprites --pack data/sprites-gpu.npz.xz --max-mb 14   # a subset for a small upload

A sprite is the drawing cropped to its opaque part, centred on a transparent square and resized,
stored with premultiplied alpha (so that warping it mixes colours correctly). A tenth of the
drawings, chosen by a hash of their names, is held out: the `hard` split of `train/data/open_sets.py`
draws only those, the others never.
"""

from __future__ import annotations

import argparse
import io
import itertools
import lzma
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
    """This split's sprites (n, 4, h, w) uint8: held-out drawings for `hard`, the others else; None if no atlas.

    An atlas ending in `.xz` is an uncompressed `.npz` packed with xz (`pack`).
    """
    path = Path(path) if path else DEFAULT_ATLAS
    if not path.exists():
        return None
    source = io.BytesIO(lzma.decompress(path.read_bytes())) if path.suffix == ".xz" else path
    with np.load(source) as atlas:
        keep = atlas["heldout"] == (split == "hard")
        if not keep.any():
            raise ValueError(f"{path} has no sprites for the {split!r} split (a packed atlas keeps only training ones)")
        return torch.from_numpy(atlas["rgba"][keep])


def pack(atlas: Path, out: Path, max_mb: float) -> dict[str, float]:
    """The training sprites, evenly thinned until xz packs them into max_mb: for an upload with a size limit.

    Held-out drawings are left out (only the `hard` split draws them). The size per sprite is measured on
    a tenth first, then the pack is made once, and made again smaller in the rare case that it overshoots.
    """
    with np.load(atlas) as a:
        train = ~a["heldout"]
        rgba, names = a["rgba"][train], a["names"][train]  # (n, 4, h, w)

    def packed(n: int) -> bytes:
        pick = np.linspace(0, len(rgba) - 1, n).round().astype(int)  # spread over clip art and emoji alike
        buf = io.BytesIO()
        np.savez(buf, rgba=rgba[pick], names=names[pick], heldout=np.zeros(n, bool))
        return lzma.compress(buf.getvalue())

    probe = max(1, len(rgba) // 10)
    n = min(len(rgba), int(max_mb * 1e6 / (len(packed(probe)) / probe) * 0.97))
    while len(data := packed(n)) > max_mb * 1e6:
        n = int(n * 0.95)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return {"sprites": n, "of": len(rgba), "mb": round(len(data) / 1e6, 2)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_ATLAS)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--pack", type=Path, help="instead: pack --atlas's training sprites into this .npz.xz")
    p.add_argument("--atlas", type=Path, default=DEFAULT_ATLAS, help="the atlas that --pack reads")
    p.add_argument("--max-mb", type=float, default=14.0, help="--pack's size limit (MB)")
    args = p.parse_args(argv)
    if args.pack:
        if args.pack.suffix != ".xz":
            p.error("--pack writes an .xz file (name it *.npz.xz)")
        print(pack(args.atlas, args.pack, args.max_mb))
    else:
        print(build(args.out, args.size))


if __name__ == "__main__":
    main()
