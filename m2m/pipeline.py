"""M2MPipeline: autoregressive many-to-many generation with a context cache (Shen et al. 2024, Fig. 1 right)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    UNet2DConditionModel,
)
from diffusers.utils import BaseOutput
from PIL import Image
from torch import Tensor
from transformers import Dinov2Model

from m2m.adapters import apply_adapter, base_folder, is_adapter
from m2m.attention import CachedContext, ImageSetAttention, install
from m2m.encoders import ContextCache, context_window, encode_dino, encode_self
from m2m.images import to_model_size, to_pil, to_tensor

SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
}
# Context images are encoded one at a time: an image's K/V never depend on its batch-mates, so the
# cache equals recomputation and an image regenerated from the saved PNGs is the same image. It is
# a one-off cost per image, and memory stays bounded for long sets.
ENCODE_BATCH = 1


@dataclass
class GeneratedImage:
    index: int  # position in the whole set: the number of images before it
    seed: int  # the seed of this image alone, derived from the call's seed and `index`
    image: Image.Image
    pixels: Tensor  # (3, H, W) in [0, 1]: the decoded image before 8-bit rounding


@dataclass
class M2MPipelineOutput(BaseOutput):
    images: list[Image.Image]
    seeds: list[int]
    indices: list[int]


def image_seed(seed: int, index: int) -> int:
    """Seed of the image at `index` of a set generated with `seed`: regenerate it alone with the same pair."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint32)[0])


