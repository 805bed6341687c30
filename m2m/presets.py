"""Model sizes as presets: `tiny` (trained on this CPU) and `sd21-base` (the paper's Stable Diffusion 2.1-base).

`build_pipeline` makes any preset from config with random weights (no download);
`from_hub` loads the public Stable Diffusion and DINOv2 weights when online.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import Dinov2Config, Dinov2Model

from m2m.attention import VARIANTS, ImageSetAttention
from m2m.autoencoder import ColourAutoencoderKL
from m2m.encoders import ENCODERS
from m2m.pipeline import M2MPipeline


@dataclass(frozen=True)
class Preset:
    name: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    image_encoder: dict[str, Any]  # Dinov2Config
    scheduler: dict[str, Any]
    image_encoder_size: int = 224
    num_null_tokens: int = 4
    max_context_tokens: int | None = 64  # M2M-Self: context tokens per image and layer (pooled above)
    reference_images: int = 0  # M2M-Self: reference attention to this many recent context images (0: the paper's)
    recent_context_images: int | None = None  # ISA sees images before the last N at `older_context_tokens` (None: all
    older_context_tokens: int = 16  # at max_context_tokens, the paper's): a flat cost per image as the set grows
    hub_id: str | None = None  # Stable Diffusion weights
    image_encoder_hub_id: str | None = None
    last_image_input: bool = False  # the UNet also reads the last context image's latent (m2m/conditioning.py)
    last_image_change: bool = False  # and denoises the change from it (there: `change`), not the image
    last_step_input: bool = False  # and reads the last step too: last image minus the one before (needs the above)
    last_image_change_scale: float = 1.0  # the change times this (1 / its rms on training sets)
    last_image_change_relative: bool = False  # ... or, from a set's third image on, 1 / the last step's rms
    last_image_pixels: bool = False  # the change drawn on the last image's own pixels (generation only)
    last_image_change_floor: float = 0.0  # ... where its largest channel is at least this (generation only)
    vae_colour_path: bool = False  # ColourAutoencoderKL: a tiny autoencoder that keeps colour (m2m/autoencoder.py)

    def replace(self, **changes: Any) -> Preset:
        return dataclasses.replace(self, **changes)


SD_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
)  # fmt: skip

TINY = Preset(
    name="tiny",
    unet=dict(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(64, 128, 128), attention_head_dim=(2, 4, 4), cross_attention_dim=192,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=32, use_linear_projection=True,
    ),
    vae=dict(
        sample_size=128, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=(16, 32, 64, 64), norm_num_groups=2,  # narrow at 128x128: 2x faster to train;
        # few groups: GroupNorm removes each group's mean, so 2-channel groups could hardly carry a colour
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    ),
    vae_colour_path=True,  # without it, a tiny autoencoder trained on open sets returns grey images
    image_encoder=dict(
        hidden_size=192, num_hidden_layers=4, num_attention_heads=3, intermediate_size=768,
        patch_size=16, image_size=128,
    ),
    # v-prediction: with ε the tiny model learns nothing from the context (DESIGN.md §3)
    scheduler={**SD_SCHEDULER, "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    image_encoder_size=128,
    max_context_tokens=64,  # 8x8 per image and layer, as the shipped M2M-Self: 16 context images cost 1,024 keys
)  # fmt: skip

SD21_BASE = Preset(
    name="sd21-base",
    unet=dict(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        use_linear_projection=True,
    ),
    vae=dict(
        sample_size=512, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512), scaling_factor=0.18215,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    ),
    image_encoder=dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        patch_size=14, image_size=518,
    ),
    scheduler=SD_SCHEDULER,
    image_encoder_size=224,
    max_context_tokens=64,
    hub_id="stabilityai/stable-diffusion-2-1-base",
    image_encoder_hub_id="facebook/dinov2-base",
)  # fmt: skip

PRESETS: Mapping[str, Preset] = MappingProxyType({"tiny": TINY, "sd21-base": SD21_BASE})


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]


def needs_image_encoder(variant: str) -> bool:
    """Whether the variant's context encoder reads with an image encoder (DINOv2) beside the UNet."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return ENCODERS[variant].needs_image_encoder


def build_isa(preset: Preset, unet: UNet2DConditionModel, variant: str) -> ImageSetAttention:
    return ImageSetAttention.for_unet(
        unet,
        variant,
        num_null_tokens=preset.num_null_tokens,
        max_context_tokens=preset.max_context_tokens,
        image_encoder_dim=preset.image_encoder["hidden_size"] if needs_image_encoder(variant) else None,
        image_encoder_size=preset.image_encoder_size,
        reference_images=preset.reference_images,
        recent_context_images=preset.recent_context_images,
        older_context_tokens=preset.older_context_tokens,
        last_image_change=preset.last_image_change,
        last_image_change_scale=preset.last_image_change_scale,
        last_image_change_relative=preset.last_image_change_relative,
        last_image_pixels=preset.last_image_pixels,
        last_image_change_floor=preset.last_image_change_floor,
    )


def build_autoencoder(preset: Preset | str) -> AutoencoderKL:
    """The preset's autoencoder with random weights: AutoencoderKL, or ColourAutoencoderKL for the tiny one."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    return (ColourAutoencoderKL if preset.vae_colour_path else AutoencoderKL)(**preset.vae)


def build_pipeline(preset: Preset | str, variant: str = "self", seed: int = 0) -> M2MPipeline:
    """The preset's architecture with random weights, built from config: nothing is downloaded."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    torch.manual_seed(seed)
    reads_last = preset.last_image_input or preset.last_image_change
    extra = (2 if preset.last_step_input else 1) if reads_last else 0  # [noisy; last image (; last step)]
    in_channels = preset.unet["out_channels"] * (1 + extra)
    unet = UNet2DConditionModel(**{**preset.unet, "in_channels": in_channels})
    vae = build_autoencoder(preset)
    encoder = Dinov2Model(Dinov2Config(**preset.image_encoder)) if needs_image_encoder(variant) else None
    isa = build_isa(preset, unet, variant)
    for module in (unet, vae, isa, encoder):
        if module is not None:
            module.eval()  # as from_pretrained leaves them; training switches to train() itself
    return M2MPipeline(unet=unet, vae=vae, scheduler=DDIMScheduler(**preset.scheduler), isa=isa, image_encoder=encoder)


def from_hub(preset: Preset | str = "sd21-base", variant: str = "self", hub_id: str | None = None) -> M2MPipeline:
    """Stable Diffusion (and DINOv2) weights from the hub or a local folder, with fresh ISA weights.

    This is the starting point of full-scale training. It downloads, so it never runs in
    tests or the default demo; with HF_HUB_OFFLINE=1 it reads the local cache only.
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    repo = hub_id or preset.hub_id
    if repo is None:
        raise ValueError(f"preset {preset.name!r} has no hub weights; use build_pipeline")
    try:
        unet = UNet2DConditionModel.from_pretrained(repo, subfolder="unet")
        vae = AutoencoderKL.from_pretrained(repo, subfolder="vae")
        scheduler = DDIMScheduler.from_pretrained(repo, subfolder="scheduler")
        encoder = Dinov2Model.from_pretrained(preset.image_encoder_hub_id) if needs_image_encoder(variant) else None
    except OSError as err:
        offline = " (HF_HUB_OFFLINE is set: only the local cache is read)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise OSError(f"could not load the {preset.name} weights from {repo!r}{offline}: {err}") from None
    isa = build_isa(preset, unet, variant)
    return M2MPipeline(unet=unet, vae=vae, scheduler=scheduler, isa=isa, image_encoder=encoder)
