"""Checkpoints: where the embedded models are, which folder is which variant and task, and loading any of them.

    checkpoints/m2m-self-tiny              general (MIS): continue a set in its content and style
    checkpoints/m2m-self-tiny-nvs          novel view synthesis: the next view of an object, turned 45°
    checkpoints/m2m-self-tiny-procedure    visual procedure generation: the next step of a procedure

and the same for `dino` (Shen et al. 2024, §5). A task folder is a full pipeline or an adapter over
its general model (m2m/adapters.py); `load_pipeline` loads either, with one-line `CheckpointError`s.
The folder of the embedded models is $M2M_CHECKPOINT_DIR, else checkpoints/ beside the package.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from m2m.adapters import adapter_config, apply_adapter, base_folder, is_adapter
from m2m.attention import VARIANTS
from m2m.pipeline import M2MPipeline

CHECKPOINT_DIR_ENV = "M2M_CHECKPOINT_DIR"  # the folder of the embedded models, for the CLI and the app
TASKS = {"general": "", "nvs": "-nvs", "procedure": "-procedure"}  # task -> folder suffix
TRAINING_RECORD = "m2m_training.json"  # beside a trained model's weights: the images it has seen, and how


def training_record(folder: str | Path) -> dict | None:
    """What a checkpoint says of its training (train/training/m2m.py writes it at every export), if anything."""
    path = Path(folder) / TRAINING_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def checkpoint_dir() -> Path:
    """The embedded models' folder: $M2M_CHECKPOINT_DIR, else checkpoints/ beside the package (a checkout)."""
    return Path(os.environ.get(CHECKPOINT_DIR_ENV) or Path(__file__).resolve().parents[1] / "checkpoints")


def task_checkpoint(root: str | Path, variant: str, task: str = "general", size: str = "tiny") -> Path:
    """The folder of a variant's model for a task under `root` (checkpoints/m2m-{variant}-{size}[-{task}])."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    return Path(root) / f"m2m-{variant}-{size}{TASKS[task]}"


def is_checkpoint(folder: str | Path) -> bool:
    """A pipeline folder or a task adapter (what `load_pipeline` can load from disk)."""
    return (Path(folder) / "model_index.json").is_file() or is_adapter(folder)


def checkpoint_task(folder: str | Path) -> str | None:
    """The task an adapter folder was fine-tuned for; None for a full pipeline (its name may say)."""
    return (adapter_config(folder).get("task") or None) if is_adapter(folder) else None


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message says which and why."""


def load_pipeline(checkpoint: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> M2MPipeline:
    """An M2M pipeline from a local folder (diffusers layout) or, when online, a hub id."""
    path = Path(checkpoint).expanduser()
    is_hub_id = not path.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", str(checkpoint)) is not None
    if not is_hub_id:
        if not path.is_dir():
            raise CheckpointError(f"{checkpoint}: no such checkpoint directory")
        if is_adapter(path):  # a task adapter: its base pipeline, then the adapter on top
            return load_adapter(path, device, dtype)
        if not (path / "model_index.json").is_file():
            raise CheckpointError(f"{checkpoint}: not a pipeline folder (no model_index.json)")
        try:
            index = json.loads((path / "model_index.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{checkpoint}: corrupt model_index.json ({err})") from None
        if index.get("_class_name") != M2MPipeline.__name__:
            raise CheckpointError(f"{checkpoint}: a {index.get('_class_name')!r} checkpoint, not an M2MPipeline")
    try:
        pipe = M2MPipeline.from_pretrained(str(path if not is_hub_id else checkpoint), dtype=dtype)
    except Exception as err:  # diffusers raises many kinds; the user needs one line
        raise CheckpointError(f"{checkpoint}: cannot load the checkpoint ({first_line(err)})") from None
    return pipe.to(device)


def load_adapter(path: Path, device: str, dtype: torch.dtype) -> M2MPipeline:
    """A task adapter's base pipeline with the adapter on it; one-line CheckpointErrors."""
    try:
        base = base_folder(path)
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"{path}: unreadable adapter_config.json ({err!r})") from None
    if not base.is_dir():
        raise CheckpointError(f"{path}: its base model {base} is missing (an adapter moved without it? "
                              "m2m.adapters.rebase points it at another copy)")  # fmt: skip
    pipe = load_pipeline(base, device, dtype)
    try:
        return apply_adapter(pipe, path)
    except Exception as err:  # safetensors, peft and json raise many kinds; the user needs one line
        raise CheckpointError(f"{path}: cannot load the task adapter ({first_line(err)})") from None


def first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
