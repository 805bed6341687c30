"""Measure a checkpoint on held-out sets: given the first c images, generate the next ones.

    python -m train.evaluation.evaluate --checkpoint checkpoints/m2m-self-tiny --data open:heldout --contexts 1 2 4 8
    python -m train.evaluation.evaluate --checkpoint checkpoints/m2m-self-tiny --data open:simple open:heldout \\
        --contexts 4 --sets 64 --generate 2 --steps 15 --out runs/eval-self.json  # eval-self-{simple,heldout}.json
    python -m train.evaluation.evaluate --checkpoint checkpoints/m2m-self-tiny --data folders:examples/zero-shot \\
        --sets 9

Every number comes with its floor and its ceilings, side by side:
  model        the checkpoint, given the first c images of each set
  no-context   the same checkpoint with an empty context (the floor)
  truth        the set's real next images (the ceiling)
  round-trip   the true next images through the checkpoint's autoencoder (the ceiling behind it)

Label-free metrics (the default; train/evaluation/set_metrics.py): own-set retrieval among 16 sets by colour
histogram and by the set embedder's colour-free embedding, and similarity to the context in that
embedding; `drift_*` is each retrieval at each position of the generated sequence.

With `--metrics probes` (the default for synth:), judged by the MIS-synth probes (train/training/probes.py):
content / style consistency (share of images whose predicted class / style is the context's),
image-image similarity (cosine in probe feature space, against the context), and a Fréchet
distance in probe feature space against real held-out images. `drift` is the consistency at
each position of the generated sequence. `--paper-metrics` adds the paper's FID, IS,
text-image and image-image CLIP (torchmetrics + a CLIP model, when their weights can be had).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import linalg
from tqdm import tqdm

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])
from m2m.images import to_model_size, to_pil, to_tensor
from m2m.loading import load_pipeline
from m2m.pipeline import M2MPipeline
from m2m.sampling import SamplingParams, add_arguments, from_arguments
from train.data.loader import SetDataset
from train.evaluation.probes import Probe
from train.evaluation.set_metrics import DEFAULT_EMBEDDER, SetMetrics

GROUPS = ("model", "no-context", "truth", "round-trip")


def load_sets(source: str, n_sets: int, length: int, seed: int = 0, offset: int = 0) -> list[dict]:
    """Sets `offset`..`offset + n_sets` (in order) that have at least `length` images."""
    data = SetDataset(source, n_sets=offset + n_sets, max_set=length, shuffle=False, seed=seed)
    long_enough = (r for r in data.records() if len(r["images"]) >= length)
    return list(itertools.islice(long_enough, offset, offset + n_sets))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, F): the FID formula."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # few samples make the product singular: the estimate is still defined
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(cov_a @ cov_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean.real))


@torch.no_grad()
def probe_outputs(probe: Probe, images: list[Image.Image]) -> dict[str, torch.Tensor]:
    out = probe.predict(to_tensor([to_model_size(img, 128) for img in images]))
    return {**out, "unit": torch.nn.functional.normalize(out["features"], dim=1)}


def majority(labels: torch.Tensor) -> int:
    return int(torch.mode(labels).values)


def probe_metrics(probe: Probe, contexts: list[list], outputs: list[list], reference: list) -> dict:
    """Consistency with each set's context, similarity to it, drift per position, Fréchet distance to real images."""
    hits = {"content": [], "style": []}
    sims = []
    for ctx, gen in zip(contexts, outputs, strict=True):
        c, g = probe_outputs(probe, ctx), probe_outputs(probe, gen)
        for key in hits:
            hits[key].append((g[key] == majority(c[key])).float())  # (n_gen,)
        sims.append((g["unit"] @ c["unit"].T).mean())
    feats = torch.cat([probe_outputs(probe, gen)["features"] for gen in outputs]).numpy()
    ref = probe_outputs(probe, reference)["features"].numpy()
    per_position = {k: torch.stack(v).mean(0) for k, v in hits.items()}
    return {
        "content_consistency": float(torch.stack(hits["content"]).mean()),
        "style_consistency": float(torch.stack(hits["style"]).mean()),
        "similarity": float(torch.stack(sims).mean()),
        "frechet_probe": frechet_distance(feats, ref),
        "drift_content": [round(float(x), 4) for x in per_position["content"]],
        "drift_style": [round(float(x), 4) for x in per_position["style"]],
    }


@torch.no_grad()
def round_trip(pipe: M2MPipeline, images: list[Image.Image]) -> list[Image.Image]:
    """The images through the pipeline's autoencoder (posterior mean): what a perfect diffusion model could give."""
    pixels = to_tensor([to_model_size(img, pipe.vae.config.sample_size) for img in images]).to(
        pipe.vae.device, pipe.vae.dtype
    )
    decoded = pipe.vae.decode(pipe.vae.encode(pixels).latent_dist.mode()).sample.clamp(-1, 1)
    return to_pil(decoded.float().cpu())


def set_scores(metrics: SetMetrics, contexts: list[list], outputs: list[list], reference: list) -> dict:
    """Label-free: colour and shape own-set retrieval, similarity, and both retrievals per position (drift)."""
    return metrics(contexts, outputs)


