"""Image-Set Attention (ISA): the whole idea of M2M (Shen et al. 2024, Fig. 1 and 3).

Every text cross-attention of a Stable Diffusion UNet becomes attention from the
current image's tokens to the tokens of the *preceding clean images* of its set.
A few learned null tokens per layer are always attended to; alone, they are the
context of the first image and of the unconditional branch of guidance.

The weights live in `ImageSetAttention` (a pipeline component of its own, so the
UNet stays a plain `UNet2DConditionModel`). What an attention call sees is given
per UNet call as `cross_attention_kwargs={"isa": context}`; the contexts below
are the only modes there are, and none of them is module state:

- `NullContext`      no preceding image
- `RecordContext`    encode clean images (M2M-Self at t=0): attend to null, record K/V
- `CachedContext`    attend to K/V encoded earlier (inference; the context cache)
- `SetContext`       teacher forcing on whole sets, causal across images (training)

Beside ISA, and off by default (`reference_images=0`, the paper's model), **reference attention**:
each self-attention (`attn1`) of the noisy image also attends to the same layer's tokens of its
`reference_images` most recent clean context images, unpooled and through the same weights, so that
every resolution can copy detail (as Zero123++, AnimateAnyone and StoryDiffusion carry appearance).
M2M-Self only: its clean pass computes those tokens anyway, and they are cached like ISA's K/V.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import Tensor, nn

from m2m.conditioning import check_change_floor

VARIANTS = ("self", "dino")
KV = tuple[Tensor, Tensor]


def attend(attn: Attention, hidden: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Multi-head attention of `hidden`'s queries over projected k/v; mask True = may attend."""
    out = heads_attention(attn, attn.to_q(hidden), k, v, mask)  # (G, T, inner)
    return attn.to_out[1](attn.to_out[0](out))  # (G, T, C)


