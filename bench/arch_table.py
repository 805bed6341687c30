"""The architecture table of scripts/arch_cpu.sh (issue 25): each row's context gain and its scores on two sources.

    python bench/arch_table.py --runs runs/arch

Every row trained from scratch for the same minutes of one core (training steps only, over all resumes). Columns:
- steps (images): how far the minutes took it (8 sets a step, K uniform in 2..6: about 32 images a step; the log's
  count where it has one);
- context gain: the held-out loss without context minus with, as a share of the loss without (train/training/m2m.py),
  the mean of the run's last three validations (one validation is a fixed batch of 16 sets: noisy); then the same
  up to the last step every scored row reached, where rows compare at equal images whatever their speed;
- `open:simple` and `open:heldout` colour and shape retrieval among 16 (c = 4), each with its binomial standard error;
- the floor (the model without context) and the ceiling (the autoencoder's round trip) of shape on both sources.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[1])
from bench.recipe_table import cell
from train.evaluation.run_log import context_gain, gains, images_seen

ROWS = {  # row -> what it changes (scripts/arch_cpu.sh)
    "base": "today's recipe: ISA in attn2, 64 pooled context tokens, lr 5e-4",
    "tokens256": "unpooled context tokens (all 256 of the 16×16 level)",
    "reference": "reference attention beside ISA: attn1 also reads the 2 most recent clean images",
    "half": "a half-width UNet (32, 64, 64 channels)",
    "lr1e-3": "learning rate 1e-3",
    "lr2e-3": "learning rate 2e-3",
    "curriculum": "15 minutes on open:simple-train, then open:train",
    "dino": "M2M-DINO, today's recipe (8×8 patches + CLS)",
    "dino-fine": "M2M-DINO, encoder input 256 px: 16×16 patches + CLS",
    "channels": "every latent channel at mean 0, std 1 (the autoencoder's per-channel latent stats)",
}
SOURCES = ("simple", "heldout")


def scores(runs: Path, name: str, source: str) -> dict | None:
    path = runs / f"eval-{name}-{source}.json"
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    groups = next(iter(saved["results"].values()))  # the one context size
    return {**groups, "n": saved["args"]["sets"] * saved["args"]["generate"]}


def row(runs: Path, name: str, common: int | None) -> str | None:
    step, gain = context_gain(runs / name)
    if step is None:
        return None
    at_common = context_gain(runs / name, upto=common)[1] if common in gains(runs / name) else None
    cells = []
    for source in SOURCES:
        s = scores(runs, name, source)
        model = s and s["model"]
        cells += [cell(model["colour_retrieval"], s["n"]), cell(model["shape_retrieval"], s["n"])] if s else ["—"] * 2
    bounds = []
    for source in SOURCES:  # each model's own floor (its no-context images) and the autoencoder's round trip
        s = scores(runs, name, source)
        bounds.append(f"{s['no-context']['shape_retrieval']:.3f} / {s['round-trip']['shape_retrieval']:.3f}"
                      if s else "—")  # fmt: skip
    gain_cells = [f"{100 * g:.1f} %" if g is not None else "—" for g in (gain, at_common)]
    images = images_seen(runs / name) or step * 32  # older logs: about 32 images a step
    return (f"| `{name}` | {ROWS.get(name, '')} | {step} ({images / 1000:.1f}k) | " + " | ".join(gain_cells)
            + " | " + " | ".join(cells) + " | " + " | ".join(bounds) + " |")  # fmt: skip


def table(runs: Path) -> str:
    names = list(dict.fromkeys([*ROWS, *sorted(p.name for p in runs.iterdir() if (p / "log.csv").exists())]))
    # where every row compares at equal images: the last validation all of them reached (rows ran on machines of
    # different speeds, so equal minutes gave 150 steps in one round and 590 in another)
    logged = [set(gains(runs / n)) for n in names if gains(runs / n)]
    common = max(set.intersection(*logged), default=None) if logged else None
    head = [f"| row | change | steps (images) | context gain | context gain at step {common} | simple colour "
            "| simple shape | heldout colour | heldout shape | simple shape floor / ceiling "
            "| heldout shape floor / ceiling |", "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    return "\n".join(head + [r for r in (row(runs, n, common) for n in names) if r is not None])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/arch")
    print(table(Path(p.parse_args(argv).runs)))


if __name__ == "__main__":
    main()
