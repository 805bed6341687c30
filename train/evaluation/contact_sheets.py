"""Contact sheets of a checkpoint on held-out sets: one row per set, context | generated.

    python -m train.evaluation.contact_sheets --checkpoint checkpoints/m2m-self-tiny --out docs/m2m-self-tiny.png

The sets come from any source the loader reads (`--data`: MIS-synth's held-out class-style
combinations by default, or `open:heldout`, `open:hard`), or from folders of images given with
`--folders` (for example examples/zero-shot/*).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])
from m2m.images import load_image
from m2m.loading import load_pipeline
from m2m.sampling import add_arguments, from_arguments
from m2m.sets import contact_sheet, stack_rows
from train.evaluation.evaluate import load_sets


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="PNG")
    p.add_argument("--data", default="synth:heldout", help="where the sets come from (train/data/loader.py)")
    p.add_argument("--sets", type=int, default=6, help="how many sets of --data")
    p.add_argument("--folders", nargs="*", default=None, help="context folders instead of --data")
    p.add_argument("--context", type=int, default=4)
    p.add_argument("--generate", type=int, default=4)
    add_arguments(p)  # --steps, --guidance, --seed (row i: seed + i), --scheduler, --max-context
    args = p.parse_args(argv)

    pipe = load_pipeline(args.checkpoint)
    pipe.set_progress_bar_config(disable=True)
    if args.folders:
        contexts = [[load_image(f) for f in sorted(Path(d).glob("*.png"))][: args.context] for d in args.folders]
    else:
        contexts = [s["images"][: args.context] for s in load_sets(args.data, args.sets, args.context)]
    params, rows = from_arguments(args), []
    for i, ctx in enumerate(contexts):
        generated = pipe(ctx, num_images=args.generate, params=params.replace(seed=params.seed + i)).images
        rows.append(contact_sheet(ctx, generated))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stack_rows(rows).save(out)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
