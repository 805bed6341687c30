"""The tiny image encoder's self-distillation pieces, and the zero-shot palette/style metrics."""

import json

import numpy as np
import torch
from PIL import Image
from transformers import Dinov2Config, Dinov2Model

from m2m.sampling import SamplingParams
from train.evaluation import zero_shot
from train.evaluation.set_embedder import LUMA
from train.training import encoder


def test_random_crops_have_the_asked_size_and_keep_colours():
    pixels = torch.rand(3, 3, 64, 64) * 2 - 1
    gen = torch.Generator().manual_seed(0)
    crops = encoder.random_crops(pixels, 2, 32, (0.3, 1.0), gen)
    assert crops.shape == (6, 3, 32, 32)
    assert crops.min() >= -1.01 and crops.max() <= 1.01  # resized and mirrored only: no colour change
    flat = torch.full((1, 3, 64, 64), 0.25)
    assert torch.allclose(encoder.random_crops(flat, 3, 16, (0.1, 0.5), gen), torch.tensor(0.25))


def test_dino_loss_is_lower_when_the_student_agrees_with_the_teacher():
    teacher = [torch.randn(8, 32) * 3 for _ in range(2)]
    center = torch.zeros(1, 32)
    agree = encoder.dino_loss([t[[0, 1, 2, 3, 4, 5, 6, 7]] for t in teacher[::-1]], teacher, center, 0.1, 0.04)
    disagree = encoder.dino_loss([torch.randn(8, 32) * 3 for _ in range(2)], teacher, center, 0.1, 0.04)
    assert agree < disagree


def test_knn_accuracy_separates_clusters():
    bank = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.1, 0.9]]), dim=1)
    labels = torch.tensor([0, 0, 1, 1])
    assert encoder.knn_accuracy(bank, labels, bank, labels, k=2) == 1.0


def test_pretrain_encoder_runs_and_saves_a_dinov2_model(tmp_path):
    metrics = encoder.main(["--out", str(tmp_path / "enc"), "--steps", "2", "--batch-sets", "2",
                                     "--local-crops", "1", "--eval-sets", "4", "--save-every", "2"])  # fmt: skip
    assert metrics["step"] == 2 and 0 <= metrics["knn_content"] <= 1
    model = Dinov2Model.from_pretrained(tmp_path / "enc")
    assert model.config.hidden_size == 192
    assert json.loads((tmp_path / "enc" / "metrics.json").read_text())["step"] == 2


def solid(colour, noise=0):
    rng = np.random.default_rng(sum(colour) + noise)
    arr = np.clip(np.array(colour)[None, None] + rng.integers(-20, 20, (32, 32, 3)) * (noise > 0), 0, 255)
    return Image.fromarray(arr.astype(np.uint8))


def test_zero_shot_metrics_reward_keeping_the_palette():
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 220)]
    contexts = [[solid(c, n) for n in range(3)] for c in colours]
    same = zero_shot.consistency(contexts, [[solid(c, 9)] for c in colours])
    shuffled = zero_shot.consistency(contexts, [[solid(c, 9)] for c in colours[1:] + colours[:1]])
    assert same["palette_retrieval"] == 1.0 and shuffled["palette_retrieval"] == 0.0
    assert same["palette_distance"] < shuffled["palette_distance"]
    assert same["style_distance"] < shuffled["style_distance"]


def test_zero_shot_sets_ship_with_the_examples():
    sets = zero_shot.load_sets(zero_shot.Path("examples/zero-shot"))
    assert len(sets) == 8 and all(len(s) == 4 for s in sets.values())


def test_zero_shot_and_contact_sheet_scripts_run_on_a_checkpoint(micro, tmp_path):
    from m2m.presets import build_pipeline
    from train.evaluation import contact_sheets

    build_pipeline(micro, "self").save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "zs.json"
    results = zero_shot.main(["--checkpoint", str(tmp_path / "ckpt"), "--generate", "1", "--steps", "2",
                              "--out", str(out)])  # fmt: skip
    assert set(results) == {"model", "no-context", "chance_retrieval"} and out.is_file()
    assert SamplingParams.from_json(json.loads(out.read_text())) == SamplingParams(steps=2)  # what it sampled with
    sheets = [contact_sheets.main(["--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / f"{i}.png"),
                                   "--data", data, "--sets", "2", "--context", "2", "--generate", "1", "--steps", "2"])
              for i, data in enumerate(("synth:heldout", "open:heldout"))]  # fmt: skip
    synth, open_sets = (np.asarray(Image.open(sheet)) for sheet in sheets)
    assert synth.shape[0] == 2 * 128 + 4  # two rows
    assert synth.shape == open_sets.shape and (synth != open_sets).any()  # --data picked the sets


def test_grey_probe_sees_lightness_not_colour_and_open_sets_report_it():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    lum = torch.tensor(LUMA)
    hue = torch.linalg.cross(lum, torch.tensor([1.0, 0, 0]))  # a colour change that keeps the luminance
    shifted = x + 0.2 * hue[None, :, None, None]
    torch.testing.assert_close(encoder.grey(shifted), encoder.grey(x))
    assert torch.equal(encoder.grey(x)[:, 0], encoder.grey(x)[:, 2])
    assert not torch.allclose(encoder.grey(x * 0.5), encoder.grey(x))  # lightness still shows

    from m2m.presets import TINY

    backbone = Dinov2Model(Dinov2Config(**{**TINY.image_encoder, "num_hidden_layers": 1}))
    bank, queries = encoder.probe_sets("open:train", 4, 64, 0)
    metrics = encoder.evaluate(backbone, bank, queries, 64)
    assert set(metrics) == {"set_retrieval", "set_retrieval_grey", "set_retrieval_seen", "set_retrieval_grey_seen"}
    assert all(0 <= v <= 1 for v in metrics.values())
