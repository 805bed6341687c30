"""Train the set embedder (`train/evaluation/set_embedder.py`) for the label-free shape metrics.

The network maps an image's colour-free view (luminance under random channel weights, sometimes
inverted, and its gradient magnitude) to a unit vector; it is trained contrastively on open sets
(`train/data/open_sets.py`): two images of one set close, images of other sets far (InfoNCE,
Oord et al. 2018 / SimCLR's NT-Xent, each set its own class). Colour cannot help it: the random
channel weights change an image's grey levels from view to view, so only shape, layout,
rendering and background pattern are left.

    python -m train.training.set_embedder --out checkpoints/set-embedder --steps 3000 --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.optimization import get_cosine_schedule_with_warmup
from torch import Tensor
from tqdm import tqdm

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])
from m2m.sets import atomic_folder
from train.data.open_sets import OpenBatches
from train.data.sprites import load_sprites
from train.evaluation.set_embedder import SetEmbedder, colour_free


def random_view(pixels: Tensor, gen: torch.Generator | None = None) -> Tensor:
    """A colour-free view with random channel weights and inversion (training)."""
    n = pixels.shape[0]
    weights = torch.rand(n, 3, generator=gen).to(pixels.device) + 0.05
    weights = weights / weights.sum(1, keepdim=True)
    invert = (torch.rand(n, generator=gen) < 0.5).to(pixels.device)
    return colour_free(pixels, weights, invert)


def info_nce(a: Tensor, b: Tensor, temperature: float = 0.1) -> Tensor:
    """Two views (B, D) of B sets: row i of `a` must pick row i of `b` among all rows, and back."""
    logits = a @ b.T / temperature  # (B, B)
    target = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@torch.no_grad()
def retrieval(model: SetEmbedder, pixels: Tensor) -> float:
    """Own-set retrieval among the sets of `pixels` (S, K, 3, H, W): image k=last against the others' means."""
    s, k = pixels.shape[:2]
    emb = model.embed(pixels.flatten(0, 1)).unflatten(0, (s, k))  # (S, K, D)
    protos = F.normalize(emb[:, :-1].mean(1), dim=1)  # (S, D)
    return float(((emb[:, -1] @ protos.T).argmax(1) == torch.arange(s)).float().mean())


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    model = SetEmbedder().to(args.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    sched = get_cosine_schedule_with_warmup(opt, args.steps // 20, args.steps)
    data = OpenBatches("train", args.batch_sets, 2, 2, args.device, seed=args.seed, sprites=load_sprites("train"))
    held = {s: OpenBatches(s, 16, 5, 5, "cpu", seed=99, sprites=load_sprites(s)) for s in ("heldout", "hard")}
    held = {s: torch.cat([b.batch(i)["pixels"] for i in range(4)]) for s, b in held.items()}  # 64 sets each
    gen, started, metrics = torch.Generator().manual_seed(args.seed), time.monotonic(), {}
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=args.device == "cuda")
    steps = tqdm(range(1, args.steps + 1), desc="set embedder")
    for step, batch in zip(steps, data.iterate(0), strict=False):
        a, b = batch["pixels"].unbind(1)  # (B, 3, H, W) each: two images of every set
        with autocast:
            loss = info_nce(model(random_view(a, gen)).float(), model(random_view(b, gen)).float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        steps.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        late = args.minutes is not None and time.monotonic() - started > 60 * args.minutes
        if step % args.eval_every == 0 or step == args.steps or late:
            metrics = {
                "step": step,
                "loss": loss.item(),
                **{f"retrieval_64_{s}": retrieval(model, x) for s, x in held.items()},
            }
            model.train()
            save(model, Path(args.out), {**metrics, "command": vars(args)})
            tqdm.write(json.dumps(metrics))
        if late:
            break
    return metrics


def save(model: SetEmbedder, out: Path, metrics: dict) -> None:
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/set-embedder")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-sets", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--minutes", type=float, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    return train(p.parse_args(argv))


if __name__ == "__main__":
    main()
