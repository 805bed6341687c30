"""The last context image as extra input channels of the UNet: beside ISA, off by default (the paper's model).

A UNet with twice the channels in that it predicts reads the noisy latent and, channel-concatenated, the clean
latent of the image just before it (zeros where there is none, and in M2M-Self's clean pass), as InstructPix2Pix
and Zero123 condition on an image. A task whose next image is mostly the last one (a procedure's step, a small
turn of an object) then starts from it pixel for pixel, and ISA carries the rest of the set. One latent per new
image: the cost stays flat as the set grows. Two ways to use it (`ImageSetAttention.config.last_image_change`):

- **input**: the model denoises the new image; context dropout (guidance's unconditional branch) hides the last
  image as it hides ISA's context;
- **change**: the model denoises the change from the last image, x0 − last, which is zero wherever the image
  stays as it was (a flat background, the part of a procedure already done), and the new image is last + change.
  Both branches of guidance read the last image, so that guidance pushes along what the set's history adds.
  A change is small (its rms a quarter of an image's on `procedure:train`): the model denoises it times
  `last_image_change_scale` (1 / its rms, `python -m train.training.latent_stats --changes`), so that the noise
  schedule, made for data of unit spread, is not four times noisier for it; a set's first image, which has no
  last one, is denoised as an image.

A UNet with three times the channels reads, besides, **the last step**: the last image's latent minus the one's
before it, times the change scale (zeros before a set's third image). It says where the set last changed,
pixel for pixel (the stroke just drawn, the cell just filled, which way the object just turned), which ISA's
pooled context tokens blur; guidance's unconditional branch does not see it, as it does not see ISA's context.

One scale for every set fits the average change, not each set's: an object whose turn moves only a colour boundary
changes a third as much as a table does, and sits at a third of the signal against the same noise. With
`last_image_change_relative`, from a set's third image on, the change (and the last step read) is scaled by
1 / the rms of the last step instead, at most `RELATIVE_MAX`: the model denoises the next change in units of the
last one, which a set of equal turns or like steps keeps near 1.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from torch import Tensor, nn


def extra_inputs(unet: UNet2DConditionModel) -> int:
    """How many latents the UNet reads beside the noisy one: 0, 1 (the last image) or 2 (and the last step)."""
    return unet.config.in_channels // unet.config.out_channels - 1


def reads_last_image(unet: UNet2DConditionModel) -> bool:
    """Whether the UNet's input is [noisy latent; last image's latent (; last step)]."""
    return extra_inputs(unet) >= 1


def reads_last_step(unet: UNet2DConditionModel) -> bool:
    """Whether the UNet's input is [noisy latent; last image's latent; last step] (three times what it predicts)."""
    return extra_inputs(unet) == 2


def unet_input(
    unet: UNet2DConditionModel, sample: Tensor, last: Tensor | None = None, step: Tensor | None = None
) -> Tensor:
    """Latents (N, c, h, w) -> the UNet's input: as they are, or with `last` and, for a UNet that reads it, `step`
    (N, c, h, w each; None: zeros, none there) as channels: (N, 2c | 3c, h, w)."""
    extra = [last, step][: extra_inputs(unet)]
    return torch.cat([sample, *(torch.zeros_like(sample) if x is None else x.to(sample.dtype) for x in extra)], 1)


def previous_latents(x0: Tensor, sees_context: Tensor) -> Tensor:
    """Training: sets of clean latents flattened (B*K, c, h, w) -> each image's predecessor's latent, zeros for the
    first image of a set and where `sees_context` (B, K) is False: (B*K, c, h, w)."""
    sets = x0.unflatten(0, sees_context.shape)  # (B, K, c, h, w)
    before = torch.cat([torch.zeros_like(sets[:, :1]), sets[:, :-1]], 1)  # (B, K, c, h, w)
    return (before * sees_context[..., None, None, None].to(x0.dtype)).flatten(0, 1)


def last_steps(x0: Tensor, sees_context: Tensor, scales: Tensor) -> Tensor:
    """Training: sets of clean latents flattened (B*K, c, h, w) -> each image's last step, its predecessor minus the
    one before that, times its change scale (`change_scales`, (B*K, 1, 1, 1)); zeros for a set's first two images
    and where `sees_context` (B, K) is False: (B*K, c, h, w)."""
    sets = x0.unflatten(0, sees_context.shape)  # (B, K, c, h, w)
    steps = torch.zeros_like(sets)
    steps[:, 2:] = sets[:, 1:-1] - sets[:, :-2]  # image i: image i-1 - image i-2
    return steps.flatten(0, 1) * scales * sees_context.flatten()[:, None, None, None].to(x0.dtype)


def check_change_floor(floor: float) -> float:
    """A change floor (drawn on the last pixels, a change under it is dropped) is on pixels in [-1, 1]: 0 to 2."""
    if not 0 <= floor < 2:
        raise ValueError(f"the last image's change floor is on pixels in [-1, 1]: 0 to 2, got {floor}")
    return floor


RELATIVE_MAX = 4.0  # a relative change scale is at most this: a last step of almost nothing says little of the next


def change_scales(x0: Tensor, k: int, scale: float, relative: bool = False) -> Tensor:
    """Training: sets of clean latents flattened (B*K, c, h, w) -> what each image multiplies its change by:
    `scale`, or with `relative` from a set's third image on `relative_scale` of its last step, and 1 for each set's
    first image (no last one: its change is the image itself): (B*K, 1, 1, 1)."""
    sets = x0.unflatten(0, (-1, k))  # (B, K, c, h, w)
    scales = x0.new_full(sets.shape[:2], scale)  # (B, K)
    if relative and k > 2:
        scales[:, 2:] = relative_scale(sets[:, 1:-1] - sets[:, :-2])  # image i: its last step, image i-1 - i-2
    scales[:, 0] = 1.0
    return scales.flatten()[:, None, None, None]


def relative_scale(step: Tensor) -> Tensor:
    """Last steps (..., c, h, w) -> 1 / the rms of each, at most RELATIVE_MAX: (...)."""
    return step.pow(2).mean((-3, -2, -1)).sqrt().clamp(min=1 / RELATIVE_MAX).reciprocal()


def after_rows(last: Tensor, rows: int) -> Tensor:
    """`last` (M, c, h, w) after zeros for the rows of a UNet batch before the noisy images (M2M-Self's clean
    pass): (rows, c, h, w)."""
    return torch.cat([last.new_zeros(rows - last.shape[0], *last.shape[1:]), last])


@torch.no_grad()
def add_last_image_input(unet: UNet2DConditionModel, extra: int = 1) -> None:
    """Widen a UNet's first convolution to read `extra` latents beside the noisy one (1: the last image, 2: and
    the last step), its new weights zero, so that it starts as the model it was (InstructPix2Pix's way of
    fine-tuning a base model to a new input; the `input` way above: a model that denoises the change starts from
    what it predicts, not from the base)."""
    if extra_inputs(unet) >= extra:
        return
    old, c = unet.conv_in, unet.config.out_channels
    new = nn.Conv2d((1 + extra) * c, old.out_channels, old.kernel_size, old.stride, old.padding)
    new.to(old.weight.device, old.weight.dtype)
    new.weight.zero_()
    new.weight[:, : old.in_channels] = old.weight
    new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=new.in_channels)
