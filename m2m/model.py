"""The set-level training forward: teacher forcing over whole image sets (Shen et al. 2024, Fig. 1 left)."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from torch import Tensor, nn
from transformers import Dinov2Model

from m2m.attention import ImageSetAttention, install
from m2m.conditioning import (
    after_rows,
    change_scales,
    last_steps,
    previous_latents,
    reads_last_image,
    reads_last_step,
    unet_input,
)
from m2m.encoders import context_encoder


class M2MModel(nn.Module):
    """UNet + ISA weights (+ frozen DINO); `forward` gives the per-image diffusion loss of a batch of sets."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        isa: ImageSetAttention,
        scheduler: DDIMScheduler,
        image_encoder: Dinov2Model | None = None,
        context_dropout: float = 0.1,
    ):
        super().__init__()
        self.unet, self.isa, self.image_encoder = unet, isa, image_encoder
        self.scheduler, self.context_dropout = scheduler, context_dropout
        if image_encoder is not None:
            image_encoder.requires_grad_(False).eval()  # frozen, as DINOv2 in the paper
        self.encoder = context_encoder(isa, image_encoder)  # the variant, chosen once
        install(unet, isa)

    @property
    def variant(self) -> str:
        return self.isa.config.variant

    def forward(
        self,
        latents: Tensor,
        pixels: Tensor | None = None,
        timesteps: Tensor | None = None,
        noise: Tensor | None = None,
        sees_context: Tensor | None = None,
    ) -> Tensor:
        """Sets of clean latents (B, K, 4, h, w) -> per-image MSE (B, K) of the scheduler's target (ε or v).

        Every image is noised at its own timestep; image i is predicted from the clean
        images 1..i-1 of its set only. One UNet call, no loop over images. `pixels`: the sets
        (B, K, 3, H, W) in [-1, 1], which M2M-DINO reads (M2M-Self reads the latents). The optional arguments fix the
        randomness (timesteps (B*K,), noise like latents flattened, sees_context (B, K)).
        """
        b, k = latents.shape[:2]
        x0 = latents.flatten(0, 1)  # (B*K, 4, h, w)
        if timesteps is None:
            timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (b * k,), device=x0.device)
        noise = torch.randn_like(x0) if noise is None else noise
        if sees_context is None:  # context dropout: learns the null context for guidance
            sees_context = torch.rand(b, k, device=x0.device) >= self.context_dropout
        last = self.last_images(x0, sees_context)
        denoised = x0  # the image, or its change from the last, scaled (m2m/conditioning.py)
        if last is not None and self.isa.config.last_image_change:
            denoised = (x0 - last) * self.change_scales(x0, k)
        xt = self.scheduler.add_noise(denoised, noise, timesteps)
        pred = self.predict(x0, xt, timesteps, sees_context, pixels, last)  # (B*K, 4, h, w)
        return (pred.float() - self.target(denoised, noise, timesteps).float()).pow(2).mean((1, 2, 3)).view(b, k)

    def predict(self, x0: Tensor, xt: Tensor, timesteps: Tensor, sees_context: Tensor, pixels: Tensor | None,
                last: Tensor | None = None) -> Tensor:  # fmt: skip
        """The noisy images' predictions; `last`: `last_images(x0, sees_context)` where the caller has it."""
        sample, t, context = self.encoder.training_batch(self, x0, xt, timesteps, sees_context, pixels)
        last = self.last_images(x0, sees_context) if last is None else last
        if last is not None:  # the noisy images (the last B*K rows) read their predecessor's latent (and last step)
            extra = (last, self.last_steps(x0, sees_context))  # zeros for the rows of M2M-Self's clean pass
            sample = unet_input(self.unet, sample, *(None if x is None else after_rows(x, len(sample)) for x in extra))
        out = self.unet(sample, t, encoder_hidden_states=None, cross_attention_kwargs={"isa": context}).sample
        return out[-xt.shape[0] :]  # (B*K, 4, h, w): the noisy images' predictions

    def last_images(self, x0: Tensor, sees_context: Tensor) -> Tensor | None:
        """Each image's predecessor's clean latent (B*K, 4, h, w), for a UNet that reads it; a dropped context hides
        it unless the model denoises the change from it (then guidance's both branches read it)."""
        if not reads_last_image(self.unet):
            return None
        return previous_latents(x0, sees_context | self.isa.config.last_image_change)

    def last_steps(self, x0: Tensor, sees_context: Tensor) -> Tensor | None:
        """Each image's last step (B*K, 4, h, w), for a UNet that reads it; a dropped context hides it."""
        if not reads_last_step(self.unet):
            return None
        return last_steps(x0, sees_context, self.change_scales(x0, sees_context.shape[1]))

    def change_scales(self, x0: Tensor, k: int) -> Tensor:
        """What each image of sets of K flattened (B*K, 4, h, w) multiplies its change by: (B*K, 1, 1, 1)."""
        cfg = self.isa.config
        relative = cfg.last_image_change and cfg.last_image_change_relative  # as generation reads it (pipeline.py)
        return change_scales(x0, k, cfg.last_image_change_scale, relative)

    def target(self, x0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """ε for ε-prediction (SD-2.1-base), v = α·ε − σ·x0 for v-prediction (the tiny preset)."""
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "v_prediction":
            return self.scheduler.get_velocity(x0, noise, timesteps)
        raise ValueError(f"unsupported prediction_type {kind!r}")