class M2MPipeline(DiffusionPipeline):
    """Generates images that continue a set of preceding images, one after another."""

    _optional_components: ClassVar[list[str]] = ["image_encoder"]
    model_cpu_offload_seq = "image_encoder->unet->vae"

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler: DDIMScheduler,
        isa: ImageSetAttention,
        image_encoder: Dinov2Model | None = None,
    ):
        super().__init__()
        if isa.config.variant == "dino" and image_encoder is None:
            raise ValueError("an M2M-DINO pipeline needs an image_encoder (a Dinov2Model)")
        self.register_modules(unet=unet, vae=vae, scheduler=scheduler, isa=isa, image_encoder=image_encoder)
        install(unet, isa)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> M2MPipeline:
        """diffusers' loader with one dtype for all components: fp32 unless `dtype` says otherwise.

        Without it, transformers (v5) keeps the image encoder in the dtype it was saved in (fp16 in the
        shipped checkpoints) while diffusers loads the rest in fp32, and the first matmul between them fails.
        """
        if kwargs.get("dtype") is None and kwargs.get("torch_dtype") is None:
            kwargs["dtype"] = torch.float32
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @property
    def variant(self) -> str:
        return self.isa.config.variant

    @property
    def resolution(self) -> int:
        return self.unet.config.sample_size * 2 ** (len(self.vae.config.block_out_channels) - 1)

    # --- context -------------------------------------------------------------------------------

    def prepare(self, images: Sequence[Image.Image]) -> list[Image.Image]:
        """Any PIL images -> RGB at the model's resolution."""
        return [to_model_size(img, self.resolution) for img in images]

    @torch.no_grad()
    def context_inputs(self, images: list[Image.Image]) -> Tensor:
        """What the context encoder reads: VAE latents (M2M-Self, (N, 4, h, w)) or pixels (M2M-DINO, (N, 3, H, W))."""
        if self.variant == "dino":
            return to_tensor(images).to(self.device, self.image_encoder.dtype)
        chunks = [to_tensor(images[i : i + ENCODE_BATCH]) for i in range(0, len(images), ENCODE_BATCH)]
        latents = [self.vae.encode(c.to(self.device, self.vae.dtype)).latent_dist.mode() for c in chunks]
        return torch.cat(latents).to(self.unet.dtype) * self.vae.config.scaling_factor

    @torch.no_grad()
    def encode_inputs(self, inputs: Tensor, cache: ContextCache | None = None) -> ContextCache:
        """Run the context encoder once per image (in batches) and append its per-layer K/V to the cache."""
        cache = ContextCache() if cache is None else cache
        for batch in inputs.split(ENCODE_BATCH):
            if self.variant == "self":
                cache.extend(encode_self(self.unet, batch))
            else:
                cache.extend(encode_dino(self.unet, self.isa, self.image_encoder, batch))
        return cache

    def encode_context(self, images: list[Image.Image], cache: ContextCache | None = None) -> ContextCache:
        """Prepared images -> their K/V in the cache, each image encoded exactly once."""
        if not images:
            return ContextCache() if cache is None else cache
        return self.encode_inputs(self.context_inputs(images), cache)

    # --- sampling ------------------------------------------------------------------------------

    def make_scheduler(self, name: str | None = None):
        """A fresh scheduler for one image (schedulers keep state): the pipeline's own, or `ddim` / `dpm++`."""
        if name is None:
            return type(self.scheduler).from_config(self.scheduler.config)
        if name not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {name!r}; choose from {sorted(SCHEDULERS)}")
        cls, extra = SCHEDULERS[name]
        return cls.from_config(self.scheduler.config, **extra)

    @torch.no_grad()
    def denoise(
        self,
        context: Callable[[], CachedContext | None],
        seed: int,
        steps: int,
        guidance_scale: float,
        scheduler: str | None = None,
        on_step: Callable[[], None] | None = None,
    ) -> Tensor:
        """DDIM-style sampling of one latent; `context()` gives what ISA attends to at each step."""
        sched = self.make_scheduler(scheduler)
        sched.set_timesteps(steps, device=self.device)
        size = self.unet.config.sample_size
        shape = (1, self.unet.config.in_channels, size, size)
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))  # CPU noise: same on every device
        latent = noise.to(self.device, self.unet.dtype) * sched.init_noise_sigma  # (1, 4, h, w)
        for t in sched.timesteps:
            ctx = context()
            guided = ctx is not None and guidance_scale != 1.0
            x = sched.scale_model_input(torch.cat([latent] * 2) if guided else latent, t)  # (1|2, 4, h, w)
            pred = self.unet(x, t, encoder_hidden_states=None, cross_attention_kwargs={"isa": ctx}).sample
            if guided:
                cond, uncond = pred.chunk(2)
                pred = uncond + guidance_scale * (cond - uncond)  # classifier-free guidance over the image context
            latent = sched.step(pred, t, latent).prev_sample
            if on_step is not None:
                on_step()
        return latent

    @torch.no_grad()
    def decode(self, latent: Tensor) -> Tensor:
        """Latent (1, 4, h, w) -> pixels (1, 3, H, W) in [-1, 1]."""
        return self.vae.decode(latent.to(self.vae.dtype) / self.vae.config.scaling_factor).sample.clamp(-1, 1)

    def generate_iter(
        self,
        context: Sequence[Image.Image] = (),
        num_images: int = 4,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        seed: int = 0,
        context_cache: bool = True,
        max_context: int | None = None,
        scheduler: str | None = None,
        on_step: Callable[[], None] | None = None,
    ) -> Iterator[GeneratedImage]:
        """Yield each generated image as soon as it is done; each one joins the context of the next."""
        _check_args(num_images, num_inference_steps, guidance_scale, seed, max_context)
        images = self.prepare(context)
        cache = self.encode_context(images) if context_cache else None
        for k in range(num_images):
            result = self.next_image(
                images, cache, seed, num_inference_steps, guidance_scale, max_context, scheduler, on_step
            )
            yield result
            images.append(result.image)
            if cache is not None and k < num_images - 1:
                self.encode_context([result.image], cache)  # from its 8-bit pixels, as if given: regeneration is exact

    def next_image(
        self,
        images: list[Image.Image],
        cache: ContextCache | None,
        seed: int,
        num_inference_steps: int,
        guidance_scale: float,
        max_context: int | None = None,
        scheduler: str | None = None,
        on_step: Callable[[], None] | None = None,
    ) -> GeneratedImage:
        """The image after the prepared `images`; `cache` holds their K/V, or is None to recompute every step."""
        index = len(images)
        n_cond = 1 if guidance_scale != 1.0 else None  # guidance batch: [cond; uncond]
        ctx = self._context_for(context_window(index, max_context), images, cache, n_cond)
        latent = self.denoise(ctx, image_seed(seed, index), num_inference_steps, guidance_scale, scheduler, on_step)
        pixels = self.decode(latent)  # (1, 3, H, W)
        return GeneratedImage(index, image_seed(seed, index), to_pil(pixels)[0], (pixels[0].float().cpu() + 1) / 2)

    def _context_for(self, window, images, cache, n_cond) -> Callable[[], CachedContext | None]:
        """Cached: one context for every step. Recomputed (the paper's way): the window re-encoded each step."""
        if not window:
            return lambda: None
        if cache is not None:
            cached = cache.context(window, n_cond)
            return lambda: cached
        inputs = self.context_inputs([images[i] for i in window])
        return lambda: self.encode_inputs(inputs).context(list(range(len(window))), n_cond)

    def __call__(self, context: Sequence[Image.Image] = (), **kwargs) -> M2MPipelineOutput:
        results = list(self.generate_iter(context, **kwargs))
        return M2MPipelineOutput(
            images=[r.image for r in results], seeds=[r.seed for r in results], indices=[r.index for r in results]
        )


