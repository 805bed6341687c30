"""Train the content and style probes on MIS-synth; report their accuracy on held-out combinations.

    python -m train.training.probes --out checkpoints/probes

The training images are drawn once into memory (a few hundred MB of uint8), then sampled with
horizontal flips: drawing them anew at every step would cost more than the training.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.optimization import get_cosine_schedule_with_warmup
from tqdm import tqdm

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])
from train.data import synth
from train.evaluation.probes import Probe


def draw(split: str, n_sets: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n_sets sets of k images: uint8 images (N, 3, H, W), content and style labels (N,)."""
    images, content, style = [], [], []
    for i in tqdm(range(n_sets), desc=f"drawing {split}", leave=False):
        record = synth.set_record(split, i, k, seed)
        images += [np.asarray(img) for img in record["images"]]
        content += [record["meta"]["labels"]["content"]] * k
        style += [record["meta"]["labels"]["style"]] * k
    return (
        torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
        torch.tensor(content),
        torch.tensor(style),
    )


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1  # (N, 3, H, W) in [-1, 1]


@torch.no_grad()
def accuracy(probe: Probe, images: torch.Tensor, content: torch.Tensor, style: torch.Tensor) -> dict[str, float]:
    probe.eval()
    out = [probe.predict(to_pixels(chunk)) for chunk in images.split(256)]
    pred_c, pred_s = torch.cat([o["content"] for o in out]), torch.cat([o["style"] for o in out])
    return {"content": (pred_c == content).float().mean().item(), "style": (pred_s == style).float().mean().item()}


def train(data, steps: int, batch: int, lr: float, seed: int) -> Probe:
    images, content, style = data
    torch.manual_seed(seed)
    probe = Probe(len(synth.CLASSES), len(synth.STYLES))
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=0.01)
    sched = get_cosine_schedule_with_warmup(opt, 0, steps)
    for step in (bar := tqdm(range(steps), desc="probes")):
        idx = torch.randint(0, len(images), (batch,))
        x = to_pixels(images[idx])
        x = x.flip(3) if step % 2 else x  # the classes and styles are mirror-invariant
        c_logits, s_logits = probe(x)
        loss = F.cross_entropy(c_logits, content[idx]) + F.cross_entropy(s_logits, style[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return probe.eval()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="checkpoints/probes")
    p.add_argument("--train-sets", type=int, default=3000, help="sets of 4 images drawn for training")
    p.add_argument("--eval-sets", type=int, default=300, help="held-out sets of 4 images")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    probe = train(draw("train", args.train_sets, 4, args.seed), args.steps, args.batch, args.lr, args.seed)
    heldout = accuracy(probe, *draw("heldout", args.eval_sets, 4, args.seed + 1))
    print(f"held-out accuracy (class-style combinations never seen in training): {heldout}")
    probe.save(args.out, {"heldout_accuracy": heldout, "command": vars(args)})


if __name__ == "__main__":
    main()
