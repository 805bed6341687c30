"""The example sets of examples/: one per folder of PNGs, shown as a thumbnail strip with a caption."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from demo.models import TASKS
from m2m.images import load_image, to_rgb
from m2m.sampling import SamplingParams

UNITS = {"General": "images", "Novel View Synthesis": "views", "Visual Procedure Generation": "steps"}
DEFAULTS = SamplingParams()


@dataclass(frozen=True)
class Example:
    name: str
    images: tuple[str, ...]
    task: str
    caption: str  # what the set is, e.g. "a plant growing"
    expect: str = ""  # what the model is expected to make of it, e.g. "the plant a step taller each time"
    variant: str = "M2M-Self"
    num_images: int = 4
    steps: int = DEFAULTS.steps
    guidance: float = DEFAULTS.guidance
    seed: int = DEFAULTS.seed
    window: int = 0  # the form's context window: 0 = all

    @property
    def label(self) -> str:
        """One line under the thumbnails: "a plant growing, 3 steps"."""
        return f"{self.caption}, {len(self.images)} {UNITS[self.task]}"

    def settings(self) -> list:
        """The form's values: variant, task, num images, steps, guidance, seed, context window."""
        return [self.variant, self.task, self.num_images, self.steps, self.guidance, self.seed, self.window]


def example_task(name: str) -> str:
    """nvs-* and procedure-* example folders run in their task mode, the others in General."""
    by_prefix = {key: label for label, key in TASKS.items()}
    return by_prefix.get(name.split("-", 1)[0], "General")


def find_examples(folder: Path) -> list[Example]:
    """Every folder of PNGs under `folder`, captioned from captions.json (or its folder name), by task.

    captions.json maps a folder to its caption, or to {"caption": ..., "expect": ...}.
    """
    folders = sorted(d for d in folder.iterdir() if d.is_dir() and any(d.glob("*.png"))) if folder.is_dir() else []
    captions = json.loads((folder / "captions.json").read_text()) if (folder / "captions.json").is_file() else {}

    def described(name: str) -> dict:
        entry = captions.get(name, name.replace("-", " "))
        return {"caption": entry} if isinstance(entry, str) else entry

    found = [Example(d.name, tuple(sorted(str(p) for p in d.glob("*.png"))), example_task(d.name), **described(d.name))
             for d in folders]  # fmt: skip
    order = list(captions)
    return sorted(found, key=lambda e: (list(TASKS).index(e.task), order.index(e.name) if e.name in order else 99))


def thumbnail_strip(paths: tuple[str, ...], height: int = 96, gap: int = 4) -> Image.Image:
    """The set's images side by side, each fitted into a square of `height` pixels."""
    strip = Image.new("RGB", (len(paths) * (height + gap) - gap, height), (255, 255, 255))
    for i, path in enumerate(paths):
        strip.paste(ImageOps.fit(to_rgb(load_image(path)), (height, height)), (i * (height + gap), 0))
    return strip