def _check_args(num_images: int, steps: int, guidance_scale: float, seed: int, max_context: int | None) -> None:
    if not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images must be a positive integer, got {num_images!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {steps!r}")
    if guidance_scale < 0:
        raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if max_context is not None and (not isinstance(max_context, int) or max_context < 1):
        raise ValueError(f"max_context must be None or a positive integer, got {max_context!r}")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message says which and why."""


def load_pipeline(checkpoint: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> M2MPipeline:
    """An M2M pipeline from a local folder (diffusers layout) or, when online, a hub id."""
    path = Path(checkpoint).expanduser()
    is_hub_id = not path.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", str(checkpoint)) is not None
    if not is_hub_id:
        if not path.is_dir():
            raise CheckpointError(f"{checkpoint}: no such checkpoint directory")
        if is_adapter(path):  # a task adapter: its base pipeline, then the adapter on top
            return load_adapter(path, device, dtype)
        if not (path / "model_index.json").is_file():
            raise CheckpointError(f"{checkpoint}: not a pipeline folder (no model_index.json)")
        try:
            index = json.loads((path / "model_index.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{checkpoint}: corrupt model_index.json ({err})") from None
        if index.get("_class_name") != M2MPipeline.__name__:
            raise CheckpointError(f"{checkpoint}: a {index.get('_class_name')!r} checkpoint, not an M2MPipeline")
    try:
        pipe = M2MPipeline.from_pretrained(str(path if not is_hub_id else checkpoint), dtype=dtype)
    except Exception as err:  # diffusers raises many kinds; the user needs one line
        raise CheckpointError(f"{checkpoint}: cannot load the checkpoint ({first_line(err)})") from None
    return pipe.to(device)


def load_adapter(path: Path, device: str, dtype: torch.dtype) -> M2MPipeline:
    """A task adapter's base pipeline with the adapter on it; one-line CheckpointErrors."""
    try:
        base = base_folder(path)
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"{path}: unreadable adapter_config.json ({err!r})") from None
    if not base.is_dir():
        raise CheckpointError(f"{path}: its base model {base} is missing (an adapter moved without it? "
                              "m2m.adapters.rebase points it at another copy)")  # fmt: skip
    pipe = load_pipeline(base, device, dtype)
    try:
        return apply_adapter(pipe, path)
    except Exception as err:  # safetensors, peft and json raise many kinds; the user needs one line
        raise CheckpointError(f"{path}: cannot load the task adapter ({first_line(err)})") from None


def first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
