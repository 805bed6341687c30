"""Image input and output: any file or PIL image in, model tensors out, and back to PIL."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

MAX_PIXELS = 64_000_000  # refuse decompression bombs well before they fill memory


class ImageInputError(ValueError):
    """A context image that cannot be used; the message says which and why."""


def load_image(path: str | Path) -> Image.Image:
    """Open an image file fully (first frame of an animation), with a one-line error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ImageInputError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                check_size(img, str(path))
                img.seek(0)
                img.load()
                return img.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageInputError(f"{path}: image too large (over {MAX_PIXELS:,} pixels)") from None
    except UnidentifiedImageError:
        raise ImageInputError(f"{path}: not an image file") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageInputError(f"{path}: corrupt or truncated image ({err})") from None


def check_size(img: Image.Image, name: str = "image") -> None:
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageInputError(f"{name}: empty image")
    if w * h > MAX_PIXELS:
        raise ImageInputError(f"{name}: image too large ({w}x{h}, over {MAX_PIXELS:,} pixels)")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; transparency is composited on white, 16-bit is scaled, not clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def to_model_size(img: Image.Image, size: int) -> Image.Image:
    """RGB, centre-cropped to a square and resized to the model's resolution."""
    check_size(img)
    return ImageOps.fit(to_rgb(img), (size, size), method=Image.Resampling.BICUBIC)


def to_tensor(images: list[Image.Image]) -> Tensor:
    """Same-size RGB images -> (N, 3, H, W) in [-1, 1]."""
    arr = np.stack([np.asarray(img, dtype=np.float32) for img in images])  # (N, H, W, 3)
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def to_pil(pixels: Tensor) -> list[Image.Image]:
    """(N, 3, H, W) in [-1, 1] -> 8-bit RGB images."""
    arr = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).cpu().numpy()) for a in arr]


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
