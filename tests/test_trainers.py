"""The small trainers (set embedder, probes) run end to end, and every trainer uses diffusers' schedule."""

from __future__ import annotations

from pathlib import Path

import torch

from train.evaluation.probes import Probe
from train.evaluation.set_embedder import SetEmbedder
from train.training import probes, set_embedder

ROOT = Path(__file__).resolve().parents[1]


def test_set_embedder_trains_and_saves_a_loadable_model(tmp_path):
    metrics = set_embedder.main(["--out", str(tmp_path), "--steps", "2", "--batch-sets", "4", "--eval-every", "2"])
    assert metrics["step"] == 2 and 0 <= metrics["retrieval_64_heldout"] <= 1
    assert 0 <= metrics["retrieval_64_hard_jpeg95"] <= 1
    assert isinstance(SetEmbedder.from_pretrained(str(tmp_path)), SetEmbedder)
    tuned = set_embedder.main(["--out", str(tmp_path / "tuned"), "--init", str(tmp_path), "--steps", "1",
                               "--batch-sets", "4", "--eval-every", "1", "--lr", "0"])  # fmt: skip
    assert tuned["retrieval_64_heldout"] == metrics["retrieval_64_heldout"]  # lr 0: the same weights, on from them


def test_gaussian_blur_keeps_flat_images_and_the_mean_and_removes_fine_detail():
    flat = torch.full((1, 3, 16, 16), 0.3)
    torch.testing.assert_close(set_embedder.gaussian_blur(flat, 1.0), flat)
    checks = (torch.arange(16)[:, None] + torch.arange(16)).remainder(2).float().expand(2, 3, 16, 16) * 2 - 1
    blurred = set_embedder.gaussian_blur(checks, 1.0)
    assert blurred.shape == checks.shape and blurred.std() < 0.1 * checks.std()
    assert abs(blurred.mean() - checks.mean()) < 0.02


def test_degrade_changes_the_share_asked_within_range_and_repeats_by_seed():
    x = torch.rand(64, 3, 32, 32) * 2 - 1
    assert torch.equal(set_embedder.degrade(x, 0.0, torch.Generator().manual_seed(0)), x)
    every = set_embedder.degrade(x, 1.0, torch.Generator().manual_seed(0))
    assert (every - x).flatten(1).abs().amax(1).gt(0).all() and every.abs().max() <= 1
    half = set_embedder.degrade(x, 0.5, torch.Generator().manual_seed(1))
    changed = (half - x).flatten(1).abs().amax(1).gt(0).float().mean()
    assert 0.3 < changed < 0.7
    torch.testing.assert_close(set_embedder.degrade(x, 0.5, torch.Generator().manual_seed(1)), half)


def test_probes_train_and_save_a_loadable_probe(tmp_path):
    probes.main(["--out", str(tmp_path), "--train-sets", "4", "--eval-sets", "2", "--steps", "2", "--batch", "4"])
    assert Probe.load(tmp_path).config["n_content"] > 1


def test_one_schedule_for_every_trainer():
    """Schedules come from diffusers (get_cosine_schedule_with_warmup) or transformers (get_wsd_schedule), not from a
    lambda per script."""
    for path in (ROOT / "train").rglob("*.py"):
        text = path.read_text()
        assert "LambdaLR" not in text and "OneCycleLR" not in text, path
