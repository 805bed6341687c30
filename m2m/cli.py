"""Command line: `python -m m2m generate ...` continues a set of images; `python -m m2m init ...` builds a preset."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from PIL import PngImagePlugin
from tqdm import tqdm

from m2m.attention import VARIANTS
from m2m.images import ImageInputError, file_sha256, load_image
from m2m.loading import (
    CHECKPOINT_DIR_ENV,
    TASKS,
    CheckpointError,
    checkpoint_dir,
    checkpoint_task,
    load_pipeline,
    task_checkpoint,
)
from m2m.sampling import SamplingParams, add_arguments, count, from_arguments
from m2m.sets import write_zip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m m2m", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate images that continue the given ones")
    gen.add_argument(
        "--checkpoint",
        default=None,
        help="pipeline folder or hub id (default: the embedded model for --variant and --task)",
    )
    gen.add_argument(
        "--checkpoint-dir",
        default=None,
        help=f"where --variant/--task find the embedded models (default: ${CHECKPOINT_DIR_ENV}, else checkpoints/ "
        "of the source checkout)",
    )
    gen.add_argument("--variant", choices=VARIANTS, default=None, help="embedded model: M2M-Self or M2M-DINO")
    gen.add_argument(
        "--task",
        choices=sorted(TASKS),
        default=None,
        help="embedded model's task mode: general, nvs (novel views), procedure (next steps)",
    )
    gen.add_argument("--context", nargs="*", default=[], metavar="IMAGE", help="preceding images, in order")
    gen.add_argument("--num-images", type=count(1), default=4)
    add_arguments(gen)  # --steps, --guidance, --seed, --scheduler, --max-context: SamplingParams
    gen.add_argument("--no-cache", action="store_true", help="recompute the context at every step (the paper's way)")
    gen.add_argument("--device", default="cpu")
    gen.add_argument("--out", default=None, help="output folder (default: outputs/set-<time>)")

    init = sub.add_parser("init", help="save a preset's architecture with random weights (a training start point)")
    init.add_argument("--preset", default="tiny")
    init.add_argument("--variant", choices=VARIANTS, default="self")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--fp16", action="store_true", help="store weights in half precision")
    init.add_argument("--out", required=True)
    return parser.parse_args(argv)


def resolve_checkpoint(args: argparse.Namespace) -> None:
    """--checkpoint, or the embedded model of --variant (default self) and --task (default general) in its folder."""
    if args.checkpoint is not None and (args.variant or args.task or args.checkpoint_dir):
        raise ValueError("give either --checkpoint or --variant/--task/--checkpoint-dir (an embedded model), not both")
    if args.checkpoint is None:
        args.task = args.task or "general"
        folder = task_checkpoint(args.checkpoint_dir or checkpoint_dir(), args.variant or "self", args.task)
        if not folder.is_dir():  # a wheel leaves the ~60 MB checkpoints/ out: say where to point instead
            raise ValueError(f"no embedded model at {folder}: give --checkpoint PATH, or --checkpoint-dir (or "
                             f"{CHECKPOINT_DIR_ENV}) = the checkpoints/ folder of a source checkout")  # fmt: skip
        args.checkpoint = str(folder)
    elif Path(args.checkpoint).is_dir():
        args.task = checkpoint_task(args.checkpoint)


def generate(args: argparse.Namespace) -> int:
    resolve_checkpoint(args)
    context = [load_image(p) for p in args.context]  # fails early, before the model loads
    pipe = load_pipeline(args.checkpoint, device=args.device)
    out = Path(args.out or f"outputs/set-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    params = from_arguments(args)
    manifest = make_manifest(args, pipe.variant, params)
    bar = tqdm(total=args.num_images * params.steps, desc="generating", unit="step")
    results = pipe.generate_iter(context, num_images=args.num_images, context_cache=not args.no_cache,
                                 on_step=bar.update, params=params)  # fmt: skip
    try:
        for result in results:
            name = f"image_{result.index:03d}.png"
            result.image.save(out / name, pnginfo=png_info(manifest, result))
            manifest["images"].append({"file": name, "index": result.index, "seed": result.seed})
            write_outputs(out, manifest)  # after every image: a stop keeps what is done
    except KeyboardInterrupt:
        print(f"\nstopped: kept {len(manifest['images'])} image(s) in {out}", file=sys.stderr)
        return 130
    finally:
        bar.close()
    print(f"wrote {len(manifest['images'])} image(s), manifest.json and set.zip to {out}")
    return 0


def make_manifest(args: argparse.Namespace, variant: str, params: SamplingParams) -> dict:
    """What made the set: SamplingParams.from_json reads its `parameters` back."""
    return {
        "checkpoint": str(args.checkpoint),
        "variant": variant,
        "task": args.task,  # None: a checkpoint given by path that does not say
        "parameters": {"num_images": args.num_images, **params.to_json(), "context_cache": not args.no_cache},
        "context": [{"file": str(p), "sha256": file_sha256(p)} for p in args.context],
        "images": [],
    }


def png_info(manifest: dict, result) -> PngImagePlugin.PngInfo:
    """The parameters inside each PNG, so a lone file still says how it was made."""
    info = PngImagePlugin.PngInfo()
    meta = {k: manifest[k] for k in ("checkpoint", "variant", "task", "parameters")}
    info.add_text("m2m", json.dumps({**meta, "index": result.index, "seed": result.seed}))
    return info


def write_outputs(out: Path, manifest: dict) -> None:
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    write_zip(out / "set.zip", {e["file"]: out / e["file"] for e in manifest["images"]}, manifest)


def init(args: argparse.Namespace) -> int:
    import torch

    from m2m.presets import build_pipeline

    pipe = build_pipeline(args.preset, args.variant, seed=args.seed)
    if args.fp16:
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                module.half()
    pipe.save_pretrained(args.out)
    print(f"saved a randomly initialised {args.preset} M2M-{args.variant} pipeline to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_loading()
    try:
        return generate(args) if args.command == "generate" else init(args)
    except (ImageInputError, CheckpointError, ValueError, OSError) as err:
        print(f"m2m: error: {err}", file=sys.stderr)
        return 2


def quiet_loading() -> None:
    """No loading bars from diffusers/transformers in a CLI: ours is the one that matters."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
