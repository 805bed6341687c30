"""Exports of a generated set: a zip of lossless PNGs with a manifest, an animated GIF, a contact sheet."""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, ImageDraw


def write_zip(path: str | Path, files: dict[str, Path], manifest: dict) -> Path:
    """The PNG files (already compressed: stored) and manifest.json, written atomically."""
    path = Path(path)
    tmp = path.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        for name, file in files.items():
            zf.write(file, name)
        zf.writestr("manifest.json", json.dumps(manifest, indent=2), compress_type=zipfile.ZIP_DEFLATED)
    tmp.replace(path)
    return path


def write_gif(path: str | Path, frames: list[Image.Image], ms_per_frame: int = 600) -> Path:
    """Context then generated images as one animation: orbits and procedures read best this way."""
    if not frames:
        raise ValueError("no images to animate")
    size = frames[-1].size
    frames = [f.convert("RGB").resize(size) for f in frames]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=ms_per_frame, loop=0)
    return Path(path)


def contact_sheet(context: list[Image.Image], generated: list[Image.Image], size: int = 128) -> Image.Image:
    """One row: the context, a divider, the generated images."""
    n = len(context) + len(generated)
    gap = 12 if context and generated else 0
    sheet = Image.new("RGB", (max(1, n * size + gap), size), (255, 255, 255))
    x = 0
    for i, img in enumerate(context + generated):
        if i == len(context) and gap:
            ImageDraw.Draw(sheet).rectangle((x + 4, 0, x + gap - 5, size), fill=(220, 60, 60))
            x += gap
        sheet.paste(img.convert("RGB").resize((size, size)), (x, 0))
        x += size
    return sheet


def stack_rows(rows: list[Image.Image], gap: int = 4) -> Image.Image:
    """Contact-sheet rows one under another (left-aligned, white between)."""
    width = max(r.width for r in rows)
    sheet = Image.new("RGB", (width, sum(r.height for r in rows) + gap * (len(rows) - 1)), (255, 255, 255))
    y = 0
    for row in rows:
        sheet.paste(row, (0, y))
        y += row.height + gap
    return sheet


@contextmanager
def atomic_folder(out: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder to write into; it replaces `out` only when the block succeeds."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
