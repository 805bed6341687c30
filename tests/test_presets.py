"""Presets: the tiny budget, the SD-2.1-base architecture from config, and no downloads."""

import os

import pytest
import torch

from m2m.attention import NullContext
from m2m.presets import PRESETS, SD21_BASE, TINY, build_pipeline, from_hub, get_preset


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_tiny_fits_the_cpu_budget():
    pipe = build_pipeline(TINY, "dino")
    assert n_params(pipe.unet) <= 20e6
    assert n_params(pipe.image_encoder) <= 5e6
    assert pipe.resolution == 128 and pipe.unet.config.sample_size == 16
    with torch.no_grad():
        latent = pipe.vae.encode(torch.zeros(1, 3, 128, 128)).latent_dist.mode()
    assert latent.shape == (1, 4, 16, 16)
    assert pipe.scheduler.config.prediction_type == "v_prediction"


def test_unknown_preset_and_variant():
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("sd15")
    with pytest.raises(ValueError, match="variant"):
        build_pipeline("tiny", "clip")
    assert set(PRESETS) == {"tiny", "sd21-base"}


def test_offline_is_honoured():
    """Loading hub weights with HF_HUB_OFFLINE=1 (set by conftest) fails with a clear error, downloading nothing."""
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(OSError, match="HF_HUB_OFFLINE"):
        from_hub("sd21-base", hub_id="m2m-tests/not-a-cached-repo")


def test_sd21_base_architecture_runs_at_a_small_latent():
    """The real SD-2.1-base UNet (865M parameters) with ISA, random weights, one forward at 8x8 latents."""
    preset = SD21_BASE.replace(unet={**SD21_BASE.unet, "sample_size": 8})
    torch.manual_seed(0)
    pipe = build_pipeline(preset, "self")
    assert 850e6 < n_params(pipe.unet) < 880e6  # SD-2.1-base: 865.9M
    assert len(pipe.isa.layers) == 16  # every transformer block that had text cross-attention
    latents = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        cache = pipe.context_encoder.cache_inputs(pipe, latents[:1])
        out = pipe.unet(latents[1:], torch.tensor([500]), None, cross_attention_kwargs={"isa": cache.context([0])})
        null = pipe.unet(latents[1:], torch.tensor([500]), None, cross_attention_kwargs={"isa": NullContext()})
    assert out.sample.shape == (1, 4, 8, 8)
    assert not torch.allclose(out.sample, null.sample)
