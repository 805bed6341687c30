"""Does an autoencoder pass any image through? PSNR and own-set colour retrieval of its round trip.

    python -m train.evaluation.check_autoencoder --vae checkpoints/m2m-self-tiny/vae runs/open/vae-open

For each source, the first `--context` images of every set are kept as they are and the others go
through the autoencoder (posterior mean, as the pipeline encodes); colour retrieval asks whether
each round-tripped image is still nearest, by colour histogram, to its own set's untouched images
among `min(16, sets)` sets. A diffusion model behind this autoencoder can do no better.
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
from train.evaluation.set_metrics import colour_histograms, own_set_retrieval


@torch.no_grad()
def check(vae: AutoencoderKL, sets: list[list], context: int) -> dict[str, float]:
    size = vae.config.sample_size
    pixels = torch.stack([to_tensor([to_model_size(img, size) for img in s]) for s in sets])  # (S, K, 3, H, W)
    truth = pixels[:, context:].flatten(0, 1)
    recon = torch.cat([vae.decode(vae.encode(c).latent_dist.mode()).sample.clamp(-1, 1) for c in truth.split(32)])
    mse = ((recon - truth) / 2).pow(2).mean((1, 2, 3))
    hist = colour_histograms(pixels[:, :context].flatten(0, 1)).unflatten(0, (len(sets), context))
    group = min(16, len(sets))
    rt = colour_histograms(recon).unflatten(0, (len(sets), -1))
    orig = colour_histograms(truth).unflatten(0, (len(sets), -1))
    return {
        "psnr": float((10 * torch.log10(1 / mse)).mean()),
        "colour_retrieval_round_trip": own_set_retrieval(rt, hist, group),
        "colour_retrieval_truth": own_set_retrieval(orig, hist, group),
        "sets": len(sets),
        "group": group,
    }


def images_of(source: str, n_sets: int, length: int) -> list[list]:
    return [to_pil(to_tensor(r["images"][:length])) for r in load_sets(source, n_sets, length)]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae", nargs="+", required=True, help="AutoencoderKL folders")
    p.add_argument("--data", nargs="+", default=["open:heldout", "open:hard", "folders:examples/zero-shot"])
    p.add_argument("--sets", type=int, default=32)
    p.add_argument("--context", type=int, default=3)
    p.add_argument("--length", type=int, default=4, help="images per set (the photos have 4)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    sets = {src: images_of(src, args.sets, args.length) for src in args.data}
    results = {}
    for folder in args.vae:
        vae = load_autoencoder(folder, torch_dtype=torch.float32).eval()
        results[folder] = {src: check(vae, s, args.context) for src, s in sets.items()}
    print("| autoencoder | data | sets | PSNR dB | colour retrieval, round trip | colour retrieval, truth |")
    print("|---|---|---|---|---|---|")
    for folder, per in results.items():
        for src, r in per.items():
            print(f"| {folder} | {src} | {r['sets']} (of {r['group']}) | {r['psnr']:.2f} | "
                  f"{r['colour_retrieval_round_trip']:.3f} | {r['colour_retrieval_truth']:.3f} |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
