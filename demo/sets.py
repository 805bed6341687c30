"""A session's image set: the given images, each new image with what it was made after, and the downloads.

Every new image records the Seed it was made with and the new images before it at that moment, so
that generating 1 image after the given images and those, with that Seed, makes it again. A new
image that Regenerate replaced is kept (in `earlier`) while a later image was made after it.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from m2m.images import load_image, to_rgb
from m2m.sampling import SamplingParams, image_seed
from m2m.sets import contact_sheet, write_gif, write_zip

SESSION_TTL_S = 6 * 3600  # a session's files are removed after this long without a new set
SHOWN_SIZE = 512  # the given images are shown (and animated) at most this large
REPRODUCE = (
    "Each image is made again by generating 1 image after the given images (in order) and the files "
    "in its `after` (in order), with the `parameters` above and its own `seed`. `index` is its position "
    "in the set and `image_seed` the seed of its noise (m2m.image_seed(seed, index)). `earlier` holds "
    "images that Regenerate replaced and that a later image was made after."
)


@dataclass(frozen=True)
class Recipe:
    """The model and the settings every image of a set is made with; the seed is Generate's, which Continue
    goes on with (Regenerate gives one image another)."""

    checkpoint: str
    variant: str
    task: str
    params: SamplingParams


@dataclass(frozen=True)
class NewImage:
    path: str
    index: int  # position in the whole set: the number of images before it
    seed: int  # the Seed that makes it, after the given images and `after`
    after: tuple[str, ...]  # file names of the new images it was made after, in order

    @property
    def name(self) -> str:
        return Path(self.path).name


@dataclass(frozen=True)
class ImageSet:
    folder: str
    given: tuple[str, ...]  # the context files as uploaded, in order
    shown: tuple[str, ...]  # RGB PNG copies of them for the strip, the GIF and the contact sheet
    recipe: Recipe
    new: tuple[NewImage, ...] = ()
    earlier: tuple[NewImage, ...] = ()


def session_folder(ttl_s: float = SESSION_TTL_S) -> str:
    """A session's own folder for its images and downloads; folders idle for `ttl_s` are removed."""
    root = Path(tempfile.gettempdir()) / "m2m-sessions"
    root.mkdir(exist_ok=True)
    for old in root.iterdir():
        if old.is_dir() and time.time() - old.stat().st_mtime > ttl_s:
            shutil.rmtree(old, ignore_errors=True)
    return tempfile.mkdtemp(dir=root)


def start_set(folder: str, given: list[str], images: list[Image.Image], recipe: Recipe) -> ImageSet:
    """A set with no new image yet; the given images are copied as RGB PNGs that a browser can show."""
    shown = []
    for i, img in enumerate(images, start=1):
        shown.append(str(Path(folder) / f"given-{i:02d}.png"))
        shown_copy(img).save(shown[-1])
    return ImageSet(folder, tuple(given), tuple(shown), recipe)


def shown_copy(img: Image.Image) -> Image.Image:
    """RGB, at most SHOWN_SIZE on its longer side (and at least one pixel on the shorter one)."""
    scale = min(1.0, SHOWN_SIZE / max(img.size))
    return to_rgb(img).resize(tuple(max(1, round(d * scale)) for d in img.size), Image.Resampling.LANCZOS)


def with_new(s: ImageSet, new: tuple[NewImage, ...]) -> ImageSet:
    """The set with these new images; `earlier` keeps only the replaced images that one is made after."""
    needed = {name for x in new for name in x.after}
    while grown := {name for x in s.earlier if x.name in needed for name in x.after} - needed:
        needed |= grown  # a replaced image may itself be made after an even earlier one
    return replace(s, new=new, earlier=tuple(x for x in s.earlier if x.name in needed and x not in new))


def save_new(folder: str, image: Image.Image, index: int, seed: int) -> str:
    """A new image as a lossless PNG named by its position and noise seed (never over another one)."""
    stem = Path(folder) / f"image_{index:03d}_seed{image_seed(seed, index)}"
    path, n = stem.with_suffix(".png"), 1
    while path.exists():
        n += 1
        path = stem.with_name(f"{stem.name}-{n}.png")
    image.save(path)
    return str(path)


def caption(s: ImageSet, k: int) -> str:
    """What the strip says under new image k (0-based): enough to make it again with Seed."""
    x = s.new[k]
    text = f"new {k + 1} · Seed {x.seed}"
    if x.after != tuple(y.name for y in s.new[:k]):
        text += " · after a replaced image (see manifest)"
    return text


def strip(s: ImageSet) -> list[tuple[str, str]]:
    """The whole set in order, as the paper draws it: the given images, marked, then the new ones."""
    given = [(p, f"given {i}") for i, p in enumerate(s.shown, start=1)]
    return given + [(x.path, caption(s, k)) for k, x in enumerate(s.new)]


def given_names(s: ImageSet) -> list[str]:
    """The given files' names inside the zip: numbered, so that two files of the same name never clash."""
    return [f"given/{i:02d}-{Path(p).name}" for i, p in enumerate(s.given, start=1)]


def entry(x: NewImage) -> dict:
    return {"file": x.name, "index": x.index, "seed": x.seed, "image_seed": image_seed(x.seed, x.index),
            "after": list(x.after)}  # fmt: skip


def manifest(s: ImageSet) -> dict:
    """What made the set; SamplingParams.from_json reads its `parameters` back (and the older top-level
    steps, guidance and context_window)."""
    r = s.recipe
    return {
        "checkpoint": r.checkpoint, "variant": r.variant, "task": r.task, "parameters": r.params.to_json(),
        "context_order": [Path(p).name for p in s.given], "given": given_names(s),
        "images": [entry(x) for x in s.new], "earlier": [entry(x) for x in s.earlier], "reproduce": REPRODUCE,
    }  # fmt: skip


def downloads(s: ImageSet) -> list[str] | None:
    """The zip (given files, PNGs, manifest.json), the GIF and the contact sheet; None before any new image."""
    if not s.new:
        return None
    folder = Path(s.folder)
    files = dict(zip(given_names(s), map(Path, s.given), strict=True))
    files |= {x.name: Path(x.path) for x in s.new + s.earlier}
    zip_path = write_zip(folder / "m2m-set.zip", files, manifest(s))
    given = [load_image(p) for p in s.shown]  # load_image closes its file: nothing stays open
    made = [load_image(x.path) for x in s.new]
    gif = write_gif(folder / "m2m-set.gif", given + made)
    sheet = folder / "m2m-contact-sheet.png"
    contact_sheet(given, made).save(sheet)
    return [str(zip_path), str(gif), str(sheet)]