def generate(pipe: M2MPipeline, sets: list[dict], c: int, n_gen: int, params: SamplingParams,
             floors: dict | None = None):  # fmt: skip
    """Per set: (context, model's next images, no-context images, true next images, their autoencoder round trip).

    Set i is sampled with seed `params.seed + i`. The no-context images of set i depend on that seed
    alone, so `floors` keeps them across context sizes.
    """
    rows, floors = [], {} if floors is None else floors
    for i, record in enumerate(tqdm(sets, desc=f"c={c}", leave=False)):
        ctx, truth = record["images"][:c], record["images"][c : c + n_gen]
        kw = dict(num_images=n_gen, params=params.replace(seed=params.seed + i))
        model = pipe(ctx, **kw).images
        if i not in floors:
            floors[i] = pipe([], **kw).images
        rows.append((ctx, model, floors[i], truth, round_trip(pipe, truth)))
    return rows


def evaluate(pipe, score, sets, reference, contexts, n_gen, params: SamplingParams) -> dict:
    """`score(contexts, outputs, reference) -> dict` for each context size and group."""
    results, floors = {}, {}
    for c in contexts:
        rows = generate(pipe, sets, c, n_gen, params, floors)
        ctxs = [r[0] for r in rows]
        results[c] = {group: score(ctxs, [r[1 + g] for r in rows], reference) for g, group in enumerate(GROUPS)}
    return results


def with_paper_metrics(score, paper, captions: list[str]):
    """`score`, and the paper's FID, IS and CLIP scores of the same outputs (`captions`: the sets')."""

    def both(contexts: list[list], outputs: list[list], reference: list) -> dict:
        return score(contexts, outputs, reference) | paper(contexts, outputs, captions, reference)

    return both


def table(results: dict) -> str:
    keys = [k for k in next(iter(next(iter(results.values())).values())) if not k.startswith("drift")]
    lines = ["| context | group | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for c, groups in results.items():
        for group, metrics in groups.items():
            lines.append(f"| {c} | {group} | " + " | ".join(f"{metrics[k]:.3f}" for k in keys) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--probes", default="checkpoints/probes")
    p.add_argument(
        "--data",
        "--source",
        dest="sources",
        nargs="+",
        default=["open:heldout"],
        help="open:heldout, open:simple, open:hard, synth:heldout, folders:DIR or a shard directory/glob; several "
        "are scored one after another, each into its own JSON (--out's name + '-' + the source's last part)",
    )
    p.add_argument(
        "--metrics",
        choices=["sets", "probes"],
        default=None,
        help="sets: label-free retrieval (default); probes: MIS-synth's classifiers (default for synth:)",
    )
    p.add_argument("--embedder", default=str(DEFAULT_EMBEDDER), help="the set embedder for --metrics sets")
    p.add_argument("--sets", type=int, default=50)
    p.add_argument("--contexts", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--generate", type=int, default=4, help="images generated per set (the paper: 10)")
    add_arguments(p)  # --steps, --guidance, --seed (set i: seed + i; also the sets drawn), --scheduler, ...
    p.add_argument("--paper-metrics", action="store_true", help="FID, IS, CLIP scores (needs their weights)")
    p.add_argument("--clip-model", default="openai/clip-vit-large-patch14")
    p.add_argument("--out", default=None, help="JSON results (default: runs/eval-<checkpoint>.json)")
    args = p.parse_args(argv)
    kinds = {args.metrics or ("probes" if source.startswith("synth:") else "sets") for source in args.sources}
    if "sets" in kinds and args.sets > 16 and args.sets % 16:
        p.error(f"--sets {args.sets}: set metrics score sets 16 at a time; give a multiple of 16 (or at most 16)")
    pipe = load_pipeline(args.checkpoint)
    pipe.set_progress_bar_config(disable=True)
    for source in args.sources:
        out = Path(args.out or f"runs/eval-{Path(args.checkpoint).name}.json")
        if len(args.sources) > 1:
            out = out.with_name(f"{out.stem}-{source.rstrip('/').split(':')[-1].split('/')[-1]}{out.suffix}")
        run_source(pipe, args, source, out)


def run_source(pipe: M2MPipeline, args: argparse.Namespace, source: str, out: Path) -> None:
    """Score `pipe` on one source as `args` say; print the table and write the JSON to `out`."""
    kind = args.metrics or ("probes" if source.startswith("synth:") else "sets")
    if kind == "probes":
        score = functools.partial(probe_metrics, Probe.load(args.probes))
    else:
        score = functools.partial(set_scores, SetMetrics.load(args.embedder, min(16, args.sets)))
    length = max(args.contexts) + args.generate
    sets = load_sets(source, args.sets, length, args.seed)
    reference = [img for s in load_sets(source, args.sets, length, args.seed, offset=args.sets)
                 for img in s["images"][: args.generate]]  # fmt: skip
    if args.paper_metrics:
        from train.evaluation.paper_metrics import PaperMetrics

        paper = PaperMetrics.from_pretrained(args.clip_model)
        score = with_paper_metrics(score, paper, [s["meta"].get("caption", "") for s in sets])
    params = from_arguments(args)
    results = evaluate(pipe, score, sets, reference, args.contexts, args.generate, params)
    print(f"{source}\n{table(results)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    saved_args = {**vars(args), "source": source}
    out.write_text(json.dumps({"args": saved_args, "parameters": params.to_json(), "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
