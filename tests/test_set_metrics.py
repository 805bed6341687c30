"""Label-free set metrics: the truth scores near 1, images from other sets near chance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from m2m.images import to_pil, to_tensor
from train.data.open_sets import OpenSets
from train.evaluation.set_embedder import SetEmbedder, colour_free
from train.evaluation.set_metrics import (
    DEFAULT_EMBEDDER,
    SetMetrics,
    as_jpeg,
    colour_histograms,
    own_set_retrieval,
    recoloured,
)
from train.training.set_embedder import info_nce, random_view

GROUP = 16


@pytest.fixture(scope="module")
def open_sets() -> tuple[list[list], list[list]]:
    """32 held-out open sets: 3 context images and the 2 true next ones of each."""
    return split_sets("heldout")


def split_sets(split: str, groups: int = 2) -> tuple[list[list], list[list]]:
    """`groups` x 16 open sets of `split`: 3 context images and the 2 true next ones of each."""
    sets = [to_pil(s) for s in OpenSets(split, seed=5).batch(range(groups * GROUP), 5)]
    return [s[:3] for s in sets], [s[3:] for s in sets]


def shuffled(outputs: list[list]) -> list[list]:
    return outputs[1:] + outputs[:1]  # every set gets another set's images


def test_retrieval_counts_own_set_hits_in_groups():
    ctx = torch.eye(GROUP)[:, None].expand(-1, 2, -1)  # (S, C, D): set i points along axis i
    assert own_set_retrieval(ctx[:, :1], ctx, GROUP) == 1.0
    assert own_set_retrieval(ctx.roll(1, 0)[:, :1], ctx, GROUP) == 0.0
    with pytest.raises(ValueError, match="not a multiple of 16"):
        own_set_retrieval(ctx[:4], ctx[:4], GROUP)


def test_colour_histograms_are_unit_vectors_that_tell_colours_apart():
    red, blue = torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)
    red[:, 0], blue[:, 2] = 1.0, 1.0
    h = colour_histograms(torch.cat([red, blue, red]))
    assert torch.allclose(h.norm(dim=1), torch.ones(3))
    assert h[0] @ h[2] > 0.99 and h[0] @ h[1] < 0.01


def test_colour_retrieval_of_the_truth_is_high_and_of_other_sets_near_chance(open_sets):
    contexts, truth = open_sets
    metrics = SetMetrics(SetEmbedder(), GROUP)  # colour needs no trained weights
    assert metrics(contexts, truth)["colour_retrieval"] >= 0.95
    assert metrics(contexts, shuffled(truth))["colour_retrieval"] <= 0.15


def test_recoloured_keeps_lightness_and_turns_chroma():
    x = torch.rand(2, 3, 8, 8) * 1.2 - 0.6  # away from the clamp
    assert torch.allclose(recoloured(x), x, atol=1e-5)
    assert torch.allclose(recoloured(x, degrees=360), x, atol=1e-5)
    assert torch.allclose(recoloured(x, degrees=120).mean(1), x.mean(1), atol=1e-5)  # lightness kept
    assert torch.allclose(recoloured(x, degrees=120), x.roll(1, dims=1), atol=1e-5)  # a third of a turn: R -> G -> B
    small = x * 0.4  # doubled chroma stays inside [-1, 1]
    chroma = small - small.mean(1, keepdim=True)
    assert torch.allclose(recoloured(small, saturation=2.0), small + chroma, atol=1e-5)
    grey = recoloured(x, saturation=0.0)
    assert torch.allclose(grey, x.mean(1, keepdim=True).expand_as(x), atol=1e-5)


@pytest.mark.parametrize("split", ["heldout", "hard"])
def test_colour_retrieval_ignores_a_change_no_one_sees_and_catches_one_anyone_sees(split):
    """JPEG q95 keeps the truth's score; a hue turned by 30 degrees or a halved saturation loses most of it.
    (With 16 bins per axis the truth and its JPEG copy scored 0.94 on open:hard here.) Over 64 sets: on 32, the
    turned hue's score spreads over 0.31-0.64 from one draw of sets to the next (mean 0.44-0.51, under the
    per-set generators and the batched draws alike)."""
    contexts, truth = split_sets(split, groups=4)
    metrics = SetMetrics(SetEmbedder(), GROUP)
    assert metrics(contexts, truth)["colour_retrieval"] >= 0.95
    assert metrics(contexts, [[as_jpeg(img, 95) for img in row] for row in truth])["colour_retrieval"] >= 0.95
    for change, most in [(dict(degrees=30), 0.6), (dict(saturation=0.5), 0.35)]:
        changed = [to_pil(recoloured(to_tensor(row), **change)) for row in truth]
        assert metrics(contexts, changed)["colour_retrieval"] <= most


def test_colour_retrieval_of_grey_images_is_chance(open_sets):
    """Grey outputs of the right lightness must not score: colour means chroma here."""
    contexts, truth = open_sets
    grey = [[img.convert("L").convert("RGB") for img in row] for row in truth]
    assert SetMetrics(SetEmbedder(), GROUP)(contexts, grey)["colour_retrieval"] <= 1.5 / GROUP


@pytest.mark.skipif(not Path(DEFAULT_EMBEDDER).exists(), reason="no shipped set embedder")
def test_shipped_embedder_retrieves_the_truth_and_not_other_sets(open_sets):
    contexts, truth = open_sets
    metrics = SetMetrics.load(DEFAULT_EMBEDDER, GROUP)
    right, wrong = metrics(contexts, truth), metrics(contexts, shuffled(truth))
    assert right["shape_retrieval"] >= 0.95
    assert wrong["shape_retrieval"] <= 0.2
    assert right["similarity"] > wrong["similarity"]


@pytest.mark.skipif(not Path(DEFAULT_EMBEDDER).exists(), reason="no shipped set embedder")
@pytest.mark.parametrize("split", ["heldout", "hard"])
def test_shipped_embedder_is_not_fooled_by_a_change_of_detail(split):
    """The truth saved as JPEG q95, or through a 4x coarser grid, is still its own set's: the embedder judges
    shape, not pixel-exact texture (the H200 one gave 0.67 and 0.52 on open:hard here, 0.95 untouched)."""
    contexts, truth = split_sets(split)
    metrics = SetMetrics.load(DEFAULT_EMBEDDER, GROUP)
    jpeg = [[as_jpeg(img, 95) for img in row] for row in truth]
    coarse = [[img.resize((32, 32), Image.BOX).resize(img.size, Image.BILINEAR) for img in row] for row in truth]
    for changed in (jpeg, coarse):
        assert metrics(contexts, changed)["shape_retrieval"] >= 0.85
        assert metrics(contexts, shuffled(changed))["shape_retrieval"] <= 0.2


def test_the_embedder_view_has_no_colour():
    x = OpenSets("train").batch([0, 1], 1)[:, 0]  # (2, 3, H, W)
    swapped = x[:, [2, 0, 1]]  # the same images in other colours
    equal_weights = torch.full((2, 3), 1 / 3)
    assert torch.allclose(colour_free(x, equal_weights), colour_free(swapped, equal_weights), atol=1e-5)
    assert random_view(x, torch.Generator().manual_seed(0)).shape == (2, 2, 128, 128)


def test_info_nce_prefers_matching_views():
    a = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    assert info_nce(a, a) < info_nce(a, a.roll(1, 0))
