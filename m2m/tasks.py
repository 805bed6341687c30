"""Task modes: the general model and its two fine-tunes (Shen et al. 2024, §5), as checkpoint folders.

    checkpoints/m2m-self-tiny              general (MIS): continue a set in its content and style
    checkpoints/m2m-self-tiny-nvs          novel view synthesis: the next view of an object, turned 45°
    checkpoints/m2m-self-tiny-procedure    visual procedure generation: the next step of a procedure

and the same for `dino`. A task folder is a full pipeline or an adapter over its general model
(m2m/adapters.py); `load_pipeline` loads either.
"""

from __future__ import annotations

from pathlib import Path

from m2m.adapters import adapter_config, is_adapter
from m2m.attention import VARIANTS

TASKS = {"general": "", "nvs": "-nvs", "procedure": "-procedure"}  # task -> folder suffix


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
