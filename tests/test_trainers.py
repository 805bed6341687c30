"""The small trainers (set embedder, probes) run end to end, and every trainer uses diffusers' schedule."""

from __future__ import annotations

from pathlib import Path

from train.evaluation.probes import Probe
from train.evaluation.set_embedder import SetEmbedder
from train.training import probes, set_embedder

ROOT = Path(__file__).resolve().parents[1]


def test_set_embedder_trains_and_saves_a_loadable_model(tmp_path):
    metrics = set_embedder.main(["--out", str(tmp_path), "--steps", "2", "--batch-sets", "4", "--eval-every", "2"])
    assert metrics["step"] == 2 and 0 <= metrics["retrieval_64_heldout"] <= 1
    assert isinstance(SetEmbedder.from_pretrained(str(tmp_path)), SetEmbedder)


def test_probes_train_and_save_a_loadable_probe(tmp_path):
    probes.main(["--out", str(tmp_path), "--train-sets", "4", "--eval-sets", "2", "--steps", "2", "--batch", "4"])
    assert Probe.load(tmp_path).config["n_content"] > 1


def test_one_schedule_for_every_trainer():
    """Warm-up and cosine come from diffusers (get_cosine_schedule_with_warmup), not from a lambda per script."""
    for path in (ROOT / "train").rglob("*.py"):
        text = path.read_text()
        assert "LambdaLR" not in text and "OneCycleLR" not in text, path
