"""Context encoders, one per variant, and the context cache.

M2M-Self reads VAE latents and encodes them with the UNet itself at t=0; M2M-DINO reads pixels and
encodes them with a frozen DINOv2. Each encoder turns clean context images into per-ISA-layer
keys/values for inference and into a `SetContext` for training. Because the clean pass runs at a
fixed timestep, those K/V do not depend on the denoising step: each context image is encoded once
and reused for every step and every later image.

`context_encoder(isa)` is the one place a variant is chosen. The encoders hold no weights: they are
given the model's parts (a pipeline or an M2MModel: `unet`, `isa`, `image_encoder`) at each call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar, Protocol

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image
from torch import Tensor, nn
from transformers import Dinov2Model

from m2m.attention import (
    KV,
    CachedContext,
    ImageSetAttention,
    RecordContext,
    SetContext,
    coarsen,
    cross_attentions,
    isa_modules,
)
from m2m.autoencoder import to_model_latents
from m2m.conditioning import unet_input
from m2m.images import to_tensor

if TYPE_CHECKING:
    from m2m.pipeline import M2MPipeline

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CONTEXT_TIMESTEP = 0  # the clean pass of M2M-Self (DESIGN.md §2)
# Context images are encoded one at a time: an image's K/V never depend on its batch-mates, so the
# cache equals recomputation and an image regenerated from the saved PNGs is the same image. It is
# a one-off cost per image, and memory stays bounded for long sets.
ENCODE_BATCH = 1


class Parts(Protocol):
    """What an encoder is given: an M2MPipeline or an M2MModel."""

    unet: UNet2DConditionModel
    isa: ImageSetAttention
    image_encoder: Dinov2Model | None


class ContextEncoder(ABC):
    """One variant's way from clean context images to what Image-Set Attention attends to."""

    reads: ClassVar[str]  # "latents" (N, 4, h, w) or "pixels" (N, 3, H, W) in [-1, 1]
    needs_image_encoder: ClassVar[bool] = False

    @abstractmethod
    def inputs(self, pipe: M2MPipeline, images: list[Image.Image]) -> Tensor:
        """Prepared images -> what this encoder reads, on the pipeline's device."""

    @abstractmethod
    def encode(self, parts: Parts, inputs: Tensor) -> dict[str, KV]:
        """Inference: a batch of inputs -> per-layer K/V (N, L, inner), each image on its own."""

    @abstractmethod
    def training_batch(
        self, parts: Parts, x0: Tensor, xt: Tensor, timesteps: Tensor, sees_context: Tensor, pixels: Tensor | None
    ) -> tuple[Tensor, Tensor, SetContext]:
        """Training: the UNet's input and timesteps, and the SetContext, for teacher forcing on whole sets."""

    def unused_parameters(self, parts: Parts) -> list[nn.Parameter]:
        """UNet weights this variant never uses (training freezes them)."""
        return []

    @torch.no_grad()
    def cache(self, pipe: M2MPipeline, images: list[Image.Image], cache: ContextCache | None = None) -> ContextCache:
        """Prepared images -> their K/V appended to `cache` (a new one if None), each image encoded once."""
        cache = ContextCache.for_isa(pipe.isa) if cache is None else cache
        return self.cache_inputs(pipe, self.inputs(pipe, images), cache) if images else cache

    @torch.no_grad()
    def cache_inputs(self, parts: Parts, inputs: Tensor, cache: ContextCache | None = None) -> ContextCache:
        cache = ContextCache.for_isa(parts.isa) if cache is None else cache
        for batch in inputs.split(ENCODE_BATCH):
            cache.extend(self.encode(parts, batch))
        return cache


class SelfEncoder(ContextEncoder):
    """M2M-Self: the clean latents through the UNet itself at t=0; each ISA layer's own K/V of its features."""

    reads = "latents"

    @torch.no_grad()
    def inputs(self, pipe: M2MPipeline, images: list[Image.Image]) -> Tensor:
        chunks = [to_tensor(images[i : i + ENCODE_BATCH]) for i in range(0, len(images), ENCODE_BATCH)]
        latents = [vae_latents(pipe.vae, c.to(pipe.device, pipe.vae.dtype)) for c in chunks]
        return torch.cat(latents).to(pipe.unet.dtype)  # (N, 4, h, w)

    def encode(self, parts: Parts, latents: Tensor) -> dict[str, KV]:
        record = RecordContext()
        timestep = torch.full((latents.shape[0],), CONTEXT_TIMESTEP, device=latents.device)
        sample = unet_input(parts.unet, latents)  # (N, 4|8, h, w): a clean image reads no last image
        parts.unet(sample, timestep, encoder_hidden_states=None, cross_attention_kwargs={"isa": record})
        return record.kv

    def training_batch(self, parts, x0, xt, timesteps, sees_context, pixels=None):
        """One batch [clean at t=0; noisy]: the clean half feeds ISA layer by layer."""
        sample = torch.cat([x0, xt])  # (2*B*K, 4, h, w)
        t = torch.cat([torch.full_like(timesteps, CONTEXT_TIMESTEP), timesteps])
        return sample, t, set_context(parts.isa, sees_context)

    def unused_parameters(self, parts: Parts) -> list[nn.Parameter]:
        """The text K/V projections of every cross-attention: ISA layers bring their own."""
        text_kv = [proj for _, attn in cross_attentions(parts.unet) for proj in (attn.to_k, attn.to_v)]
        return [p for proj in text_kv for p in proj.parameters()]


