"""Train the content and style probes on MIS-synth; report their accuracy on held-out combinations.

python -m train.train_probes --out checkpoints/probes --steps 1500
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from train import synth
from train.data import make_loader
from train.probes import Probe


def flatten(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of sets -> images (B*K, 3, H, W) with each image's set labels."""
    k = batch["pixels"].shape[1]
    return batch["pixels"].flatten(0, 1), batch["content"].repeat_interleave(k), batch["style"].repeat_interleave(k)


@torch.no_grad()
def accuracy(probe: Probe, split: str, n_sets: int, workers: int) -> dict[str, float]:
    probe.eval()
    hits = {"content": 0, "style": 0}
    total = 0
    for batch in make_loader(f"synth:{split}", 32, 4, 4, workers=workers, n_sets=n_sets, shuffle=False, seed=1):
        x, content, style = flatten(batch)
        c_logits, s_logits = probe(x)
        hits["content"] += (c_logits.argmax(1) == content).sum().item()
        hits["style"] += (s_logits.argmax(1) == style).sum().item()
        total += len(x)
    return {k: v / total for k, v in hits.items()}


def train(steps: int, batch_sets: int, lr: float, workers: int, seed: int) -> Probe:
    torch.manual_seed(seed)
    probe = Probe(len(synth.CLASSES), len(synth.STYLES))
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1))))
    loader = make_loader("synth:train", batch_sets, 4, 4, workers=workers, n_sets=steps * batch_sets, seed=seed)
    bar = tqdm(loader, total=steps, desc="probes")
    for batch in bar:
        x, content, style = flatten(batch)
        c_logits, s_logits = probe(x)
        loss = F.cross_entropy(c_logits, content) + F.cross_entropy(s_logits, style)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return probe.eval()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="checkpoints/probes")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-sets", type=int, default=16, help="sets of 4 images per step")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-sets", type=int, default=300)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    probe = train(args.steps, args.batch_sets, args.lr, args.workers, args.seed)
    heldout = accuracy(probe, "heldout", args.eval_sets, args.workers)
    print(f"held-out accuracy (unseen class-style combinations): {heldout}")
    probe.save(args.out, {"heldout_accuracy": heldout, "train_steps": args.steps, "command": vars(args)})


if __name__ == "__main__":
    main()
