"""The packed drawings' atlas: a thinned, xz-packed copy of the training sprites for a size-limited upload."""

import numpy as np
import pytest
import torch

from train.data.sprites import load_sprites, pack


@pytest.fixture
def atlas(tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (200, 4, 16, 16), dtype=np.uint8)  # noise: xz cannot shrink it much
    heldout = np.arange(200) % 10 == 0
    path = tmp_path / "sprites.npz"
    np.savez_compressed(path, rgba=rgba, names=np.array([f"s{i}" for i in range(200)]), heldout=heldout)
    return path, rgba, heldout


def test_pack_keeps_training_sprites_within_its_size(atlas, tmp_path):
    path, rgba, heldout = atlas
    out = tmp_path / "gpu.npz.xz"
    info = pack(path, out, max_mb=0.1)  # a sprite is ~1 kB: about 100 of the 180 fit
    assert out.stat().st_size <= 0.1e6 and info["of"] == 180 and 50 < info["sprites"] < 180
    packed = load_sprites("train", out)
    assert packed.shape == (info["sprites"], 4, 16, 16)
    train = {bytes(s) for s in rgba[~heldout]}
    assert all(bytes(s) in train for s in packed.numpy())  # training sprites only, unchanged
    assert torch.equal(load_sprites("train", path), torch.from_numpy(rgba[~heldout]))  # the atlas itself as before


def test_a_packed_atlas_refuses_the_hard_split(atlas, tmp_path):
    out = tmp_path / "gpu.npz.xz"
    pack(atlas[0], out, max_mb=1.0)
    assert len(load_sprites("heldout", out)) == 180  # every training sprite fits in 1 MB
    with pytest.raises(ValueError, match="no sprites for the 'hard' split"):
        load_sprites("hard", out)
