"""The paper's MIS recipe: each caption rendered K times by a text-to-image model, only the initial noise varying.

    python -m train.data.mis --captions cc12m.tsv --out data/mis --limit 100000
    accelerate launch --num_processes 8 -m train.data.mis --captions cc12m.tsv --out data/mis

Input: plain text (one caption per line) or TSV such as Conceptual 12M's (`url<TAB>caption`;
`--caption-column` picks the column). Output: webdataset shards (`train.data.shards`), one sample per
set: the K images, the caption, and a JSON of the seeds and settings. Finished shards are
skipped, so a stopped run resumes; under `accelerate launch` each process takes its own shards.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])
from train.data.shards import write_shards

DEFAULT_MODEL = "stabilityai/stable-diffusion-2-1-base"


def read_captions(path: str | Path, column: int = -1, limit: int | None = None) -> list[str]:
    """Captions from a text file (one per line) or a TSV (`column` of each row); blank ones are dropped."""
    path = Path(path)
    captions: list[str] = []
    with path.open(encoding="utf-8", newline="") as f:
        rows = (
            csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if path.suffix == ".tsv" else ([line] for line in f)
        )
        for row in rows:
            text = (row[column] if row else "").strip()
            if text:
                captions.append(text)
            if limit is not None and len(captions) >= limit:
                break
    if not captions:
        raise ValueError(f"{path}: no captions")
    return captions


def image_seeds(seed: int, index: int, k: int) -> list[int]:
    """Seeds of the K renders of caption `index`: they are all that differs within a set."""
    return [int(s) for s in np.random.SeedSequence([seed, index]).generate_state(k)]


class Renderer:
    """Renders sets with any diffusers text-to-image pipeline."""

    def __init__(self, pipe, captions: list[str], k: int, steps: int, guidance: float, size: int, seed: int):
        self.pipe, self.captions, self.k = pipe, captions, k
        self.steps, self.guidance, self.size, self.seed = steps, guidance, size, seed

    @torch.no_grad()
    def __call__(self, index: int) -> dict:
        seeds = image_seeds(self.seed, index, self.k)
        images = self.pipe(
            prompt=[self.captions[index]] * self.k,
            generator=[torch.Generator().manual_seed(s) for s in seeds],  # CPU noise: the same on any device
            num_inference_steps=self.steps, guidance_scale=self.guidance, height=self.size, width=self.size,
        ).images  # fmt: skip
        settings = {"pipeline": self.pipe.name_or_path, "steps": self.steps, "guidance": self.guidance,
                    "size": self.size, "scheduler": type(self.pipe.scheduler).__name__}  # fmt: skip
        return {
            "key": f"mis-{index:09d}",
            "images": images,
            "meta": {"caption": self.captions[index], "seeds": seeds, "settings": settings},
        }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--captions", required=True, help="captions file: .txt (one per line) or .tsv")
    p.add_argument("--caption-column", type=int, default=-1, help="TSV column of the caption (default: last)")
    p.add_argument("--out", required=True)
    p.add_argument("--model", default=DEFAULT_MODEL, help="any diffusers text-to-image pipeline, hub id or folder")
    p.add_argument("--images-per-set", type=int, default=25, help="the paper: 25")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--sets-per-shard", type=int, default=100)
    p.add_argument("--limit", type=int, default=None, help="use the first N captions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp16")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from accelerate import PartialState
    from diffusers import DiffusionPipeline

    args = parse_args(argv)
    state = PartialState()  # one process, or one per GPU under `accelerate launch`
    try:
        captions = read_captions(args.captions, args.caption_column, args.limit)
    except (OSError, ValueError, IndexError) as err:
        print(f"mis: error: {err}", file=sys.stderr)
        return 2
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    if state.device.type == "cpu":
        dtype = torch.float32
    pipe = DiffusionPipeline.from_pretrained(args.model, dtype=dtype).to(state.device)
    pipe.set_progress_bar_config(disable=True)
    render = Renderer(pipe, captions, args.images_per_set, args.steps, args.guidance, args.size, args.seed)
    paths = write_shards(
        args.out, "mis", len(captions), args.sets_per_shard, 1, render, state.process_index, state.num_processes
    )
    print(f"[rank {state.process_index}] {len(paths)} shard(s) in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
