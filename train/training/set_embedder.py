"""Train the set embedder (`train/evaluation/set_embedder.py`) for the label-free shape metrics.

The network maps an image's colour-free view (luminance under random channel weights, sometimes
inverted, and its gradient magnitude) to a unit vector; it is trained contrastively on open sets
(`train/data/open_sets.py`): two images of one set close, images of other sets far (InfoNCE,
Oord et al. 2018 / SimCLR's NT-Xent, each set its own class). Colour cannot help it: the random
channel weights change an image's grey levels from view to view, so only shape, layout,
rendering and background pattern are left.

Each view is also degraded at random (`--degrade`, the share of views): blurred, shrunk and grown
back, or noised, each independently of the other view of its set. Without it, the embedder leant on
pixel-exact texture: the true images saved as JPEG at quality 95 were retrieved 0.89 of the time on
`open:heldout` and 0.77 on `open:hard`, against 0.99 and 1.00 untouched (docs/open-sets.md §7), so it
scored an autoencoder's or a generator's slight blur as a change of set.

    python -m train.training.set_embedder --out checkpoints/set-embedder --steps 3000 --device cuda
    # the shipped one made robust to blur and noise, on a CPU (docs/open-sets.md §7)
    python -m train.training.set_embedder --init checkpoints/set-embedder --steps 150 --lr 5e-4 --out runs/set-embedder
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
from m2m.images import to_pil, to_tensor
from m2m.sets import atomic_folder
from train.data.open_sets import OpenBatches
from train.data.sprites import load_sprites
from train.evaluation.set_embedder import SetEmbedder, colour_free
from train.evaluation.set_metrics import as_jpeg


def random_view(pixels: Tensor, gen: torch.Generator | None = None) -> Tensor:
    """A colour-free view with random channel weights and inversion (training)."""
    n = pixels.shape[0]
    weights = torch.rand(n, 3, generator=gen).to(pixels.device) + 0.05
    weights = weights / weights.sum(1, keepdim=True)
    invert = (torch.rand(n, generator=gen) < 0.5).to(pixels.device)
    return colour_free(pixels, weights, invert)


def gaussian_blur(pixels: Tensor, sigma: float) -> Tensor:
    """Images (N, C, H, W) blurred by a separable Gaussian of this width in pixels (reflected edges)."""
    radius = max(1, round(3 * sigma))
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, device=pixels.device) / sigma) ** 2)
    taps = (taps / taps.sum()).to(pixels.dtype)
    c = pixels.shape[1]
    x = F.pad(pixels, (radius,) * 4, mode="reflect")
    x = F.conv2d(x, taps.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # along W
    return F.conv2d(x, taps.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # along H


def degrade(pixels: Tensor, share: float, gen: torch.Generator) -> Tensor:
    """Images (N, 3, H, W) in [-1, 1], `share` of them degraded at random: the losses of an autoencoder's or a
    generator's output (blur, detail lost below a coarser grid, noise), in equal parts, at a random strength."""
    n, size = pixels.shape[0], pixels.shape[-1]
    kind = torch.randint(0, 3, (n,), generator=gen)
    kind[torch.rand(n, generator=gen) >= share] = -1  # left as they are
    out = pixels.clone()
    strength = float(torch.rand((), generator=gen))  # one per batch and kind: whole-batch tensor ops
    for k, change in enumerate((
        lambda x: gaussian_blur(x, 0.5 + 1.5 * strength),
        lambda x: F.interpolate(F.interpolate(x, scale_factor=1 / (2 + 2 * strength), mode="area"), size=size,
                                mode="bilinear", align_corners=False),
        lambda x: x + (0.02 + 0.08 * strength) * torch.randn(x.shape, generator=gen).to(x.device),
    )):  # fmt: skip
        chosen = (kind == k).nonzero().flatten().to(pixels.device)
        if len(chosen):
            out[chosen] = change(pixels[chosen]).clamp(-1, 1)
    return out


def info_nce(a: Tensor, b: Tensor, temperature: float = 0.1) -> Tensor:
    """Two views (B, D) of B sets: row i of `a` must pick row i of `b` among all rows, and back."""
    logits = a @ b.T / temperature  # (B, B)
    target = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@torch.no_grad()
def retrieval(model: SetEmbedder, pixels: Tensor, query: Tensor | None = None) -> float:
    """Own-set retrieval among the sets of `pixels` (S, K, 3, H, W): image k=last (or `query`'s (S, 3, H, W))
    against the others' means."""
    s, k = pixels.shape[:2]
    emb = model.embed(pixels.flatten(0, 1)).unflatten(0, (s, k))  # (S, K, D)
    protos = F.normalize(emb[:, :-1].mean(1), dim=1)  # (S, D)
    last = emb[:, -1] if query is None else model.embed(query)  # (S, D)
    return float(((last @ protos.T).argmax(1) == torch.arange(s)).float().mean())


def as_jpegs(pixels: Tensor) -> Tensor:
    """Images (N, 3, H, W) in [-1, 1], saved as JPEG at quality 95 and read back."""
    return to_tensor([as_jpeg(img) for img in to_pil(pixels)])


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    model = (SetEmbedder.from_pretrained(args.init) if args.init else SetEmbedder()).to(args.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    sched = get_cosine_schedule_with_warmup(opt, args.steps // 20, args.steps)
    data = OpenBatches("train", args.batch_sets, 2, 2, args.device, seed=args.seed, sprites=load_sprites("train"))
    held = {s: OpenBatches(s, 16, 5, 5, "cpu", seed=99, sprites=load_sprites(s)) for s in ("heldout", "hard")}
    held = {s: torch.cat([b.batch(i)["pixels"] for i in range(4)]) for s, b in held.items()}  # 64 sets each
    gen, started, metrics = torch.Generator().manual_seed(args.seed), time.monotonic(), {}
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=args.device == "cuda")
    steps = tqdm(range(1, args.steps + 1), desc="set embedder")
    for step, batch in zip(steps, data.iterate(0), strict=False):
        a, b = (degrade(x, args.degrade, gen) for x in batch["pixels"].unbind(1))  # (B, 3, H, W): two of every set
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
                **{f"retrieval_64_{s}_jpeg95": retrieval(model, x, as_jpegs(x[:, -1])) for s, x in held.items()},
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
    p.add_argument("--init", default=None, help="a trained set embedder to go on from")
    p.add_argument("--degrade", type=float, default=0.75, help="share of views degraded (blur, coarser grid, noise)")
    return train(p.parse_args(argv))


if __name__ == "__main__":
    main()
