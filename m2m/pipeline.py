"""M2MPipeline: autoregressive many-to-many generation with a context cache (Shen et al. 2024, Fig. 1 right)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.utils import BaseOutput
from PIL import Image
from torch import Tensor
from transformers import Dinov2Model

from m2m.attention import CachedContext, ImageSetAttention, install
from m2m.autoencoder import from_model_latents
from m2m.conditioning import reads_last_image, reads_last_step, relative_scale, unet_input
from m2m.encoders import ContextCache, ContextEncoder, context_encoder, vae_latents
from m2m.images import to_model_size, to_pil, to_tensor
from m2m.sampling import SamplingParams, context_window, image_seed, make_scheduler


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
        context_encoder(isa, image_encoder)  # M2M-DINO's needs its image encoder
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

    def set_reference_images(self, n: int) -> None:
        """Reference attention to the `n` most recent context images (0: off, the paper's model); no weight changes."""
        if n and self.variant != "self":
            raise ValueError("reference attention reads the clean pass of M2M-Self; M2M-DINO has none")
        self.isa.register_to_config(reference_images=n)
        install(self.unet, self.isa)

    @property
    def variant(self) -> str:
        return self.isa.config.variant

    @property
    def resolution(self) -> int:
        return self.unet.config.sample_size * 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def context_encoder(self) -> ContextEncoder:
        """The variant's context encoder (what it reads, how it encodes), given this pipeline's parts."""
        return context_encoder(self.isa, self.image_encoder)

    def prepare(self, images: Sequence[Image.Image]) -> list[Image.Image]:
        """Any PIL images -> RGB at the model's resolution."""
        return [to_model_size(img, self.resolution) for img in images]

    def encode_context(self, images: list[Image.Image], cache: ContextCache | None = None) -> ContextCache:
        """Prepared images -> their K/V in the cache, each image encoded exactly once."""
        return self.context_encoder.cache(self, images, cache)

    # --- sampling ------------------------------------------------------------------------------

    @torch.no_grad()
    def denoise(
        self,
        context: Callable[[], CachedContext | None],
        seed: int,
        params: SamplingParams,
        on_step=None,
        last: Tensor | None = None,
        step: Tensor | None = None,
        change_scale: float | None = None,
    ) -> Tensor:
        """Sampling of one latent from the noise of `seed`; `context()` gives what ISA attends to at each step,
        `last` (1, 4, h, w) the last context image's latent and `step` (1, 4, h, w) the last step, for a UNet that
        reads them (m2m/conditioning.py); a change model's change is scaled by `change_scale` (None: the config's)."""
        sched = make_scheduler(self.scheduler, params.scheduler)
        sched.set_timesteps(params.steps, device=self.device)
        size = self.unet.config.sample_size
        shape = (1, self.unet.config.out_channels, size, size)
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))  # CPU noise: same on every device
        latent = noise.to(self.device, self.unet.dtype) * sched.init_noise_sigma  # (1, 4, h, w)
        for t in sched.timesteps:
            ctx = context()
            guided = ctx is not None and params.guidance != 1.0
            x = sched.scale_model_input(torch.cat([latent] * 2) if guided else latent, t)  # (1|2, 4, h, w)
            # (1|2, 4|8|12, h, w): beside the noisy latent, the last image and the last step for a UNet that reads them
            x = unet_input(self.unet, x, self._last_rows(last, guided), self._step_rows(step, guided))
            pred = self.unet(x, t, encoder_hidden_states=None, cross_attention_kwargs={"isa": ctx}).sample
            if guided:
                cond, uncond = pred.chunk(2)
                pred = uncond + params.guidance * (cond - uncond)  # classifier-free guidance over the image context
            latent = sched.step(pred, t, latent).prev_sample
            if on_step is not None:
                on_step()
        if last is None or not self.isa.config.last_image_change:
            return latent
        scale = self.isa.config.last_image_change_scale if change_scale is None else change_scale
        return latent / scale + last  # the change, scaled back, on the last

    def _last_rows(self, last: Tensor | None, guided: bool) -> Tensor | None:
        """What the UNet reads as the last image, per row: [cond; uncond] under guidance, where the unconditional
        row sees no last image, unless the model denoises the change from it (m2m/conditioning.py)."""
        if last is None or not guided:
            return last
        return torch.cat([last, last if self.isa.config.last_image_change else torch.zeros_like(last)])

    @staticmethod
    def _step_rows(step: Tensor | None, guided: bool) -> Tensor | None:
        """What the UNet reads as the last step, per row: [cond; uncond] under guidance, the unconditional row none."""
        return step if step is None or not guided else torch.cat([step, torch.zeros_like(step)])

    @torch.no_grad()
    def decode(self, latent: Tensor) -> Tensor:
        """Latent (1, 4, h, w) -> pixels (1, 3, H, W) in [-1, 1]."""
        return self.vae.decode(from_model_latents(self.vae, latent.to(self.vae.dtype))).sample.clamp(-1, 1)

    def generate_iter(
        self,
        context: Sequence[Image.Image] = (),
        num_images: int = 4,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        context_cache: bool = True,
        max_context: int | None = None,
        scheduler: str | None = None,
        on_step: Callable[[], None] | None = None,
        params: SamplingParams | None = None,
    ) -> Iterator[GeneratedImage]:
        """Yield each generated image as soon as it is done; each one joins the context of the next.

        The sampling settings are `params` (SamplingParams), or the keywords as a shorthand for one (the
        ones not given take SamplingParams' defaults); not both.
        """
        params = SamplingParams.from_keywords(
            params, steps=num_inference_steps, guidance=guidance_scale, seed=seed, scheduler=scheduler,
            max_context=max_context,
        )  # fmt: skip
        if not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images must be a positive integer, got {num_images!r}")
        images = self.prepare(context)
        cache = self.encode_context(images) if context_cache else None
        for k in range(num_images):
            result = self.next_image(images, cache, params, on_step)
            yield result
            images.append(result.image)
            if cache is not None and k < num_images - 1:
                self.encode_context([result.image], cache)  # from its 8-bit pixels, as if given: regeneration is exact

    def next_image(
        self, images: list[Image.Image], cache: ContextCache | None, params: SamplingParams, on_step=None
    ) -> GeneratedImage:
        """The image after the prepared `images`; `cache` holds their K/V, or is None to recompute every step."""
        index = len(images)
        n_cond = 1 if params.guidance != 1.0 else None  # guidance batch: [cond; uncond]
        ctx = self._context_for(context_window(index, params.max_context), images, cache, n_cond)
        seed = image_seed(params.seed, index)
        last, step, scale = self.last_inputs(images) if index and reads_last_image(self.unet) else (None, None, None)
        pixels = self.decode(self.denoise(ctx, seed, params, on_step, last, step, scale))  # (1, 3, H, W)
        if last is not None and self.isa.config.last_image_change and self.isa.config.last_image_pixels:
            pixels = self.on_last_pixels(pixels, images[-1], last)
        return GeneratedImage(index, seed, to_pil(pixels)[0], (pixels[0].float().cpu() + 1) / 2)

    def on_last_pixels(self, pixels: Tensor, last_image: Image.Image, last: Tensor) -> Tensor:
        """A change model's image (1, 3, H, W) -> the change it drew, decoded, on the last image's own pixels:
        where nothing changes the last image comes back pixel for pixel, not through the autoencoder's round
        trip, which softens every edge (m2m/conditioning.py). Where the change's largest channel is under the ISA
        config's `last_image_change_floor`, it is the sampler's leftover noise, not a step: dropped."""
        change = pixels - self.decode(last)  # (1, 3, H, W)
        change = torch.where(change.abs().amax(1, keepdim=True) >= self.isa.config.last_image_change_floor, change, 0)
        return (to_tensor([last_image]).to(pixels) + change).clamp(-1, 1)

    def last_inputs(self, images: list[Image.Image]) -> tuple[Tensor, Tensor | None, float]:
        """What a UNet that reads them gets beside the noisy latent: the last prepared image's latent (1, 4, h, w)
        and, for a UNet that reads it and two images or more, the last step (1, 4, h, w): that latent minus the
        one's before it, times the change scale; and the change scale (m2m/conditioning.py)."""
        last = self.last_latent(images)
        wanted = len(images) >= 2 and (reads_last_step(self.unet) or self.relative_change)
        return last, *self.step_input(last, self.last_latent(images[:-1]) if wanted else None)

    @property
    def relative_change(self) -> bool:
        """Whether a change model scales each change by its last step's (m2m/conditioning.py)."""
        return self.isa.config.last_image_change and self.isa.config.last_image_change_relative

    def step_input(self, last: Tensor, before: Tensor | None) -> tuple[Tensor | None, float]:
        """From the latents (1, 4, h, w) of the last image and the one before it (None: there is none), the last
        step that the UNet reads, times the change scale (None where it reads none), and that scale."""
        if before is None:
            return None, self.isa.config.last_image_change_scale
        step = last - before  # (1, 4, h, w)
        scale = float(relative_scale(step.float())) if self.relative_change else self.isa.config.last_image_change_scale
        return (step * scale if reads_last_step(self.unet) else None), scale

    @torch.no_grad()
    def last_latent(self, images: list[Image.Image]) -> Tensor:
        """The last prepared image's latent (1, 4, h, w), encoded alone (the same bits whatever the UNet reads)."""
        pixels = to_tensor(images[-1:]).to(self.device, self.vae.dtype)
        return vae_latents(self.vae, pixels).to(self.unet.dtype)

    def _context_for(self, window, images, cache, n_cond) -> Callable[[], CachedContext | None]:
        """Cached: one context for every step. Recomputed (the paper's way): the window re-encoded each step."""
        if not window:
            return lambda: None
        if cache is not None:
            cached = cache.context(window, n_cond)
            return lambda: cached
        encoder = self.context_encoder
        inputs = encoder.inputs(self, [images[i] for i in window])
        return lambda: encoder.cache_inputs(self, inputs).context(list(range(len(window))), n_cond, window)

    def __call__(self, context: Sequence[Image.Image] = (), **kwargs) -> M2MPipelineOutput:
        results = list(self.generate_iter(context, **kwargs))
        return M2MPipelineOutput(
            images=[r.image for r in results], seeds=[r.seed for r in results], indices=[r.index for r in results]
        )