def heads_attention(attn: Attention, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Scaled dot-product attention over `attn.heads` heads of projected q (G, T, inner) and k/v (G|1, L, inner)."""
    g, h = q.shape[0], attn.heads
    q, k, v = (x.expand(g, -1, -1).unflatten(-1, (h, -1)).transpose(1, 2) for x in (q, k, v))  # (G, h, L, d)
    mask = None if mask is None else mask[:, None]  # (G|1, 1, T|1, L)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (G, h, T, d)
    return out.transpose(1, 2).flatten(2)  # (G, T, inner)


def pool_tokens(hidden: Tensor, max_tokens: int | None) -> Tensor:
    """Average-pool a square token map to at most `max_tokens` tokens (cheap context at high resolution).

    A map that is not square (a non-square latent) is left as it is.
    """
    n, t, c = hidden.shape
    side = math.isqrt(t)
    if max_tokens is None or t <= max_tokens or side * side != t:
        return hidden
    grid = math.isqrt(max_tokens)
    spatial = hidden.transpose(1, 2).reshape(n, c, side, side)  # (N, C, s, s)
    return F.adaptive_avg_pool2d(spatial, grid).flatten(2).transpose(1, 2)  # (N, grid², C)


def coarsen(kv: Tensor, max_tokens: int, has_cls: bool) -> Tensor:
    """Pool context K/V (N, L, inner) of older images harder: a square map, after DINO's CLS token if `has_cls`.

    K/V are linear in the tokens (no bias), so this equals pooling the tokens before their projection.
    """
    if has_cls:  # CLS + patches: the CLS token stays
        return torch.cat([kv[:, :1], pool_tokens(kv[:, 1:], max_tokens)], 1)
    return pool_tokens(kv, max_tokens)


class IsaLayer(nn.Module):
    """ISA weights of one transformer block: null tokens and, for M2M-Self, context K/V projections."""

    def __init__(
        self, name: str, context_dim: int, inner_dim: int, num_null: int, own_kv: bool, max_tokens: int | None
    ):
        super().__init__()
        self.name, self.max_tokens = name, max_tokens
        self.null = nn.Parameter(torch.randn(num_null, context_dim))  # in the same space as context tokens
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False) if own_kv else None
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False) if own_kv else None

    def project(self, attn: Attention, tokens: Tensor) -> KV:
        """Context tokens (N, L, D) -> keys, values (N, L', inner); M2M-Self pools its feature maps first."""
        if self.to_k is None:  # M2M-DINO: the cross-attention's own K/V, as for text tokens
            return attn.to_k(tokens), attn.to_v(tokens)
        tokens = pool_tokens(tokens, self.max_tokens)
        return self.to_k(tokens), self.to_v(tokens)

    def null_kv(self, attn: Attention) -> KV:
        return self.project(attn, self.null[None])  # (1, n0, inner) each


class ImageSetAttention(ModelMixin, ConfigMixin):
    """All ISA weights of an M2M model: one `IsaLayer` per cross-attention, and the DINO projection."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        variant: str = "self",
        layer_names: tuple[str, ...] = (),
        layer_dims: tuple[int, ...] = (),
        inner_dims: tuple[int, ...] = (),
        num_null_tokens: int = 4,
        max_context_tokens: int | None = 64,
        cross_attention_dim: int = 1024,
        image_encoder_dim: int | None = None,
        image_encoder_size: int = 224,
        reference_images: int = 0,
        recent_context_images: int | None = None,
        older_context_tokens: int = 16,
        last_image_change: bool = False,  # m2m/conditioning.py: a UNet that reads the last image denoises the change
        last_image_change_scale: float = 1.0,  # ... times this
        last_image_change_relative: bool = False,  # ... or, from a set's third image on, 1 / the last step's rms
        last_image_pixels: bool = False,  # ... added to the last image's own pixels, decoded
        last_image_change_floor: float = 0.0,  # ... only where its largest channel is at least this (0: everywhere)
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if reference_images and variant != "self":
            raise ValueError("reference attention reads the clean pass of M2M-Self; M2M-DINO has none")
        if reference_images < 0 or (recent_context_images is not None and recent_context_images < 0):
            raise ValueError("reference_images and recent_context_images count images: 0 or more")
        check_change_floor(last_image_change_floor)
        own_kv = variant == "self"  # M2M-Self: context K/V per layer; M2M-DINO: the cross-attention's own
        self.layers = nn.ModuleDict()
        for name, dim, inner in zip(layer_names, layer_dims, inner_dims, strict=True):
            ctx_dim = dim if own_kv else cross_attention_dim
            self.layers[_key(name)] = IsaLayer(name, ctx_dim, inner, num_null_tokens, own_kv, max_context_tokens)
        self.image_proj = None
        if not own_kv:  # DINO tokens -> cross-attention width, shared by every ISA layer
            self.image_proj = nn.Sequential(
                nn.Linear(image_encoder_dim, cross_attention_dim), nn.LayerNorm(cross_attention_dim)
            )

    @classmethod
    def for_unet(cls, unet: UNet2DConditionModel, variant: str, **kwargs) -> ImageSetAttention:
        """Fresh ISA weights shaped for every cross-attention of `unet`."""
        attns = dict(cross_attentions(unet))
        return cls(
            variant=variant,
            layer_names=tuple(attns),
            layer_dims=tuple(a.to_q.in_features for a in attns.values()),
            inner_dims=tuple(a.to_q.out_features for a in attns.values()),
            cross_attention_dim=unet.config.cross_attention_dim,
            **kwargs,
        )

    def layer(self, name: str) -> IsaLayer:
        return self.layers[_key(name)]

    def set_context_tokens(self, max_tokens: int | None) -> None:
        """Pool M2M-Self's context feature maps to at most `max_tokens` per image and layer; no weight depends on it."""
        if self.config.variant != "self":
            raise ValueError("only M2M-Self pools its context tokens; M2M-DINO attends to the encoder's tokens")
        self.register_to_config(max_context_tokens=max_tokens)
        for layer in self.layers.values():
            layer.max_tokens = max_tokens


def cross_attentions(unet: UNet2DConditionModel) -> Iterator[tuple[str, Attention]]:
    """(name, module) of every text cross-attention of the UNet: the places ISA takes."""
    for name, module in unet.named_modules():
        if name.endswith("attn2") and isinstance(module, Attention):
            yield name, module


def isa_modules(unet: UNet2DConditionModel, isa: ImageSetAttention) -> Iterator[tuple[IsaLayer, Attention]]:
    for name, attn in cross_attentions(unet):
        yield isa.layer(name), attn


class ImageSetAttnProcessor:
    """Replaces a cross-attention: keys/values come from the preceding images in `isa`, not from text."""

    def __init__(self, layer: IsaLayer):
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, isa=None):
        return (isa or NullContext()).attend(self.layer, attn, hidden_states)


class SelfAttnProcessor(AttnProcessor2_0):
    """Plain self-attention; accepts (and ignores) the image context that diffusers passes to every attention."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, isa=None):
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class ReferenceAttnProcessor:
    """Self-attention that also attends to its layer's tokens of the most recent clean context images (how many:
    `ImageSetAttention.config.reference_images`, which the context of each call carries)."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, isa=None):
        return (isa or NullContext()).reference(self.name, attn, hidden_states)


