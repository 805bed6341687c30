"""The recipe table of scripts/recipe_cpu.sh: each run's scores on open:heldout, its steps and its held-out losses.

    python bench/recipe_table.py --runs runs/recipe

Retrievals are shares of judged images (sets × images generated), so each carries a binomial standard error,
printed beside it. Held-out losses are those of the training weights (not the EMA) at the last step every run
logged them: uniform timesteps, no weighting, the run's own noise schedule, so comparable between runs except
`zero-snr`, whose schedule differs.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

ROWS = {  # run (or eval tag) -> what it changes
    "base": "today's recipe: v-prediction, uniform timesteps, 64 context tokens, EMA 0.999",
    "base-raw": "the same run's weights without the EMA",
    "min-snr": "min-SNR-γ loss weights, γ = 5",
    "logit-normal": "logit-normal timesteps, N(0, 1)",
    "zero-snr": "zero-terminal-SNR betas, trailing sampling",
    "tokens16": "16 context tokens per image (4×4)",
}


def read_log(folder: Path) -> dict:
    """A run's last step (logged or checkpointed) and its held-out losses {step: (with, without context)}."""
    if not (folder / "log.csv").exists():
        return {"step": None, "val": {}}
    with (folder / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    saved = [int(p.name.split("-")[1]) for p in (folder / "checkpoints").glob("step-*")]  # the last step, if not logged
    val = {int(r["step"]): (float(r["val_loss_context"]), float(r["val_loss_no_context"]))
           for r in rows if r["val_loss_context"]}  # fmt: skip
    return {"step": max([int(r["step"]) for r in rows] + saved, default=None), "val": val}


def cell(p: float, n: int) -> str:
    return f"{p:.3f} ± {math.sqrt(p * (1 - p) / n):.3f}"


def row(runs: Path, tag: str, val_step: int | None) -> str | None:
    path = runs / f"eval-{tag}.json"
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    n = saved["args"]["sets"] * saved["args"]["generate"]
    scores = next(iter(saved["results"].values()))  # the one context size
    model, floor = scores["model"], scores["no-context"]
    log = read_log(runs / tag.removesuffix("-raw"))
    images = (log["step"] or 0) * 8 * 4  # 8 sets a step, K uniform in 2..6
    losses = "{:.3f} / {:.3f}".format(*log["val"][val_step]) if val_step in log["val"] else "—"
    return (f"| `{tag}` | {ROWS.get(tag, '')} | {log['step'] or '—'} (≈{images / 1000:.1f}k) | "
            f"{cell(model['colour_retrieval'], n)} | {cell(model['shape_retrieval'], n)} | {model['similarity']:.3f} | "
            f"{floor['colour_retrieval']:.3f} / {floor['shape_retrieval']:.3f} | {losses} |")  # fmt: skip


def common_val_step(runs: Path, tags: list[str]) -> int | None:
    """The last step at which every scored run logged its held-out losses: they compare there."""
    logged = [set(read_log(runs / t.removesuffix("-raw"))["val"]) for t in tags if (runs / f"eval-{t}.json").exists()]
    common = set.intersection(*logged) if logged else set()
    return max(common, default=None)


def table(runs: Path) -> str:
    tags = list(dict.fromkeys([*ROWS, *sorted(p.stem.removeprefix("eval-") for p in runs.glob("eval-*.json"))]))
    step = common_val_step(runs, tags)
    head = ["| run | change | steps (images) | colour | shape | similarity | no-context colour / shape "
            f"| held-out loss with / without context, step {step} |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    rows = [r for r in (row(runs, t, step) for t in tags) if r is not None]
    return "\n".join(head + rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/recipe")
    print(table(Path(p.parse_args(argv).runs)))


if __name__ == "__main__":
    main()
