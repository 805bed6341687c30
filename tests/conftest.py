"""Tiny seeded components built from config: no download ever happens in the tests."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before any Hugging Face import: a download attempt fails loudly

import pytest
import torch
from PIL import Image

from m2m.presets import TINY, Preset, build_pipeline

torch.set_num_threads(2)

# The tiny preset's structure at test size: 64x64 images -> 8x8 latents, ISA at two levels.
MICRO = TINY.replace(
    name="micro",
    unet=dict(
        TINY.unet,
        sample_size=8,
        block_out_channels=(32, 64),
        attention_head_dim=(2, 4),
        cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=16,
        layers_per_block=1,
    ),
    vae=dict(TINY.vae, sample_size=64, block_out_channels=(16, 16, 16, 16), norm_num_groups=8),
    image_encoder=dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=16, image_size=64
    ),
    image_encoder_size=64,
    max_context_tokens=16,  # pools the 8x8 level to 4x4: the pooling path is always exercised
)


@pytest.fixture(scope="session")
def micro() -> Preset:
    return MICRO


FLAT = dict(recent_context_images=1, older_context_tokens=4)  # images before the last one: 2x2 tokens (DINO: + CLS)


@pytest.fixture(scope="session", params=["self", "dino", "self+reference", "dino+flat"])
def pipe(request):
    """Each variant as the paper has it; M2M-Self with reference attention to its 2 most recent context images and
    older images pooled harder; M2M-DINO with older images pooled harder."""
    variant, _, extra = request.param.partition("+")
    preset = {"": MICRO, "reference": MICRO.replace(reference_images=2, **FLAT), "flat": MICRO.replace(**FLAT)}[extra]
    return build_pipeline(preset, variant, seed=0)


@pytest.fixture(scope="session")
def self_pipe():
    return build_pipeline(MICRO, "self", seed=0)


def colour_images(n: int, size=(40, 30)) -> list[Image.Image]:
    """Distinct, deterministic context images."""
    g = torch.Generator().manual_seed(n)
    return [
        Image.fromarray((torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()) for _ in range(n)
    ]


@pytest.fixture(scope="session")
def images():
    return colour_images


@pytest.fixture(scope="session")
def clip_tokenizer(tmp_path_factory):
    """A character-level CLIPTokenizer written on the spot (no vocabulary download)."""
    import json

    from transformers import CLIPTokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in [chr(c) for c in range(ord("a"), ord("z") + 1)] + [",", "."]:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)
