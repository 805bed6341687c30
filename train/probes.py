"""Probe classifiers for MIS-synth content and style: the offline judges of train/evaluate.py.

A small CNN with two heads; its pooled features are the space of the image-image similarity and
of the Fréchet distance. Trained by train/train_probes.py; saved as safetensors + JSON config.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

PROBE_SIZE = 64


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1), nn.GroupNorm(8, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, 1, 1), nn.GroupNorm(8, cout), nn.SiLU())  # fmt: skip


class Probe(nn.Module):
    def __init__(self, n_content: int, n_style: int, width: int = 32, features: int = 128):
        super().__init__()
        self.config = {"n_content": n_content, "n_style": n_style, "width": width, "features": features}
        w = width
        self.body = nn.Sequential(conv_block(3, w), conv_block(w, 2 * w), conv_block(2 * w, 4 * w),
                                  conv_block(4 * w, features))  # 64 -> 4  # fmt: skip
        self.content = nn.Linear(features, n_content)
        self.style = nn.Linear(features, n_style)

    def features(self, pixels: Tensor) -> Tensor:
        """Images (N, 3, H, W) in [-1, 1] -> pooled features (N, F)."""
        x = F.interpolate(pixels, size=(PROBE_SIZE, PROBE_SIZE), mode="bilinear", antialias=True, align_corners=False)
        return self.body(x).mean((2, 3))  # (N, F)

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        f = self.features(pixels)
        return self.content(f), self.style(f)  # (N, n_content), (N, n_style)

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
