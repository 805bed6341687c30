"""Context encoders (M2M-Self: the UNet itself at t=0; M2M-DINO: a frozen DINOv2) and the context cache.

Both encoders turn clean context images into per-ISA-layer keys/values. Because the
clean pass runs at a fixed timestep, those K/V do not depend on the denoising step:
each context image is encoded once and reused for every step and every later image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from torch import Tensor
from transformers import Dinov2Model

from m2m.attention import KV, CachedContext, ImageSetAttention, RecordContext, isa_modules

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CONTEXT_TIMESTEP = 0  # the clean pass of M2M-Self (DESIGN.md §2)


def encode_self(unet: UNet2DConditionModel, latents: Tensor) -> dict[str, KV]:
    """M2M-Self: clean latents (N, 4, h, w) through the UNet at t=0 -> per-layer K/V (N, L, inner)."""
    record = RecordContext()
    timestep = torch.full((latents.shape[0],), CONTEXT_TIMESTEP, device=latents.device)
    unet(latents, timestep, encoder_hidden_states=None, cross_attention_kwargs={"isa": record})
    return record.kv


def dino_tokens(image_encoder: Dinov2Model, isa: ImageSetAttention, pixels: Tensor) -> Tensor:
    """M2M-DINO: images (N, 3, H, W) in [-1, 1] -> projected CLS + patch tokens (N, 1 + P, D)."""
    with torch.no_grad():  # frozen, as DINOv2 is in the paper
        inputs = dino_inputs(pixels, isa.config.image_encoder_size)
        hidden = image_encoder(pixel_values=inputs).last_hidden_state  # (N, 1 + P, D_dino)
    return isa.image_proj(hidden)  # (N, 1 + P, D)


def dino_inputs(pixels: Tensor, size: int) -> Tensor:
    """Images (N, 3, H, W) in [-1, 1] -> DINOv2's input: size x size, ImageNet-normalised."""
    x = F.interpolate((pixels + 1) / 2, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    mean = x.new_tensor(IMAGENET_MEAN)[:, None, None]
    std = x.new_tensor(IMAGENET_STD)[:, None, None]
    return (x - mean) / std


def encode_dino(
    unet: UNet2DConditionModel, isa: ImageSetAttention, image_encoder: Dinov2Model, pixels: Tensor
) -> dict[str, KV]:
    """M2M-DINO: the same tokens, through each cross-attention's own K/V projections."""
    tokens = dino_tokens(image_encoder, isa, pixels)
    return {layer.name: layer.project(attn, tokens) for layer, attn in isa_modules(unet, isa)}


class ContextCache:
    """Per-layer K/V of each context image, kept in set order; it belongs to one generation call."""

    def __init__(self):
        self.images: list[dict[str, KV]] = []

    def __len__(self) -> int:
        return len(self.images)

    def extend(self, kv: dict[str, KV]) -> None:
        """Add a batch of encoded images: kv values are (N, L, inner)."""
        n = next(iter(kv.values()))[0].shape[0] if kv else 0
        for i in range(n):
            self.images.append({name: (k[i : i + 1], v[i : i + 1]) for name, (k, v) in kv.items()})

    def context(self, indices: list[int], n_cond: int | None = None) -> CachedContext:
        """One `CachedContext` over the chosen images, concatenated once for all denoising steps."""
        names = self.images[indices[0]].keys()
        kv = {
            name: tuple(torch.cat([self.images[i][name][j] for i in indices], 1) for j in (0, 1))  # (1, ΣL, inner)
            for name in names
        }
        return CachedContext(kv, n_cond)


def context_window(n: int, max_context: int | None) -> list[int]:
    """Indices of the context kept for the next image: all, or the first and the most recent ones."""
    if max_context is None or n <= max_context:
        return list(range(n))
    first = max_context // 2
    return list(range(first)) + list(range(n - (max_context - first), n))
