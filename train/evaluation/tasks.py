"""Measure the task models: novel view synthesis and visual procedure generation, against two baselines.

    python -m train.evaluation.tasks --task nvs --checkpoint checkpoints/m2m-self-tiny-nvs \\
        --base checkpoints/m2m-self-tiny --ks 1 2 4

Given the first k images of a held-out sequence (views in azimuth order, or procedure steps),
each model generates image k+1, which is compared with the true image k+1:

- NVS: PSNR (of the mean squared error over the sequences) and mean SSIM against the
  ground-truth render of the next view.
- Procedures: PSNR, SSIM, and step accuracy, the share of generated images that are closer
  (by SSIM) to the true next step than to any other step of the same procedure.

Baselines side by side: `copy-last` (image k itself) and `base` (the general model, no fine-tune).
Sources: nvs:heldout / procedure:heldout, or `folders:<dir>` with one folder of images per sequence.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from torchmetrics.functional.image import structural_similarity_index_measure
from tqdm import tqdm

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])
from m2m.images import to_model_size, to_tensor
from m2m.loading import load_pipeline
from m2m.sampling import SamplingParams, add_arguments, from_arguments
from train.data.loader import SetDataset

DEFAULT_SOURCE = {"nvs": "nvs:heldout", "procedure": "procedure:heldout"}


def to_unit(images) -> torch.Tensor:
    return (to_tensor([to_model_size(img, 128) for img in images]) + 1) / 2  # (N, 3, H, W) in [0, 1]


def scores(pred: torch.Tensor, truth: torch.Tensor, steps: torch.Tensor, index: int) -> dict[str, float]:
    """pred, truth (1, 3, H, W); steps (S, 3, H, W) every image of the sequence; index: truth's position."""
    out = {
        "mse": float((pred - truth).pow(2).mean()),
        "ssim": float(structural_similarity_index_measure(pred, truth, data_range=1.0)),
    }
    sims = torch.stack([structural_similarity_index_measure(pred, s[None], data_range=1.0) for s in steps])
    out["step_accuracy"] = float(int(sims.argmax()) == index)
    return out


def sequences(source: str, n: int, min_length: int) -> list[list]:
    data = SetDataset(source, n_sets=4 * n, shuffle=False)
    out = [r["images"] for r in data.records() if len(r["images"]) >= min_length]
    return out[:n]


def evaluate(models: dict, seqs: list[list], ks: list[int], params: SamplingParams) -> dict:
    """{k: {group: mean metrics}} for every group (each model, and copy-last); sequence i: seed `params.seed + i`."""
    results = {}
    for k in ks:
        rows = {name: [] for name in [*models, "copy-last"]}
        for i, seq in enumerate(tqdm(seqs, desc=f"k={k}", leave=False)):
            if len(seq) <= k:
                continue
            unit = to_unit(seq)  # (S, 3, H, W)
            for name, pipe in models.items():
                img = pipe(seq[:k], num_images=1, params=params.replace(seed=params.seed + i)).images[0]
                rows[name].append(scores(to_unit([img]), unit[k : k + 1], unit, k))
            rows["copy-last"].append(scores(unit[k - 1 : k], unit[k : k + 1], unit, k))
        results[k] = {name: summary(rs) for name, rs in rows.items() if rs}
    return results


def summary(rows: list[dict]) -> dict[str, float]:
    """Means over images; PSNR from the mean squared error, so that an exact copy (infinite PSNR: a
    symmetric object's next view can equal the last) does not make the mean infinite."""
    means = {m: sum(r[m] for r in rows) / len(rows) for m in rows[0]}
    return {"psnr": float(-10 * math.log10(max(means["mse"], 1e-10))), **means}


def table(results: dict) -> str:
    lines = ["| k | group | PSNR | SSIM | step accuracy |", "|---|---|---|---|---|"]
    for k, groups in results.items():
        for name, m in groups.items():
            lines.append(f"| {k} | {name} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['step_accuracy']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(DEFAULT_SOURCE), required=True)
    p.add_argument("--checkpoint", required=True, help="the fine-tuned task model")
    p.add_argument("--base", default=None, help="the general model (a baseline)")
    p.add_argument("--source", default=None, help="held-out sequences (default: the task's synthetic held-out split)")
    p.add_argument("--sequences", type=int, default=30)
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4])
    add_arguments(p)  # --steps, --guidance, --seed, --scheduler, --max-context
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    models = {"fine-tuned": load_pipeline(args.checkpoint)}
    if args.base:
        models["base"] = load_pipeline(args.base)
    for pipe in models.values():
        pipe.set_progress_bar_config(disable=True)
    seqs = sequences(args.source or DEFAULT_SOURCE[args.task], args.sequences, min(args.ks) + 1)
    params = from_arguments(args)
    results = evaluate(models, seqs, args.ks, params)
    print(table(results))
    out = Path(args.out or f"runs/eval-{args.task}-{Path(args.checkpoint).name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "parameters": params.to_json(), "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
