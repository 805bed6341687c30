"""Open-ended sets: deterministic, open-ended, split as promised, rendered alike in batches and one by one."""

from __future__ import annotations

import colorsys
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from train.data import open_sets
from train.data.loader import make_loader
from train.data.open_sets import (
    FAMILIES,
    HARD_FAMILIES,
    HARD_HUES,
    OpenBatches,
    OpenSets,
    draw_sets,
    render,
    set_record,
)
from train.data.sprites import is_heldout, to_sprite

ROOT = Path(__file__).resolve().parents[1]


def test_a_set_is_fixed_by_its_split_seed_and_index():
    a = OpenSets("train").batch([3, 7], 4)
    b = OpenSets("train").batch([7], 4)
    assert a.shape == (2, 4, 3, 128, 128)
    assert torch.equal(a[1], b[0])  # the same set in any batch
    assert not torch.equal(OpenSets("train", seed=1).batch([7], 4), b)
    assert not torch.equal(OpenSets("heldout").batch([7], 4), b)  # held-out: another seed stream


def test_the_first_images_of_a_set_do_not_depend_on_its_length():
    short, long = OpenSets("heldout").batch([5], 2), OpenSets("heldout").batch([5], 6)
    assert torch.equal(short[0], long[0, :2])


def test_images_are_in_range_and_the_images_of_a_set_differ():
    x = OpenSets("train").batch(list(range(6)), 3)
    assert x.min() >= -1 and x.max() <= 1
    assert all((s[0] - s[1]).abs().mean() > 1e-3 for s in x)  # layout, count, pose vary within a set


def test_no_two_sets_share_a_caption():
    sets = draw_sets("train", list(range(300)), 1)
    palettes = sets["palette"][:, 0]  # each set's first colour, drawn freely
    assert len({tuple(p.tolist()) for p in palettes}) == 300
    assert len(set(sets["family"].tolist())) >= 5


def hues(sets: dict) -> list[float]:
    out = []
    for palette, n in zip(sets["palette"], sets["n_colours"], strict=True):
        for r, g, b in palette[: int(n)].tolist():
            h, s, v = colorsys.rgb_to_hsv(r, g, b)
            if s > 0.05 and v > 0.05:  # a grey has no hue
                out.append(h)
    return out


def test_the_hard_split_holds_hues_and_families_that_training_never_sees():
    lo, hi = HARD_HUES
    train, hard = draw_sets("train", list(range(200)), 1), draw_sets("hard", list(range(200)), 1)
    assert not any(lo + 0.005 < h < hi - 0.005 for h in hues(train))
    assert all(lo - 0.005 <= h <= hi + 0.005 for h in hues(hard))
    held = {FAMILIES.index(f) for f in HARD_FAMILIES}
    assert not held & set(train["family"].tolist())
    assert set(hard["family"].tolist()) <= held


def test_one_set_through_the_loader_is_the_set_of_a_batch():
    record = set_record("heldout", 2, 4)
    assert len(record["images"]) == 4 and record["meta"]["caption"]
    batch = OpenSets("heldout").batch([2], 4)[0]
    as_pixels = torch.tensor(np.stack([np.asarray(img) for img in record["images"]])).permute(0, 3, 1, 2)
    assert (as_pixels.float() / 127.5 - 1 - batch).abs().max() <= 1 / 127.5 + 1e-6  # rounding to 8 bits only


def test_the_loader_reads_open_splits_and_names_them_when_wrong():
    batch = next(iter(make_loader("open:train", 2, 3, 3, workers=0)))
    assert batch["pixels"].shape == (2, 3, 3, 128, 128)
    with pytest.raises(ValueError, match="train, heldout, hard"):
        make_loader("open:test", 2, 3, 3, workers=0)


def test_training_batches_resume_exactly():
    data = OpenBatches("train", 2, 2, 5, "cpu", seed=3)
    first = list(zip(range(8), data.iterate(0), strict=False))
    again = next(OpenBatches("train", 2, 2, 5, "cpu", seed=3).iterate(2))
    assert torch.equal(first[2][1]["pixels"], again["pixels"])
    assert len({b["pixels"].shape[1] for _, b in first}) >= 2  # one K per batch, drawn anew
    with pytest.raises(ValueError, match="min_k"):
        OpenBatches("train", 2, 3, 2, "cpu")


def sprite_atlas(colour: tuple[int, int, int]) -> torch.Tensor:
    img = Image.new("RGBA", (40, 40))
    img.paste((*colour, 255), (8, 8, 32, 32))
    return torch.from_numpy(to_sprite(img, 32))[None]  # (1, 4, 32, 32)


