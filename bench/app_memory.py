"""Resident memory of the demo's generate handler over many consecutive generations (should stay flat).

python bench/app_memory.py --runs 50
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

import psutil

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[1])
import app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--num-images", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--variant", default="M2M-Self", choices=list(app.VARIANTS))
    args = p.parse_args()
    models = app.Models(app.ROOT / "checkpoints")
    context = sorted(str(f) for f in (app.ROOT / "examples" / "shapes").glob("*.png"))
    process = psutil.Process()
    rss = []
    for i in range(args.runs):
        outs = app.generate(models, context, args.variant, "General", args.num_images, args.steps, 3.0, i, 0, None,
                            progress=lambda *a, **k: None)  # fmt: skip
        for _ in outs:
            pass
        gc.collect()
        rss.append(process.memory_info().rss / 2**20)
        if i == 0 or (i + 1) % 10 == 0:
            print(f"after generation {i + 1:3d}: RSS {rss[-1]:.1f} MiB")
    print(f"growth from generation 1 to {args.runs}: {rss[-1] - rss[0]:+.1f} MiB; "
          f"from 10 to {args.runs}: {rss[-1] - rss[min(9, len(rss) - 1)]:+.1f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
