"""The ledger of a model trained on (issue 25 point 3): one row per scored export, and its learning curve.

    # after `evaluate --data open:simple open:heldout --out runs/eval-X.json` of an exported pipeline:
    python -m train.evaluation.ledger add --model self-reference --checkpoint runs/X/pipeline \\
        --evals runs/eval-X-simple.json runs/eval-X-heldout.json --log runs/X/log.csv
    python -m train.evaluation.ledger plot            # docs/ledger.png from docs/ledger.csv

A row: the date, the model's name, the images it has seen in all (its `m2m_training.json`), the run's steps,
colour and shape retrieval on `open:simple` and `open:heldout` (c = 4, among 16), and the context gain (the mean
of the run's last three validations, train/training/m2m.py); a task model's row has its task's SSIM and turn or
step accuracy (train/evaluation/tasks.py) beside copying the last image's SSIM instead (at full resolution and at
32 px, where the task's bar compares them), and its change cosine (scored since 2026-12-07: empty before). The
plot draws the general models' two sources against images seen.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import sys
from pathlib import Path

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])
from m2m.loading import training_record
from train.evaluation.learning_curve import plot
from train.evaluation.run_log import context_gain

FIELDS = ["date", "model", "images", "steps", "simple_colour", "simple_shape", "heldout_colour", "heldout_shape",
          "context_gain", "task", "task_ssim", "task_ssim_32", "task_accuracy", "copy_last_ssim", "copy_last_ssim_32",
          "checkpoint", "task_change_cosine"]  # fmt: skip
ACCURACY = {"nvs": "turn_accuracy", "procedure": "step_accuracy"}  # train/evaluation/tasks.py's, per task


def model_scores(path: Path) -> dict:
    """The model's scores in an evaluate.py JSON (its one context size), and the source it was scored on."""
    saved = json.loads(path.read_text())
    return {"source": saved["args"]["source"], **next(iter(saved["results"].values()))["model"]}


def row(model: str, checkpoint: Path, evals: list[Path], log: Path | None) -> dict:
    record = training_record(checkpoint)
    if record is None:
        raise FileNotFoundError(f"{checkpoint}: no training record (m2m_training.json): how many images has it seen?")
    steps, gain = context_gain(log.parent) if log else (None, None)
    out = {"date": datetime.date.today().isoformat(), "model": model, "images": record["images_seen"],
           "steps": steps if steps is not None else "", "context_gain": "" if gain is None else round(gain, 4),
           "checkpoint": str(checkpoint)}  # fmt: skip
    for path in evals:
        if "task" in json.loads(path.read_text())["args"]:  # a task model's score (train/evaluation/tasks.py)
            out.update(task_row(path))
            continue
        scores = model_scores(path)
        source = scores["source"].removeprefix("open:")
        if source not in ("simple", "heldout"):
            raise ValueError(f"{path}: scored on {scores['source']}; the ledger keeps open:simple and open:heldout")
        out[f"{source}_colour"], out[f"{source}_shape"] = scores["colour_retrieval"], scores["shape_retrieval"]
    return out


def task_row(path: Path) -> dict:
    """A task model's columns from its train/evaluation/tasks.py JSON: at the largest k, beside copy-last."""
    saved = json.loads(path.read_text())
    task = saved["args"]["task"]
    groups = saved["results"][max(saved["results"], key=int)]
    model, copy = groups["fine-tuned"], groups["copy-last"]
    return {"task": task, "task_ssim": round(model["ssim"], 4), "task_ssim_32": round(model["ssim_32"], 4),
            "task_accuracy": round(model[ACCURACY[task]], 4), "copy_last_ssim": round(copy["ssim"], 4),
            "copy_last_ssim_32": round(copy["ssim_32"], 4),
            "task_change_cosine": round(model["change_cosine"], 4) if "change_cosine" in model else ""}  # fmt: skip


def add(ledger: Path, entry: dict) -> None:
    new = not ledger.exists()
    if not new:
        with ledger.open() as f:
            header = next(csv.reader(f), [])
    if not new and header != FIELDS:
        raise SystemExit(f"{ledger}: its columns are {header}, this ledger's are {FIELDS}: rewrite it first")
    with ledger.open("a", newline="") as f:
        writer = csv.DictWriter(f, FIELDS, restval="")
        if new:
            writer.writeheader()
        writer.writerow(entry)


def points(ledger: Path) -> dict[str, list[tuple[float, float, float]]]:
    """'<model>, <source>' -> [(images, colour, shape)] for the learning curve, sorted by images."""
    out: dict[str, list] = {}
    with ledger.open() as f:
        for r in csv.DictReader(f):
            for source in ("heldout", "simple"):
                if r[f"{source}_colour"]:
                    key = f"{r['model']}, {source}"
                    out.setdefault(key, []).append(
                        (float(r["images"]), float(r[f"{source}_colour"]), float(r[f"{source}_shape"]))
                    )
    return {key: sorted(p) for key, p in out.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["add", "plot"])
    p.add_argument("--ledger", default="docs/ledger.csv")
    p.add_argument("--model", help="add: the model's name in the ledger (e.g. self-reference)")
    p.add_argument("--checkpoint", help="add: the exported pipeline folder (its m2m_training.json)")
    p.add_argument(
        "--evals",
        nargs="+",
        default=[],
        help="add: evaluate.py JSONs of open:simple / open:heldout, or a tasks.py JSON",
    )
    p.add_argument("--log", default=None, help="add: the run's log.csv (steps, context gain)")
    p.add_argument("--out", default="docs/ledger.png")
    p.add_argument("--colour-ceiling", type=float, default=0.953, help="the round trip of the truth, open:heldout")
    p.add_argument("--shape-ceiling", type=float, default=0.859)
    args = p.parse_args(argv)
    ledger = Path(args.ledger)
    if args.command == "add":
        if not (args.model and args.checkpoint and args.evals):
            p.error("add needs --model, --checkpoint and --evals")
        if args.log and not (Path(args.log).name == "log.csv" and Path(args.log).is_file()):
            p.error(f"--log {args.log}: give a run's log.csv (its folder is read for the steps and context gain)")
        entry = row(args.model, Path(args.checkpoint), [Path(e) for e in args.evals], args.log and Path(args.log))
        add(ledger, entry)
        print(entry)
    else:
        ceilings = {"colour": args.colour_ceiling, "shape": args.shape_ceiling}
        bars = {"colour": 0.90, "shape": 0.80}  # open:heldout's; open:simple's are 0.95 and 0.90
        plot(points(ledger), ceilings, bars, 1 / 16, "open:heldout / simple").save(args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