def test_drawings_are_warped_into_place_in_their_own_colours():
    sprites = sprite_atlas((250, 10, 10))
    sets = draw_sets("train", list(range(40)), 2, n_sprites=1)
    drawn = [i for i in range(40) if int(sets["sprite"][i]) == 0 and int(sets["sprite_mode"][i]) == 0]
    assert drawn, "some sets are drawings shown in their own colours"
    x = render({k: v[drawn] for k, v in sets.items()}, 64, "cpu", sprites)  # (B, K, 3, 64, 64)
    red = (x[:, :, 0] > 0.8) & (x[:, :, 1] < -0.7) & (x[:, :, 2] < -0.7)  # (B, K, 64, 64)
    assert bool(red.flatten(2).any(-1).all())


def test_sprites_are_cropped_premultiplied_and_a_tenth_held_out():
    img = Image.new("RGBA", (100, 60))
    img.paste((0, 0, 255, 128), (10, 10, 50, 50))
    sprite = to_sprite(img, 16)
    assert sprite.shape == (4, 16, 16)
    assert sprite[2].max() <= sprite[3].max()  # colour premultiplied by alpha
    assert to_sprite(Image.new("RGBA", (50, 50), (9, 9, 9, 255)), 16) is None  # no transparent ground
    share = np.mean([is_heldout(f"drawing-{i}") for i in range(5000)])
    assert 0.08 < share < 0.12


def test_shards_cli_writes_open_sets(tmp_path):
    open_sets.main(["--out", str(tmp_path), "--split", "hard", "--sets", "4", "--per-shard", "2", "--set-size", "3",
                    "--workers", "0"])  # fmt: skip
    assert len(list(tmp_path.glob("*.tar"))) == 2
    batch = next(iter(make_loader(str(tmp_path), 2, 3, 3, workers=0)))
    assert batch["pixels"].shape == (2, 3, 3, 128, 128)


def test_throughput_bench_splits_a_step_into_its_parts():
    out = subprocess.run([sys.executable, "bench/train_throughput.py", "--variants", "dino", "--batch-sets", "1",
                          "--k", "2", "--steps", "1", "--warmup", "0", "--precision", "fp32"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout  # fmt: skip
    row = next(line for line in out.splitlines() if line.startswith("| dino |")).split("|")
    share = float(row[4].strip().rstrip("%"))
    assert float(row[2]) > 0 and 0 < share < 100  # images/s, and the share of the step outside the UNet


def test_a_set_does_not_depend_on_the_drawings_atlas():
    without, with_atlas = draw_sets("train", list(range(60)), 2), draw_sets("train", list(range(60)), 2, n_sprites=7)
    drawings = with_atlas["sprite"] >= 0
    assert bool(drawings.any()) and bool((without["sprite"] < 0).all())
    for key in ("palette", "bg", "background", "rendering", "lay_centre", "lay_size"):
        assert torch.equal(without[key], with_atlas[key])
    assert torch.equal(without["family"][~drawings], with_atlas["family"][~drawings])


@pytest.mark.parametrize("split", ["simple", "simple-train"])
def test_simple_sets_are_one_flat_shape_on_a_flat_background(split):
    """`open:simple`: per image two colours only (anti-aliased edges aside), the same two in every image of a set;
    a procedural family, never a drawing; its own seed stream, apart from the curriculum's."""
    sets = draw_sets(split, list(range(32)), 3)
    assert (sets["sprite"] == -1).all() and (sets["family"] != FAMILIES.index("drawing")).all()
    families = {FAMILIES[i] for i in sets["family"].tolist()}
    assert len(families) >= 5  # any procedural family; the curriculum's never one that `hard` keeps for itself
    assert bool(families & set(HARD_FAMILIES)) == (split == "simple")
    pixels = OpenSets(split).batch(list(range(8)), 3)  # (8, 3, 3, S, S)
    for images in pixels:
        colours = images.permute(0, 2, 3, 1).reshape(-1, 3)  # every pixel of the set
        _, counts = colours.unique(dim=0, return_counts=True)
        share = counts.sort(descending=True).values[:4].sum() / len(colours)
        assert share > 0.95, share  # background + fill (+ the little colour jitter of each image)
        corners = images[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]  # (K, 3, 4): the background
        assert torch.allclose(corners, corners[:1, :, :1].expand_as(corners), atol=1e-5)
    other = OpenSets("simple-train" if split == "simple" else "simple").batch([0], 3)
    assert not torch.equal(other[0], pixels[0])