def install(unet: UNet2DConditionModel, isa: ImageSetAttention) -> None:
    """Turn every cross-attention of `unet` into Image-Set Attention backed by `isa`'s weights."""
    attns = dict(cross_attentions(unet))
    names = list(attns)
    plain = [a.residual_connection is False and a.rescale_output_factor == 1.0 and a.norm_cross is None
             for a in attns.values()]  # fmt: skip
    if not all(plain):
        raise ValueError("ISA replaces plain cross-attention only (no residual, output rescale or cross norm)")
    missing = [n for n in names if _key(n) not in isa.layers]
    if missing or len(names) != len(isa.layers):
        raise ValueError(f"ISA weights do not match this UNet's cross-attentions (first missing: {missing[:1]})")
    processors = {}
    for name in unet.attn_processors:
        module = name.removesuffix(".processor")
        if module in names:
            processors[name] = ImageSetAttnProcessor(isa.layer(module))
        elif isa.config.reference_images and module.endswith("attn1"):
            processors[name] = ReferenceAttnProcessor(module)
        else:
            processors[name] = SelfAttnProcessor()
    unet.set_attn_processor(processors)


def _key(name: str) -> str:
    return name.replace(".", "_")


# --- What one UNet call attends to ------------------------------------------------------------


def self_kv(attn: Attention, hidden: Tensor) -> KV:
    return attn.to_k(hidden), attn.to_v(hidden)  # (N, T, inner) each


class NullContext:
    """No preceding image: attend to the learned null tokens only (and, in self-attention, to itself)."""

    def attend(self, layer: IsaLayer, attn: Attention, hidden: Tensor) -> Tensor:
        return attend(attn, hidden, *layer.null_kv(attn))

    def reference(self, name: str, attn: Attention, hidden: Tensor) -> Tensor:
        return attend(attn, hidden, *self_kv(attn, hidden))


class RecordContext(NullContext):
    """Encode clean images (M2M-Self, t=0): each attends to null alone; every layer's K/V is recorded."""

    def __init__(self):
        self.kv: dict[str, KV] = {}

    def attend(self, layer: IsaLayer, attn: Attention, hidden: Tensor) -> Tensor:
        self.kv[layer.name] = layer.project(attn, hidden)  # (N, L, inner) each
        return super().attend(layer, attn, hidden)

    def reference(self, name: str, attn: Attention, hidden: Tensor) -> Tensor:
        self.kv[name] = self_kv(attn, hidden)  # (N, T, inner) each: unpooled
        return attend(attn, hidden, *self.kv[name])


