"""Images/s of the open-set renderer (torch, batches) against MIS-synth's drawing (PIL, one set at a time).

The two alternate in every repeat, on the same threads, so that a slow phase of a shared machine
hits both alike; the ratio is the median of the paired ratios. The time of drawing a batch's
parameters alone (`draw_sets`, without rendering) is timed in the same repeats, beside the per-set
generators it replaced (bench/per_set_draws.py, on the CPU, one set at a time).

    python bench/set_drawing.py --threads 1 --repeats 5
    python bench/set_drawing.py --device cuda --batch-sets 128
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[1])
from bench.per_set_draws import draw_sets as per_set_draw_sets
from train.data import synth
from train.data.open_sets import OpenSets, draw_sets
from train.data.sprites import load_sprites


def synchronised(device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter()


def open_rate(sets: OpenSets, start: int, n: int, k: int, device: str) -> float:
    begin = synchronised(device)
    sets.batch(range(start, start + n), k, device)
    return n * k / (synchronised(device) - begin)


def draw_time(sets: OpenSets, start: int, n: int, k: int, device: str, per_set: bool = False) -> float:
    """Seconds to draw the parameters of n sets of k images (no rendering), batched or by the replaced per-set code."""
    n_sprites = 0 if sets.sprites is None else sets.sprites.shape[0]
    begin = synchronised(device)
    if per_set:
        per_set_draw_sets(sets.split, list(range(start, start + n)), k, sets.seed, n_sprites)
    else:
        draw_sets(sets.split, range(start, start + n), k, sets.seed, n_sprites, device)
    return synchronised(device) - begin


def synth_rate(start: int, n: int, k: int) -> float:
    begin = time.perf_counter()
    for i in range(start, start + n):
        synth.set_record("train", i, k)
    return n * k / (time.perf_counter() - begin)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-sets", type=int, default=32)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sets = OpenSets("train", sprites=load_sprites("train"))
    open_rate(sets, 10**6, 4, args.k, args.device)  # warm-up
    draw_time(sets, 10**6, args.batch_sets, args.k, args.device)
    draw_time(sets, 10**6, args.batch_sets, args.k, args.device, per_set=True)
    rows = []
    for r in range(args.repeats):
        start, n = r * args.batch_sets, args.batch_sets
        rows.append((open_rate(sets, start, n, args.k, args.device), synth_rate(start, 8, args.k),
                     draw_time(sets, start, n, args.k, args.device),
                     draw_time(sets, start, n, args.k, args.device, per_set=True)))  # fmt: skip
    o, s = statistics.median(x[0] for x in rows), statistics.median(x[1] for x in rows)
    ratio = statistics.median(x[0] / x[1] for x in rows)
    drawings = "with drawings" if sets.sprites is not None else "no drawings (no atlas)"
    print(f"{args.device}, {args.threads} thread(s), sets of {args.k}, {drawings}")
    print(f"open sets: {o:.0f} images/s (batches of {args.batch_sets}); MIS-synth: {s:.0f} images/s; ratio {ratio:.2f}")
    batched, per_set = (1000 * statistics.median(x[i] for x in rows) for i in (2, 3))
    print(f"parameters alone: batched (draw_sets) {batched:.1f} ms per batch; per-set generators (replaced) "
          f"{per_set:.1f} ms; {statistics.median(x[3] / x[2] for x in rows):.1f}x faster")  # fmt: skip


if __name__ == "__main__":
    main()
