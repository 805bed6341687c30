"""Pretrain the tiny M2M-DINO image encoder (a `transformers.Dinov2Model`) by DINO self-distillation on MIS-synth.

    python -m train.training.encoder --out runs/dino-tiny --steps 600

At full scale the encoder is facebook/dinov2-base, pretrained and frozen; this script makes
its tiny stand-in the same way, with no labels: a student sees 2 global and several local
crops of an image and learns to match a momentum teacher's output on the global crops
(Caron et al. 2021: centred and sharpened teacher, cross-entropy, EMA teacher). The crops
vary position, scale and mirroring but never colour: the palette is part of the style that
M2M-DINO has to carry from the context, so the encoder must not learn to ignore it.

The teacher's backbone is saved (`Dinov2Model.from_pretrained(out)`), with `metrics.json`
holding the k-NN accuracy of its CLS features for content and style, before and after.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.optimization import get_cosine_schedule_with_warmup
from torch import Tensor, nn
from tqdm import tqdm
from transformers import Dinov2Config, Dinov2Model

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])
from m2m.encoders import dino_inputs
from m2m.presets import get_preset
from m2m.sets import atomic_folder
from train.data.loader import make_loader
from train.data.open_sets import OpenBatches
from train.evaluation.set_embedder import LUMA


class DinoHead(nn.Module):
    """CLS feature -> logits over `prototypes` (MLP, L2-normalised bottleneck, weight-normalised last layer)."""

    def __init__(self, dim: int, prototypes: int = 1024, hidden: int = 512, bottleneck: int = 128):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))  # fmt: skip
        self.last = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, prototypes, bias=False))

    def forward(self, cls: Tensor) -> Tensor:
        return self.last(F.normalize(self.mlp(cls), dim=-1))  # (N, prototypes)


class Student(nn.Module):
    def __init__(self, backbone: Dinov2Model, head: DinoHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(pixel_values=x).pooler_output)  # CLS after the final norm


def random_crops(pixels: Tensor, n: int, size: int, scale: tuple[float, float], gen: torch.Generator) -> Tensor:
    """n random resized crops (area fraction in `scale`), randomly mirrored, of each image (N, 3, H, W)."""
    _, _, h, w = pixels.shape
    out = []
    for _ in range(n):
        for img in pixels:
            area = float(torch.empty(()).uniform_(*scale, generator=gen))
            ratio = math.exp(float(torch.empty(()).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen)))
            ch = min(h, round(h * math.sqrt(area / ratio)))
            cw = min(w, round(w * math.sqrt(area * ratio)))
            y = int(torch.randint(0, h - ch + 1, (), generator=gen))
            x = int(torch.randint(0, w - cw + 1, (), generator=gen))
            crop = img[None, :, y : y + ch, x : x + cw]
            crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            out.append(crop.flip(3) if torch.rand((), generator=gen) < 0.5 else crop)
    return torch.cat(out)  # (n*N, 3, size, size), view-major


def dino_loss(student: list[Tensor], teacher: list[Tensor], center: Tensor, t_student: float, t_teacher: float):
    """Cross-entropy of every student view against every *other* teacher (global) view."""
    targets = [F.softmax((t - center) / t_teacher, -1) for t in teacher]
    losses = [
        -(q * F.log_softmax(s / t_student, -1)).sum(-1).mean()
        for iq, q in enumerate(targets)
        for iv, s in enumerate(student)
        if iv != iq
    ]
    return sum(losses) / len(losses)


@torch.no_grad()
def features(backbone: Dinov2Model, pixels: Tensor, size: int) -> Tensor:
    backbone.eval()
    dev = backbone.device
    out = torch.cat(
        [backbone(pixel_values=dino_inputs(c.to(dev), size)).pooler_output.cpu() for c in pixels.split(128)]
    )
    backbone.train()
    return F.normalize(out, dim=-1)  # (N, D)


def knn_accuracy(bank: Tensor, bank_labels: Tensor, query: Tensor, labels: Tensor, k: int = 10) -> float:
    """Majority vote of the k nearest (cosine) bank features."""
    idx = (query @ bank.T).topk(k, dim=1).indices  # (Q, k)
    votes = bank_labels[idx].mode(dim=1).values
    return float((votes == labels).float().mean())


def labelled(source: str, n_sets: int, size: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Images of n_sets sets of 4 with their content and style labels; open sets label each image by its set."""
    batches = list(make_loader(source, 16, 4, 4, size, 0, n_sets=n_sets, shuffle=False, seed=seed))
    pixels = torch.cat([b["pixels"].flatten(0, 1) for b in batches])  # (4*n_sets, 3, H, W)
    content = torch.cat([b["content"].repeat_interleave(4) for b in batches])
    style = torch.cat([b["style"].repeat_interleave(4) for b in batches])
    if bool((content < 0).all()):  # no labels: the set is the class
        content = style = torch.arange(len(pixels)) // 4
    return pixels, content, style


def set_retrieval(feats: Tensor, sets: Tensor) -> float:
    """Leave-one-out: share of images whose nearest other image (cosine) is of their own set."""
    sim = feats @ feats.T
    sim.fill_diagonal_(-2)
    return float((sets[sim.argmax(1)] == sets).float().mean())


def grey(pixels: Tensor) -> Tensor:
    """Images (N, 3, H, W) -> their luminance in all three channels: the colour-free view of a probe."""
    return torch.einsum("c,nchw->nhw", pixels.new_tensor(LUMA), pixels)[:, None].expand(-1, 3, -1, -1)