class CachedContext:
    """Attend to null + K/V of context images encoded earlier (inference).

    With guidance the batch is [cond (n_cond rows); uncond]: the cond rows see the context,
    the uncond rows the null tokens alone, which costs them almost nothing.
    """

    def __init__(self, kv: dict[str, KV], n_cond: int | None = None):
        self.kv, self.n_cond = kv, n_cond  # kv: (1, L, inner) each; None = every row sees the context
        self.full: dict[str, KV] = {}  # null + context K/V, built at the first step and reused

    def reference(self, name: str, attn: Attention, hidden: Tensor) -> Tensor:
        """Each row attends to itself; the cond rows also to the reference tokens (`kv[name]`: the window's)."""
        (k, v), (rk, rv), n = self_kv(attn, hidden), self.kv[name], self.n_cond  # (B, T, inner), (1, W*T, inner)
        n = hidden.shape[0] if n is None else n
        keys = torch.cat([k[:n], rk.expand(n, -1, -1)], 1)  # (n, T + W*T, inner)
        values = torch.cat([v[:n], rv.expand(n, -1, -1)], 1)
        out = heads_attention(attn, attn.to_q(hidden[:n]), keys, values)  # the cond rows
        if n < hidden.shape[0]:  # the uncond rows: themselves alone
            out = torch.cat([out, heads_attention(attn, attn.to_q(hidden[n:]), k[n:], v[n:])])
        return attn.to_out[1](attn.to_out[0](out))  # (B, T, C)

    def attend(self, layer: IsaLayer, attn: Attention, hidden: Tensor) -> Tensor:
        if layer.name not in self.full:
            (nk, nv), (ck, cv) = layer.null_kv(attn), self.kv[layer.name]
            self.full[layer.name] = torch.cat([nk, ck], 1), torch.cat([nv, cv], 1)  # (1, n0 + L, inner)
        k, v = self.full[layer.name]
        q, n, n0 = attn.to_q(hidden), self.n_cond, layer.null.shape[0]  # q: (B, T, inner)
        if n is None or n == q.shape[0]:
            out = heads_attention(attn, q, k, v)
        else:  # the first n0 keys are the null tokens
            out = torch.cat([heads_attention(attn, q[:n], k, v), heads_attention(attn, q[n:], k[:, :n0], v[:, :n0])])
        return attn.to_out[1](attn.to_out[0](out))  # (B, T, C)


