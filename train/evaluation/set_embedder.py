"""The set embedder: a small CNN that says which set an image is from, colour aside (label-free shape metrics).

The tiny analogue of the paper's image-image CLIP score. It maps an image's colour-free view
(luminance under random channel weights, sometimes inverted, and its gradient magnitude) to a unit
vector. Trained contrastively on open sets by `train/training/set_embedder.py`; used by
`train/evaluation/set_metrics.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor, nn

LUMA = (0.299, 0.587, 0.114)


def colour_free(pixels: Tensor, weights: Tensor | None = None, invert: Tensor | None = None) -> Tensor:
    """Images (N, 3, H, W) in [-1, 1] -> (N, 2, H, W): standardised grey levels and their gradient magnitude.

    `weights` (N, 3) mix the channels (default: luminance); `invert` (N,) flips the grey levels.
    """
    w = torch.tensor(LUMA, device=pixels.device).expand(pixels.shape[0], 3) if weights is None else weights
    grey = (pixels * w[:, :, None, None]).sum(1, keepdim=True)  # (N, 1, H, W)
    if invert is not None:
        grey = torch.where(invert[:, None, None, None], -grey, grey)
    grey = (grey - grey.mean((2, 3), keepdim=True)) / (grey.std((2, 3), keepdim=True) + 0.05)
    dx, dy = grey[..., :, 1:] - grey[..., :, :-1], grey[..., 1:, :] - grey[..., :-1, :]
    edges = F.pad(dx.abs(), (0, 1)) + F.pad(dy.abs(), (0, 0, 0, 1))
    return torch.cat([grey, edges], 1)


class SetEmbedder(ModelMixin, ConfigMixin):
    """Colour-free view (N, 2, H, W) -> unit embedding (N, dim)."""

    @register_to_config
    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 192), dim: int = 128):
        super().__init__()
        layers, c_in = [], 2
        for c in widths:  # each stage halves the resolution
            layers += [nn.Conv2d(c_in, c, 3, 2, 1), nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, c, 3, 1, 1),
                       nn.GroupNorm(8, c), nn.SiLU()]  # fmt: skip
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(2 * c_in, 256), nn.SiLU(), nn.Linear(256, dim))

    def forward(self, view: Tensor) -> Tensor:
        h = self.features(view)  # (N, C, H/16, W/16)
        pooled = torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)  # (N, 2C)
        return F.normalize(self.head(pooled), dim=1)

    @torch.no_grad()
    def embed(self, pixels: Tensor, batch: int = 128) -> Tensor:
        """Images (N, 3, H, W) in [-1, 1] -> unit embeddings (N, dim) of their luminance view."""
        self.eval()
        dev = self.device
        return torch.cat([self(colour_free(c.to(dev))).float().cpu() for c in pixels.split(batch)])