class DinoEncoder(ContextEncoder):
    """M2M-DINO: pixels through a frozen DINOv2, projected once, then through each cross-attention's own K/V."""

    reads = "pixels"
    needs_image_encoder = True

    def inputs(self, pipe: M2MPipeline, images: list[Image.Image]) -> Tensor:
        return to_tensor(images).to(pipe.device, pipe.image_encoder.dtype)  # (N, 3, H, W)

    def encode(self, parts: Parts, pixels: Tensor) -> dict[str, KV]:
        tokens = dino_tokens(parts.image_encoder, parts.isa, pixels)
        return {layer.name: layer.project(attn, tokens) for layer, attn in isa_modules(parts.unet, parts.isa)}

    def training_batch(self, parts, x0, xt, timesteps, sees_context, pixels=None):
        """The noisy batch alone; the clean images are the DINO tokens of their pixels (B, K, 3, H, W)."""
        if pixels is None:
            raise ValueError("M2M-DINO training needs the images' pixels (B, K, 3, H, W)")
        tokens = dino_tokens(parts.image_encoder, parts.isa, pixels.flatten(0, 1))  # (B*K, 1 + P, D)
        return xt, timesteps, set_context(parts.isa, sees_context, tokens)


def set_context(isa: ImageSetAttention, sees_context: Tensor, tokens: Tensor | None = None) -> SetContext:
    """Teacher forcing's context, with the model's pooling of older images."""
    cfg = isa.config
    return SetContext(sees_context, tokens, cfg.recent_context_images, cfg.older_context_tokens, cfg.reference_images)


ENCODERS: dict[str, type[ContextEncoder]] = {"self": SelfEncoder, "dino": DinoEncoder}  # keys: VARIANTS


def context_encoder(isa: ImageSetAttention, image_encoder: Dinov2Model | None = None) -> ContextEncoder:
    """The context encoder of a model's variant, as its ISA config says; M2M-DINO's needs its image encoder."""
    variant = isa.config.variant
    encoder = ENCODERS[variant]()
    if encoder.needs_image_encoder and image_encoder is None:
        raise ValueError(f"an M2M-{variant} model needs an image_encoder (a Dinov2Model)")
    return encoder


def vae_latents(vae: AutoencoderKL, pixels: Tensor) -> Tensor:
    """Images (N, 3, H, W) in [-1, 1] -> scaled posterior-mean latents (N, 4, h, w): what M2M-Self and training read
    (per channel where the autoencoder's config says: m2m/autoencoder.py)."""
    return to_model_latents(vae, vae.encode(pixels).latent_dist.mode())


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


class ContextCache:
    """Per-layer K/V of each context image, kept in set order; it belongs to one generation call."""

    def __init__(self, reference_images: int = 0, recent_images: int | None = None, older_tokens: int | None = None,
                 has_cls: bool = False):  # fmt: skip
        self.images: list[dict[str, KV]] = []
        self.reference_images = reference_images  # the model's (ImageSetAttention.config): what reference reads,
        self.recent_images, self.older_tokens = recent_images, older_tokens  # and which images ISA sees coarser
        self.has_cls = has_cls  # M2M-DINO: the context tokens start with the CLS token

    @classmethod
    def for_isa(cls, isa: ImageSetAttention) -> ContextCache:
        cfg = isa.config
        return cls(cfg.reference_images, cfg.recent_context_images, cfg.older_context_tokens, cfg.variant == "dino")

    def __len__(self) -> int:
        return len(self.images)

    def extend(self, kv: dict[str, KV]) -> None:
        """Add a batch of encoded images: kv values are (N, L, inner)."""
        n = next(iter(kv.values()))[0].shape[0] if kv else 0
        for i in range(n):
            self.images.append({name: (k[i : i + 1], v[i : i + 1]) for name, (k, v) in kv.items()})

    def context(self, indices: list[int], n_cond: int | None = None, positions: list[int] | None = None
                ) -> CachedContext:  # fmt: skip
        """One `CachedContext` over the chosen images, concatenated once for all denoising steps.

        ISA layers see every chosen image, coarsened when more than `recent_images` before the new image; reference
        attention reads those at most `reference_images` before it. Distances are in the set: `positions` are the
        chosen images' places there (default: their indices in this cache), the new image comes after the last.
        """
        positions = list(indices) if positions is None else positions
        ages = [positions[-1] + 1 - p for p in positions]  # 1 = the image just before the new one
        kv = {name: self.layer_kv(name, indices, ages) for name in self.images[indices[0]]}
        return CachedContext(kv, n_cond)

    def layer_kv(self, name: str, indices: list[int], ages: list[int]) -> KV:
        """One layer's K/V over the chosen images at those distances from the new image: (1, ΣL, inner) each."""
        if is_reference(name):
            chosen = [i for i, age in zip(indices, ages, strict=True) if age <= self.reference_images]
            return tuple(torch.cat([self.images[i][name][j] for i in chosen], 1) for j in (0, 1))
        kvs = [self.image_kv(i, name, age) for i, age in zip(indices, ages, strict=True)]
        return torch.cat([k for k, _ in kvs], 1), torch.cat([v for _, v in kvs], 1)

    def image_kv(self, i: int, name: str, age: int) -> KV:
        """Image i's K/V of an ISA layer, `age` images before the new one: coarsened past `recent_images`."""
        k, v = self.images[i][name]
        if self.recent_images is None or age <= self.recent_images:
            return k, v
        return coarsen(k, self.older_tokens, self.has_cls), coarsen(v, self.older_tokens, self.has_cls)


def is_reference(name: str) -> bool:
    """Whether a cached layer is a self-attention read by reference attention (ISA layers are cross-attentions)."""
    return name.endswith("attn1")
