"""How fast does an autoencoder learn colour on open sets? The chroma error of its round trip per step.

A diagnostic for the colour-blind tiny autoencoder (docs/open-sets.md): the tiny AutoencoderKL,
with config overrides, against a plain convolutional autoencoder of the same depth, trained alike
(64x64 open sets, 32 images a step, MSE) and scored on the same 16 held-out images. A grey output
scores the data's chroma variance (about 0.035); a score below that means colour is being learnt.

    python bench/autoencoder_colour.py --model kl --steps 200
    python bench/autoencoder_colour.py --model kl --overrides '{"latent_channels": 8}'
    python bench/autoencoder_colour.py --model plain --norm group
    python bench/autoencoder_colour.py --model colour     # m2m/autoencoder.py: the fix
    python bench/autoencoder_colour.py --task encode-mean [--drop-out-norm encoder]   # can the encoder carry colour?
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import Tensor, nn

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[1])
from m2m.autoencoder import ColourAutoencoderKL
from m2m.presets import TINY
from train.data.open_sets import OpenBatches


class PlainAutoencoder(nn.Module):
    """Three stride-2 convs down to 4 channels and back up: no resnets, no attention, no KL."""

    def __init__(self, group_norm: bool):
        super().__init__()

        def block(c_in: int, c_out: int, *pre: nn.Module) -> list[nn.Module]:
            return [*pre, nn.Conv2d(c_in, c_out, 3, 1 if pre else 2, 1), nn.GroupNorm(2, c_out) if group_norm
                    else nn.Identity(), nn.SiLU()]  # fmt: skip

        self.encoder = nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 64), nn.Conv2d(64, 4, 1))
        up = nn.Upsample(scale_factor=2)
        self.decoder = nn.Sequential(*block(4, 64, nn.Identity()), *block(64, 64, up), *block(64, 32, up), up,
                                     nn.Conv2d(32, 3, 3, 1, 1))  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


def round_trip(model: nn.Module, x: Tensor) -> Tensor:
    if isinstance(model, AutoencoderKL):
        return model.decode(model.encode(x).latent_dist.mode()).sample
    return model(x)


def block_mean(x: Tensor) -> Tensor:
    """Images (N, 3, H, W) -> (N, 4, H/8, W/8): each 8x8 block's mean colour and a zero channel."""
    mean = F.avg_pool2d(x, 8)
    return torch.cat([mean, torch.zeros_like(mean[:, :1])], 1)


def output_and_target(model: nn.Module, x: Tensor, task: str) -> tuple[Tensor, Tensor]:
    """round-trip: the reconstruction of x. encode-mean: the encoder alone, taught a linear map (the block mean)."""
    if task == "encode-mean":
        return model.encode(x).latent_dist.mode(), block_mean(x)
    return round_trip(model, x), x


def chroma_error(model: nn.Module, x: Tensor, task: str) -> float:
    """MSE of the colour apart from lightness (each pixel minus its channel mean), on held-out images."""
    with torch.no_grad():
        out, target = output_and_target(model, x, task)
    out, target = out[:, :3].clamp(-1, 1), target[:, :3]
    return F.mse_loss(out - out.mean(1, keepdim=True), target - target.mean(1, keepdim=True)).item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["kl", "colour", "plain"], default="kl", help="colour: ColourAutoencoderKL")
    p.add_argument("--overrides", default="{}", help="JSON overrides of the tiny AutoencoderKL config")
    p.add_argument("--norm", choices=["group", "none"], default="none", help="plain model: GroupNorm(2) or none")
    p.add_argument("--task", choices=["round-trip", "encode-mean"], default="round-trip")
    p.add_argument("--drop-out-norm", choices=["encoder", "decoder"], nargs="*", default=[],
                   help="kl: replace the GroupNorm before conv_out of these halves by the identity")  # fmt: skip
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--every", type=int, default=50)
    args = p.parse_args()
    torch.manual_seed(0)
    if args.model in ("kl", "colour"):
        cls = AutoencoderKL if args.model == "kl" else ColourAutoencoderKL
        model = cls(**{**TINY.vae, **json.loads(args.overrides)})
        for half in args.drop_out_norm:
            getattr(model, half).conv_norm_out = nn.Identity()
    else:
        model = PlainAutoencoder(args.norm == "group")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    data = OpenBatches("train", 8, 4, 4, "cpu", size=64).iterate(0)
    held = OpenBatches("heldout", 16, 1, 1, "cpu", size=64).batch(0)["pixels"][:, 0]  # (16, 3, 64, 64)
    print(f"step 0: chroma error {chroma_error(model, held, args.task):.4f}")
    start = time.monotonic()
    for step in range(1, args.steps + 1):
        x = next(data)["pixels"].flatten(0, 1)  # (32, 3, 64, 64)
        loss = F.mse_loss(*output_and_target(model, x, args.task))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % args.every == 0:
            error = chroma_error(model, held, args.task)
            print(f"step {step}: chroma error {error:.4f} ({time.monotonic() - start:.0f} s)")


if __name__ == "__main__":
    main()
