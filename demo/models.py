"""The demo's models: which checkpoint each (variant, task) is, on which device, loaded once on first use."""

from __future__ import annotations

import threading
from pathlib import Path

import gradio as gr
import torch

from m2m.loading import CheckpointError, is_checkpoint, load_pipeline, task_checkpoint
from m2m.pipeline import M2MPipeline

VARIANTS = {"M2M-Self": "self", "M2M-DINO": "dino"}
TASKS = {"General": "general", "Novel View Synthesis": "nvs", "Visual Procedure Generation": "procedure"}


def resolve_device(device: str = "auto") -> tuple[str, torch.dtype]:
    """`auto`: CUDA in fp16 when a GPU is present (a GPU Space), else the CPU in fp32; any CUDA device is fp16."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, torch.float16 if device.startswith("cuda") else torch.float32


class Models:
    """The pipelines of each (variant, task), loaded once on first use and shared read-only by all sessions."""

    def __init__(self, checkpoint_dir: Path, device: str = "cpu"):
        self.checkpoint_dir = Path(checkpoint_dir)
        self.device, self.dtype = resolve_device(device)
        self._pipes: dict[Path, M2MPipeline] = {}
        self._lock = threading.Lock()

    def folder(self, variant: str, task: str) -> Path:
        return task_checkpoint(self.checkpoint_dir, VARIANTS[variant], TASKS[task])

    def unavailable(self, variant: str, task: str) -> str | None:
        """Why this variant and task cannot run, or None."""
        if variant not in VARIANTS or task not in TASKS:
            return f"unknown variant {variant!r} or task {task!r}"
        folder = self.folder(variant, task)
        if not is_checkpoint(folder):
            return f"no checkpoint at {folder}"
        return None

    def get(self, variant: str, task: str) -> M2MPipeline:
        reason = self.unavailable(variant, task)
        if reason:
            raise gr.Error(f"{variant} / {task} is unavailable: {reason}")
        folder = self.folder(variant, task)
        with self._lock:
            if folder not in self._pipes:
                try:
                    pipe = load_pipeline(folder, device=self.device, dtype=self.dtype)
                except CheckpointError as err:
                    raise gr.Error(str(err)) from None
                pipe.set_progress_bar_config(disable=True)
                self._pipes[folder] = pipe
            return self._pipes[folder]