def evaluate(backbone: Dinov2Model, bank, queries: dict, size: int) -> dict[str, float]:
    """k-NN accuracy of content and style for each query set (held-out combinations, and seen ones);
    for unlabelled (open) sets, own-set retrieval of each query image among the other query images, in
    colour and in grey: colour alone finds an open set (a random network scores 0.9 on it), so the grey
    view is the probe of what the encoder learnt (docs/open-sets.md §9)."""
    if bool((bank[1] == bank[2]).all()):
        return {
            f"set_retrieval{view}{name}": set_retrieval(features(backbone, see(q[0]), size), q[1])
            for name, q in queries.items()
            for view, see in (("", lambda x: x), ("_grey", grey))
        }
    fb = features(backbone, bank[0], size)
    out = {}
    for name, query in queries.items():
        fq = features(backbone, query[0], size)
        out[f"knn_content{name}"] = knn_accuracy(fb, bank[1], fq, query[1])
        out[f"knn_style{name}"] = knn_accuracy(fb, bank[2], fq, query[2])
    return out


def save(backbone: Dinov2Model, out: Path, metrics: dict) -> None:
    """Written to a temporary folder and renamed: a stop never leaves half a checkpoint."""
    with atomic_folder(out) as tmp:
        backbone.save_pretrained(tmp)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))


def cosine(step: int, total: int, start: float, end: float) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(step / total, 1)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/dino-tiny")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-sets", type=int, default=8, help="sets of 4 images per step")
    p.add_argument("--local-crops", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--eval-sets", type=int, default=50, help="held-out sets of 4 images (and as many train sets)")
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default="synth:train", help="synth:train or open:train (rendered on --device)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--minutes", type=float, default=None, help="stop (and save) after this long")
    return p.parse_args(argv)


def probe_sets(data: str, n_sets: int, res: int, seed: int) -> tuple[tuple, dict]:
    """The k-NN bank, and the queries: held-out class-style combinations (open: held-out sets), other seen sets."""
    kind = data.partition(":")[0]
    bank = labelled(f"{kind}:train", n_sets, res, seed + 1000)
    queries = {
        "": labelled(f"{kind}:heldout", n_sets, res, seed + 1),
        "_seen": labelled(f"{kind}:train", n_sets, res, seed + 2000),
    }
    return bank, queries


@torch.no_grad()
def update_teacher(student: Student, teacher: Student, center: Tensor, t_out: tuple, step: int, steps: int) -> None:
    """Momentum teacher and output centre (Caron et al. 2021)."""
    m = cosine(step, steps, 0.996, 1.0)
    for ps, pt in zip(student.parameters(), teacher.parameters(), strict=True):
        pt.mul_(m).add_(ps.detach(), alpha=1 - m)
    center.mul_(0.9).add_(torch.cat(t_out).mean(0, keepdim=True), alpha=0.1)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    preset = get_preset(args.preset)
    size = preset.image_encoder_size
    student = Student(Dinov2Model(Dinov2Config(**preset.image_encoder)), DinoHead(preset.image_encoder["hidden_size"]))
    teacher = copy.deepcopy(student).requires_grad_(False)
    student.to(args.device)
    teacher.to(args.device)
    center = torch.zeros(1, student.head.last.out_features, device=args.device)
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.04)
    sched = get_cosine_schedule_with_warmup(opt, max(1, args.steps // 10), args.steps)
    bank, queries = probe_sets(args.data, args.eval_sets, preset.vae["sample_size"], args.seed)
    before = evaluate(teacher.backbone, bank, queries, size)
    tqdm.write(f"random init: {before}")
    res = preset.vae["sample_size"]
    out, stream, started = Path(args.out), training_sets(args, res), time.monotonic()
    for step in (bar := tqdm(range(1, args.steps + 1), desc="encoder")):
        pixels = next(stream)["pixels"].flatten(0, 1).to(args.device)  # (N, 3, H, W) in [-1, 1]
        n = pixels.shape[0]
        glob = dino_inputs(random_crops(pixels, 2, size, (0.35, 1.0), gen), size)  # (2N, 3, s, s)
        local = dino_inputs(random_crops(pixels, args.local_crops, size // 2, (0.08, 0.35), gen), size // 2)
        with torch.no_grad():
            t_out = teacher(glob).chunk(2)
        s_out = student(glob).chunk(2) + (student(local).split(n) if args.local_crops else ())
        loss = dino_loss(list(s_out), list(t_out), center, 0.1, 0.04)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(student.parameters(), 3.0)
        opt.step()
        sched.step()
        update_teacher(student, teacher, center, t_out, step, args.steps)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        late = args.minutes is not None and time.monotonic() - started > 60 * args.minutes
        if step % args.save_every == 0 or step == args.steps or late:
            metrics = {"step": step, **evaluate(teacher.backbone, bank, queries, size), "random_init": before,
                       "command": vars(args)}  # fmt: skip
            save(teacher.backbone, out, metrics)
            tqdm.write(f"step {step}: loss {loss.item():.3f}, {metrics}")
        if late:
            break
    return metrics


def training_sets(args: argparse.Namespace, res: int):
    """Endless batches of sets of 4: open sets rendered on the device, else from the loader."""
    if args.data.startswith("open:"):
        return OpenBatches.from_source(args.data, args.batch_sets, 4, 4, args.device, seed=args.seed, size=res).iterate(
            0
        )
    return iter(make_loader(args.data, args.batch_sets, 4, 4, res, 0, n_sets=10**7, seed=args.seed))


if __name__ == "__main__":
    main()
