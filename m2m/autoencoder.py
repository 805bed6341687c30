"""The tiny presets' autoencoder: diffusers' AutoencoderKL with a linear colour path beside the deep one.

A tiny AutoencoderKL trained on open-ended sets learns lightness and returns every image grey: its
latents carry no chroma at all (docs/open-sets.md §4). Lightness is most of an image's variance and
is learnt first; in 200-300 steps, seven variants (norm groups, latent channels, attention, learning
rate, KL weight, width) never started on the colour, where a plain conv autoencoder does within 150.
SD's wide autoencoder learns colour over a long training; ours must learn it in minutes.

So the colour also takes a linear path, with no norm in it, in both directions:

    latent mean = deep encoder(x)  + colour_in(mean of x over each 8x8 block)
    image       = deep decoder(z)  + upsample(colour_out(z))

`colour_in` starts as an orthonormal lightness/opponent-colour basis into the first three latent
channels and `colour_out` as its inverse, while the deep paths start at zero: at initialisation the
round trip is the block-mean image, in colour, and training adds the detail. The interface is
AutoencoderKL's (`encode(x).latent_dist`, `decode(z).sample`, `config.scaling_factor`), and so is
the config: a pipeline folder names this class for its `vae`.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, ModelMixin
from diffusers.models.autoencoders.vae import DecoderOutput
from torch import Tensor, nn

# rows: lightness, red-green, yellow-blue; orthonormal, so colour_out = colour_in's transpose inverts it
COLOUR_BASIS = (
    (1 / math.sqrt(3),) * 3,
    (1 / math.sqrt(2), -1 / math.sqrt(2), 0.0),
    (1 / math.sqrt(6), 1 / math.sqrt(6), -2 / math.sqrt(6)),
)


class ColourAutoencoderKL(AutoencoderKL, ModelMixin):  # ModelMixin named here: diffusers' pipeline
    # loader looks for the base class among a custom component's module attributes
    """AutoencoderKL whose colour also takes a linear path at latent resolution (module docstring)."""

    @functools.wraps(AutoencoderKL.__init__)  # the same config as AutoencoderKL, so from_pretrained reads it
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        c, rgb = self.config.latent_channels, self.config.in_channels
        if c < 3 or rgb != 3 or self.config.out_channels != 3:
            raise ValueError(f"the colour path needs RGB images and >= 3 latent channels, got {rgb} -> {c}")
        self.colour_in, self.colour_out = nn.Conv2d(3, c, 1), nn.Conv2d(c, 3, 1)
        basis = torch.tensor(COLOUR_BASIS)  # (3, 3)
        with torch.no_grad():
            for conv in (self.colour_in, self.colour_out):
                conv.weight.zero_(), conv.bias.zero_()
            self.colour_in.weight[:3, :, 0, 0] = basis
            self.colour_out.weight[:, :3, 0, 0] = basis.T
            self.quant_conv.weight[:c].zero_(), self.quant_conv.bias[:c].zero_()  # the deep mean starts at 0
            self.decoder.conv_out.weight.zero_(), self.decoder.conv_out.bias.zero_()

    @property
    def factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def _encode(self, x: Tensor) -> Tensor:
        """Images (N, 3, H, W) -> moments (N, 2c, H/f, W/f): the deep path's, plus the colour path's mean."""
        moments = super()._encode(x)
        colour = self.colour_in(F.avg_pool2d(x, self.factor))  # (N, c, H/f, W/f)
        return torch.cat([moments[:, : colour.shape[1]] + colour, moments[:, colour.shape[1] :]], 1)

    def _decode(self, z: Tensor, return_dict: bool = True) -> DecoderOutput | tuple[Tensor]:
        """Latents (N, c, h, w) -> images (N, 3, h*f, w*f): the deep path's, plus the colour path's."""
        deep = super()._decode(z, return_dict=False)[0]
        colour = F.interpolate(self.colour_out(z), scale_factor=self.factor, mode="bilinear")  # (N, 3, H, W)
        return DecoderOutput(sample=deep + colour) if return_dict else (deep + colour,)


@torch.no_grad()
def widen_latents(vae: ColourAutoencoderKL, channels: int) -> ColourAutoencoderKL:
    """The same autoencoder with more latent channels, whose round trip is at first exactly the old one.

    Old weights are copied into place (the moments are (mean, logvar), so their old rows move apart);
    every weight that *reads* a new channel starts at zero, and the encoder's rows that *write* the new
    channels at random: the readers learn from the first step and the writers from the second, and
    training teaches the new channels what the old ones could not carry.
    """
    old = vae.config.latent_channels
    if not isinstance(vae, ColourAutoencoderKL):
        raise TypeError(f"widen_latents takes a ColourAutoencoderKL, got {type(vae).__name__}")
    if channels <= old:
        raise ValueError(f"widening needs more than the {old} latent channels there are, got {channels}")
    new = ColourAutoencoderKL.from_config({**vae.config, "latent_channels": channels}).to(vae.device, vae.dtype)
    fresh = nn.Conv2d(2 * channels, channels, 1).to(vae.device, vae.dtype)  # the new deep means: not at zero
    new.quant_conv.weight[old:channels], new.quant_conv.bias[old:channels] = fresh.weight[old:], fresh.bias[old:]
    moments = [*range(old), *range(channels, channels + old)]  # where the old (mean, logvar) entries go

    def placed(size: int, old_size: int) -> list[int]:  # where a dim's old entries go in the wider one
        return list(range(old_size)) if size == old_size else moments if size == 2 * channels else [*range(old)]

    weights = new.state_dict()
    for name, weight in vae.state_dict().items():
        target = weights[name]
        if weight.dim() > 1 and target.shape[1] != weight.shape[1]:
            target[:, old:] = 0  # reads the latents: the new inputs (and the moved logvars' old places) start at 0
        index = [torch.tensor(placed(n, m)) for n, m in zip(target.shape[:2], weight.shape[:2], strict=False)]
        if len(index) == 2:
            index = [index[0][:, None], index[1]]  # rows x columns
        target[tuple(index)] = weight
    return new


def to_model_latents(vae: AutoencoderKL, mode: Tensor) -> Tensor:
    """The autoencoder's posterior mode (N, c, h, w) -> the latents the UNet denoises: diffusers' per-channel
    convention (SDXL's) where the config has `latents_mean` and `latents_std`, (z - mean) * scaling_factor / std,
    else z * scaling_factor."""
    mean, std = channel_stats(vae, mode)
    return (mode - mean) * vae.config.scaling_factor / std


def from_model_latents(vae: AutoencoderKL, latents: Tensor) -> Tensor:
    """The inverse of `to_model_latents`: what the decoder reads."""
    mean, std = channel_stats(vae, latents)
    return latents * std / vae.config.scaling_factor + mean


def channel_stats(vae: AutoencoderKL, like: Tensor) -> tuple[Tensor, Tensor]:
    """The config's per-channel latent mean and std as (1, c, 1, 1) tensors like `like` (0 and 1 without them)."""
    mean, std = vae.config.get("latents_mean"), vae.config.get("latents_std")
    if mean is None or std is None:
        return like.new_zeros(()), like.new_ones(())
    return tuple(like.new_tensor(v).view(1, -1, 1, 1) for v in (mean, std))


@torch.no_grad()
def fit_channel_stats(vae: AutoencoderKL, pixels: Tensor, batch: int = 32) -> dict[str, list[float]]:
    """Images (N, 3, H, W) in [-1, 1] -> every latent channel's mean and std over them, set in the config with a
    scaling factor of 1, so that each channel the UNet denoises has mean 0 and std 1 (the chroma channels of the
    colour autoencoder had a third to a fifth of the lightness channel's spread: docs/tasks.md)."""
    modes = torch.cat([vae.encode(x).latent_dist.mode() for x in pixels.split(batch)])  # (N, c, h, w)
    std = modes.std((0, 2, 3))
    std = torch.where(std > 1e-6, std, torch.ones_like(std))  # a channel that never varies is left unscaled
    stats = {"latents_mean": modes.mean((0, 2, 3)).tolist(), "latents_std": std.tolist()}
    vae.register_to_config(scaling_factor=1.0, **stats)
    return stats


def load_autoencoder(folder: str, **kwargs) -> AutoencoderKL:
    """An autoencoder folder, as the class its config names (AutoencoderKL or ColourAutoencoderKL)."""
    config = AutoencoderKL.load_config(folder, **{k: v for k, v in kwargs.items() if k == "subfolder"})
    cls = ColourAutoencoderKL if config.get("_class_name") == ColourAutoencoderKL.__name__ else AutoencoderKL
    return cls.from_pretrained(folder, **kwargs)
