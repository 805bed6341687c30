"""Probe classifiers for MIS-synth content and style: the offline judges of train/evaluation/evaluate.py.

Two small CNNs (BatchNorm, max pooling). The content one sees only a foreground mask (where an
image differs from its border colour), so it judges shapes and cannot lean on colour: on
held-out class-style combinations an RGB content probe fell below chance, as it guessed the
classes that the style had been seen with. The style one sees the RGB image. Their pooled
features, side by side, are the space of the image-image similarity and of the Fréchet distance.
Trained by train/training/probes.py; saved as safetensors + JSON config.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

PROBE_SIZE = 64


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU())  # fmt: skip


def cnn(cin: int, width: int, features: int) -> nn.Sequential:
    return nn.Sequential(conv_block(cin, width), conv_block(width, 2 * width), conv_block(2 * width, 4 * width),
                         conv_block(4 * width, features))  # 64 -> 4  # fmt: skip


def foreground(x: Tensor) -> Tensor:
    """Images (N, 3, H, W) in [-1, 1] -> soft mask (N, 1, H, W) in [-1, 1] of pixels unlike the border colour."""
    border = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, :, 0], x[:, :, :, -1]], 2)  # (N, 3, 4S)
    background = border.median(2).values[:, :, None, None]  # (N, 3, 1, 1)
    return ((x - background).abs().amax(1, keepdim=True) - 0.3).mul(5).clamp(0, 1) * 2 - 1


class Probe(nn.Module):
    def __init__(self, n_content: int, n_style: int, width: int = 32, features: int = 128):
        super().__init__()
        self.config = {"n_content": n_content, "n_style": n_style, "width": width, "features": features}
        self.content_body, self.style_body = cnn(1, width, features), cnn(3, width, features)
        self.content = nn.Linear(features, n_content)
        self.style = nn.Linear(features, n_style)

    def split_features(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """Images (N, 3, H, W) in [-1, 1] -> content and style features, (N, F) each."""
        x = F.interpolate(pixels, size=(PROBE_SIZE, PROBE_SIZE), mode="bilinear", antialias=True, align_corners=False)
        return self.content_body(foreground(x)).amax((2, 3)), self.style_body(x).amax((2, 3))

    def features(self, pixels: Tensor) -> Tensor:
        return torch.cat(self.split_features(pixels), 1)  # (N, 2F)

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        fc, fs = self.split_features(pixels)
        return self.content(fc), self.style(fs)  # (N, n_content), (N, n_style)

    def predict(self, pixels: Tensor) -> dict[str, Tensor]:
        fc, fs = self.split_features(pixels)
        return {"features": torch.cat([fc, fs], 1), "content": self.content(fc).argmax(1),
                "style": self.style(fs).argmax(1)}  # fmt: skip

    def save(self, folder: str | Path, extra: dict | None = None) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, folder / "probe.safetensors")
        (folder / "config.json").write_text(json.dumps({**self.config, **(extra or {})}, indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> Probe:
        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        keys = ("n_content", "n_style", "width", "features")
        probe = cls(**{k: config[k] for k in keys})
        probe.load_state_dict(load_file(folder / "probe.safetensors"))
        return probe.eval()