class SetContext:
    """Teacher forcing on B sets of K images: noisy image i attends to null + clean images j < i.

    M2M-Self: the UNet batch is [clean (B*K); noisy (B*K)], so the clean features of every
    layer are at hand when the noisy images need them, all in one UNet call.
    M2M-DINO: the batch is noisy (B*K) alone and `tokens` (B*K, L, D) are the projected DINO tokens.
    `sees_context` (B, K) False = context dropout for that image (null only). With `recent`, image i sees
    images more than `recent` before it pooled to `older_tokens` (as the cache does at inference).
    """

    def __init__(self, sees_context: Tensor, tokens: Tensor | None = None, recent: int | None = None,
                 older_tokens: int | None = None, reference_images: int = 0):  # fmt: skip
        self.sees, self.tokens = sees_context, tokens
        self.recent, self.older_tokens = recent, older_tokens  # ImageSetAttention's recent / older context
        self.reference_images = reference_images  # and how many clean images reference attention reads

    def attend(self, layer: IsaLayer, attn: Attention, hidden: Tensor) -> Tensor:
        b, k = self.sees.shape
        if self.tokens is None:
            clean, noisy = hidden.chunk(2)  # (B*K, T, C) each
            out_clean = NullContext().attend(layer, attn, clean)
            ck, cv = layer.project(attn, clean)  # (B*K, L, inner)
        else:
            noisy, out_clean = hidden, hidden[:0]
            ck, cv = layer.project(attn, self.tokens)
        t, length = noisy.shape[1], ck.shape[1]
        nk, nv = (x.expand(b, -1, -1) for x in layer.null_kv(attn))  # (B, n0, inner)
        keys, values = [nk, ck.reshape(b, k * length, -1)], [nv, cv.reshape(b, k * length, -1)]  # (B, K*L, inner)
        mask = self.mask(t, length, nk.shape[1])  # (B, K*T, n0 + K*L)
        if self.recent is not None:  # every image also coarser, for the images more than `recent` after it
            cls = self.tokens is not None  # M2M-DINO's tokens start with the CLS token
            ok, ov = coarsen(ck, self.older_tokens, cls), coarsen(cv, self.older_tokens, cls)  # (B*K, L', inner)
            keys, values = [*keys, ok.reshape(b, -1, ok.shape[2])], [*values, ov.reshape(b, -1, ov.shape[2])]
            mask = self.with_older(mask, t, length, ok.shape[1])  # (B, K*T, n0 + K*L + K*L')
        out = attend(attn, noisy.reshape(b, k * t, -1), torch.cat(keys, 1), torch.cat(values, 1), mask)
        return torch.cat([out_clean, out.reshape(b * k, t, -1)])  # (B*K*2 | B*K, T, C)

    def with_older(self, mask: Tensor, t: int, length: int, coarse: int) -> Tensor:
        """Image i sees image j < i in full when i - j <= recent, else coarsened: (B, K*T, n0 + K*L + K*L')."""
        k = self.sees.shape[1]
        img_q = torch.arange(k, device=mask.device).repeat_interleave(t)  # (K*T,)
        gap = img_q[:, None] - torch.arange(k, device=mask.device)[None]  # (K*T, K): i - j
        n0 = mask.shape[2] - k * length
        full = mask[:, :, n0:] & (gap <= self.recent).repeat_interleave(length, 1)[None]  # (B, K*T, K*L)
        older = (gap > self.recent).repeat_interleave(coarse, 1)[None] & self.sees[:, img_q, None]  # (B, K*T, K*L')
        return torch.cat([mask[:, :, :n0], full, older], 2)

    def reference(self, name: str, attn: Attention, hidden: Tensor) -> Tensor:
        """Noisy image i attends to itself and to clean images i-1 .. i-W (the same layer, unpooled)."""
        window = self.reference_images
        clean, noisy = hidden.chunk(2)  # (B*K, T, C) each
        (ck, cv), (nk, nv) = self_kv(attn, clean), self_kv(attn, noisy)  # (B*K, T, inner)
        out_clean = attend(attn, clean, ck, cv)  # the clean pass, as at inference: each image alone
        keys = torch.cat([nk, *(self.shifted(ck, d) for d in range(1, window + 1))], 1)  # (B*K, (1+W)*T, inner)
        values = torch.cat([nv, *(self.shifted(cv, d) for d in range(1, window + 1))], 1)
        out = attend(attn, noisy, keys, values, self.reference_mask(noisy.shape[1]))  # (B*K, T, C)
        return torch.cat([out_clean, out])

    def shifted(self, x: Tensor, d: int) -> Tensor:
        """Row i of each set gets row i - d (zeros where there is none): (B*K, T, inner)."""
        sets = x.unflatten(0, self.sees.shape)  # (B, K, T, inner)
        return torch.cat([torch.zeros_like(sets[:, :d]), sets[:, :-d]], 1).flatten(0, 1)

    def reference_mask(self, t: int) -> Tensor:
        """(B*K, 1, (1+W)*T): its own tokens always; image i - d's when it exists and image i sees its context."""
        b, k, window = *self.sees.shape, self.reference_images
        i = torch.arange(k, device=self.sees.device)[None, :, None]  # (1, K, 1)
        d = torch.arange(1, window + 1, device=self.sees.device)[None, None]  # (1, 1, W)
        refs = (i >= d) & self.sees[..., None]  # (B, K, W)
        blocks = torch.cat([refs.new_ones(b, k, 1), refs], 2).repeat_interleave(t, 2)  # (B, K, (1+W)*T)
        return blocks.flatten(0, 1)[:, None]

    def mask(self, t: int, length: int, num_null: int) -> Tensor:
        """Block-causal across images: a query of image i sees tokens of images j < i (and null)."""
        b, k = self.sees.shape
        img_q = torch.arange(k, device=self.sees.device).repeat_interleave(t)  # (K*T,)
        img_k = torch.arange(k, device=self.sees.device).repeat_interleave(length)  # (K*L,)
        causal = img_k[None, :] < img_q[:, None]  # (K*T, K*L)
        sees = causal[None] & self.sees[:, img_q, None]  # (B, K*T, K*L)
        return torch.cat([sees.new_ones(b, k * t, num_null), sees], 2)
