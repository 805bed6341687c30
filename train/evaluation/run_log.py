"""What a training run's log.csv says (train/training/m2m.py): its last step, images and context gain."""

from __future__ import annotations

import csv
from pathlib import Path


def rows(folder: Path) -> list[dict]:
    if not (folder / "log.csv").exists():
        return []
    with (folder / "log.csv").open() as f:
        return list(csv.DictReader(f))


def gains(folder: Path) -> dict[int, float]:
    """{step: context gain} of every validation the run logged."""
    return {int(r["step"]): float(r["context_gain"]) for r in rows(folder) if r.get("context_gain")}


def last_step(folder: Path) -> int | None:
    return max((int(r["step"]) for r in rows(folder)), default=None)


def images_seen(folder: Path) -> int | None:
    """Images the run has trained on (the log's count; None for logs from before it was kept)."""
    counts = [int(r["images"]) for r in rows(folder) if r.get("images")]
    return max(counts, default=None)


def context_gain(folder: Path, last: int = 3, upto: int | None = None) -> tuple[int | None, float | None]:
    """The run's last step and the mean context gain of its last `last` validations (up to step `upto`)."""
    logged = [g for s, g in sorted(gains(folder).items()) if upto is None or s <= upto]
    return last_step(folder), (sum(logged[-last:]) / len(logged[-last:]) if logged else None)
