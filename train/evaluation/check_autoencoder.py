"""Does an autoencoder pass any image through? PSNR and own-set colour and shape retrieval of its round trip.

    python -m train.evaluation.check_autoencoder --vae checkpoints/vae-tiny-open runs/open/vae-open

For each source, the first `--context` images of every set are kept as they are and the others go
through the autoencoder (posterior mean, as the pipeline encodes); colour retrieval asks whether
each round-tripped image is still nearest, by colour histogram, to its own set's untouched images
among `min(16, sets)` sets, and shape retrieval asks the same of the set embedder (set_metrics.py).
A diffusion model behind this autoencoder can do no better. For scale, the same images saved as
JPEG at quality 95, a change no one sees, are scored too: the metrics' own noise floor.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])
from m2m.autoencoder import load_autoencoder
from m2m.images import to_model_size, to_pil, to_tensor
from train.evaluation.evaluate import load_sets
from train.evaluation.set_metrics import DEFAULT_EMBEDDER, SetMetrics, as_jpeg


@torch.no_grad()
def check(vae: AutoencoderKL, sets: list[list], context: int, metrics: SetMetrics) -> dict[str, float]:
    """PSNR of the round trip of each set's images after `context`, and their colour and shape retrievals."""
    size = vae.config.sample_size
    pixels = torch.stack([to_tensor([to_model_size(img, size) for img in s]) for s in sets])  # (S, K, 3, H, W)
    truth = pixels[:, context:]  # (S, n, 3, H, W)
    flat = truth.flatten(0, 1)
    recon = torch.cat([vae.decode(vae.encode(c).latent_dist.mode()).sample.clamp(-1, 1) for c in flat.split(32)])
    mse = ((recon - flat) / 2).pow(2).mean((1, 2, 3))
    contexts = [to_pil(c) for c in pixels[:, :context]]
    round_trip = metrics(contexts, [to_pil(r) for r in recon.unflatten(0, truth.shape[:2])])
    true = metrics(contexts, [to_pil(t) for t in truth])
    jpeg = metrics(contexts, [[as_jpeg(img, 95) for img in to_pil(t)] for t in truth])
    return {
        "psnr": float((10 * torch.log10(1 / mse)).mean()),
        **{f"{m}_retrieval_{name}": r[f"{m}_retrieval"]
           for name, r in [("round_trip", round_trip), ("truth", true), ("jpeg95", jpeg)] for m in ("colour", "shape")},
        "sets": len(sets),
        "group": metrics.group,
    }  # fmt: skip


def images_of(source: str, n_sets: int, length: int) -> list[list]:
    sets = [to_pil(to_tensor(r["images"][:length])) for r in load_sets(source, n_sets, length)]
    if not sets:
        raise ValueError(f"{source} has no set of {length} images: lower --length (the photos have 4)")
    return sets


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae", nargs="+", required=True, help="AutoencoderKL folders")
    p.add_argument("--data", nargs="+", default=["open:heldout", "open:hard", "folders:examples/zero-shot"])
    p.add_argument("--sets", type=int, default=32)
    p.add_argument("--context", type=int, default=3)
    p.add_argument("--length", type=int, default=4, help="images per set (the photos have 4)")
    p.add_argument("--embedder", default=str(DEFAULT_EMBEDDER), help="the set embedder of the shape retrieval")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    sets = {src: images_of(src, args.sets, args.length) for src in args.data}
    embedder, results = SetMetrics.load(args.embedder).embedder, {}
    for folder in args.vae:
        vae = load_autoencoder(folder, torch_dtype=torch.float32).eval()
        results[folder] = {
            src: check(vae, s, args.context, SetMetrics(embedder, min(16, len(s)))) for src, s in sets.items()
        }
    print("| autoencoder | data | sets | PSNR dB | colour retrieval: round trip (truth; JPEG q95) "
          "| shape: round trip (truth; JPEG q95) |\n|---|---|---|---|---|---|")  # fmt: skip
    for folder, per in results.items():
        for src, r in per.items():
            print(f"| {folder} | {src} | {r['sets']} (of {r['group']}) | {r['psnr']:.2f} | "
                  f"{r['colour_retrieval_round_trip']:.3f} ({r['colour_retrieval_truth']:.3f}; "
                  f"{r['colour_retrieval_jpeg95']:.3f}) | {r['shape_retrieval_round_trip']:.3f} "
                  f"({r['shape_retrieval_truth']:.3f}; {r['shape_retrieval_jpeg95']:.3f}) |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
