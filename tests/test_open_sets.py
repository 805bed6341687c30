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
    INSTANCES,
    MAX_COUNTS,
    OpenBatches,
    OpenSets,
    draw_sets,
    lowbias32,
    render,
    set_key,
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


def test_a_sets_parameters_do_not_depend_on_its_batch_or_its_place_there():
    batch, alone = draw_sets("train", [5, 9, 2], 6, n_sprites=7), draw_sets("train", [9], 6, n_sprites=7)
    assert all(torch.equal(batch[key][1], alone[key][0]) for key in batch)
    as_range = draw_sets("train", range(4, 10), 6, n_sprites=7)  # a range is made on the device
    assert all(torch.equal(as_range[key][5], alone[key][0]) for key in batch)


def exact_lowbias32(x: int) -> int:
    """The reference in Python ints, which never overflow."""
    x ^= x >> 16
    x = x * 0x7FEB352D % 2**32
    x ^= x >> 15
    x = x * 0x846CA68B % 2**32
    return x ^ (x >> 16)


def test_the_hash_is_exact_32_bit_arithmetic_in_int64():
    values = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, *np.random.default_rng(0).integers(0, 2**32, 2000).tolist()]
    assert lowbias32(torch.tensor(values)).tolist() == [exact_lowbias32(v) for v in values]
    seed = 2**40 + 3  # seeds and indices past 32 bits too
    assert set_key("heldout", torch.arange(10), seed).tolist() == [set_key("heldout", i, seed) for i in range(10)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_draws_the_sets_the_cpu_draws():
    cpu, cuda = draw_sets("hard", range(64), 5, n_sprites=9), draw_sets("hard", range(64), 5, 0, 9, "cuda")
    for key, v in cpu.items():
        if v.is_floating_point():  # up to float rounding
            torch.testing.assert_close(cuda[key].cpu(), v, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(cuda[key].cpu(), v), key


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


def close(values: torch.Tensor, expected: list[float]) -> bool:
    """The frequencies of values 0, 1, ... are within 4.5 standard errors of `expected`."""
    expected = torch.tensor(expected, dtype=torch.float64)
    observed = torch.bincount(values.flatten().long(), minlength=len(expected)).double() / values.numel()
    return bool(((observed - expected).abs() <= 4.5 * (expected * (1 - expected) / values.numel()).sqrt()).all())


def test_sets_keep_the_distributions_of_the_code():
    n = 3000
    train, hard = draw_sets("train", range(n), 1, n_sprites=4), draw_sets("hard", range(n), 1, n_sprites=4)
    for sets, split in ((train, "train"), (hard, "hard")):
        families = [f for f in FAMILIES if (f in HARD_FAMILIES) == (split == "hard") or f == "drawing"]
        assert close(sets["family"], [(f in families) / len(families) for f in FAMILIES])
    assert close(train["sprite"][train["sprite"] >= 0], [1 / 4] * 4)  # the atlas's drawings alike
    union = train["family"] == FAMILIES.index("union")  # 2 or 3 primitives, the other families 1 (hard's 2)
    assert close(train["prim_active"][union].sum(-1) - 2, [1 / 2, 1 / 2])
    assert bool((train["prim_active"][~union].sum(-1) == 1).all())
    assert torch.equal(hard["prim_active"].sum(-1), torch.where(hard["sprite"] >= 0, 1, 2))
    max_counts = [MAX_COUNTS.count(m) / len(MAX_COUNTS) for m in range(INSTANCES + 1)]
    assert close(train["max_count"], max_counts)
    counts = [sum(max_counts[m] / m for m in range(c, INSTANCES + 1)) for c in range(1, INSTANCES + 1)]
    assert close(train["lay_active"][:, 0].sum(-1) - 1, counts)  # an image's count: 1 to its set's most
    for key, expected in (("n_colours", [0] + [1 / 3] * 3), ("rendering", [1 / 4] * 4), ("background", [1 / 6] * 6),
                          ("sprite_mode", [1 / 2, 1 / 4, 1 / 4]), ("shadow", [0.7, 0.3])):  # fmt: skip
        assert close(train[key], expected), key
    lo, hi = HARD_HUES
    h = torch.tensor(hues({"palette": train["palette"], "n_colours": torch.full((n,), 3)}))  # all 3 colours
    u = torch.where(h < lo, h, h - (hi - lo)) / (1 - (hi - lo))  # the hues with the band cut out, in [0, 1]
    assert close((u * 9).long().clamp(max=8), [1 / 9] * 9)  # flat away from the band


@pytest.mark.parametrize("split", ["simple", "simple-train"])
def test_simple_sets_keep_the_distributions_of_the_code(split):
    n = 3000
    sets = draw_sets(split, range(n), 2, n_sprites=4)  # an atlas, which the simple splits never draw from
    families = [f for f in FAMILIES if f != "drawing" and (split == "simple" or f not in HARD_FAMILIES)]
    assert close(sets["family"], [(f in families) / len(families) for f in FAMILIES])
    assert bool((sets["sprite"] == -1).all())
    assert bool((sets["lay_active"].sum(-1) == 1).all()) and bool((sets["lay_colour"] == 0).all())  # one, flat
    for key in ("background", "rendering", "shadow"):  # flat, flat, none
        assert bool((sets[key] == 0).all()), key
    union = sets["family"] == FAMILIES.index("union")
    assert close(sets["prim_active"][union].sum(-1) - 2, [1 / 2, 1 / 2])
    assert close(sets["sprite_mode"], [1 / 2, 1 / 4, 1 / 4])  # drawn as the full caption draws it, unused


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
