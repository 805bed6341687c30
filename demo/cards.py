"""The Models panel: for each variant and task, its checkpoint, what it was trained on, its size, its quality.

What a model was trained on and how it measured come from model_cards.json, keyed by checkpoint
folder name. A card also holds the fingerprint of the weights it describes: when the weights in the
folder are not those (a retrained model), the panel says that their quality is not measured yet,
rather than showing another model's numbers.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

from safetensors import safe_open

from demo.models import TASKS, VARIANTS, Models
from m2m.adapters import base_folder, is_adapter

CARDS = Path(__file__).with_name("model_cards.json")


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files a checkpoint runs on: its own, and its base's for a task adapter."""
    files = sorted(folder.rglob("*.safetensors"))
    return files + weight_files(base_folder(folder)) if is_adapter(folder) else files


def fingerprint(folder: Path) -> str:
    """A short hash of the weights (and of the base's, for an adapter): which model a card describes."""
    digest = hashlib.sha256()
    for file in weight_files(folder):
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def size(folder: Path) -> str:
    """Its size on disk and its parameters (read from the safetensors headers, no weights loaded)."""
    files = sorted(folder.rglob("*.safetensors"))
    mb = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6
    params = 0
    for file in files:
        with safe_open(file, "pt") as f:
            params += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())  # noqa: SIM118
    text = f"{mb:.1f} MB, {params / 1e6:.1f}M parameters"
    if not is_adapter(folder):
        return text
    return text + f" (an adapter over `{os.path.relpath(base_folder(folder), folder.parent)}`)"  # beside it: its name


def read_cards(path: Path = CARDS) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def row(models: Models, variant: str, task: str, cards: dict) -> str:
    folder = models.folder(variant, task)
    reason = models.unavailable(variant, task)
    if reason:
        return f"| {variant} | {task} | `{folder.name}` | | | | unavailable: {reason} |"
    card = cards.get(folder.name, {})
    if card and card.get("weights") != fingerprint(folder):  # a retrained model: neither its data nor its figures
        card = {"quality": "not measured for these weights (the card describes other ones)"}
    quality, trained_on = card.get("quality", "not measured"), card.get("trained_on", "")
    return f"| {variant} | {task} | `{folder.name}` | {trained_on} | {size(folder)} | {quality} | ready |"


def models_table(models: Models, cards: dict | None = None) -> str:
    """The panel's Markdown: one row per variant and task."""
    cards = read_cards() if cards is None else cards
    head = ["| variant | task | checkpoint | trained on | size | measured quality | status |", "|---" * 7 + "|"]
    rows = [row(models, v, t, cards) for v in VARIANTS for t in TASKS]
    dtype = str(models.dtype).removeprefix("torch.")
    note = (
        f"\n\nCheckpoints from `{models.checkpoint_dir}`, running on {models.device} ({dtype}). "
        "Quality: for the general models, own-set retrieval among 16 held-out open-ended sets by colour (a chroma "
        "histogram) and by shape (a colour-free set embedder), with 4 given images (chance 0.06); next-image PSNR "
        "and SSIM for the task models, against the general model (base) and copying the last image. All figures "
        "and how they were measured: docs/open-sets.md and docs/tasks.md."
    )
    return "\n".join(head + rows) + note
