"""Evaluation: the metrics behave (truth near the ceiling, shuffled sets near chance), both code paths run."""

import csv
import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from m2m.presets import build_pipeline
from m2m.sampling import SamplingParams
from train.data import synth
from train.evaluation.evaluate import GROUPS, evaluate, frechet_distance, load_sets, probe_metrics, set_scores, table
from train.evaluation.probes import Probe
from train.evaluation.set_embedder import SetEmbedder
from train.evaluation.set_metrics import SetMetrics

PROBES = Path(__file__).resolve().parents[1] / "checkpoints" / "probes"


@pytest.fixture(scope="module")
def probe():
    return Probe.load(PROBES)


@pytest.fixture(scope="module")
def heldout():
    return load_sets("synth:heldout", 24, 6)


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2000, 8)), rng.normal(size=(2000, 8))
    assert frechet_distance(a, b) < 0.05
    assert frechet_distance(a, b + 1.0) == pytest.approx(8.0, rel=0.05)  # |Δμ|² = 8


def test_probes_generalise_to_unseen_combinations(probe):
    import json

    accuracy = json.loads((PROBES / "config.json").read_text())["heldout_accuracy"]
    assert accuracy["content"] >= 0.9 and accuracy["style"] >= 0.9


def test_truth_scores_near_the_ceiling_and_shuffled_sets_near_chance(probe, heldout):
    contexts = [s["images"][:4] for s in heldout]
    truth = [s["images"][4:6] for s in heldout]
    shuffled = truth[1:] + truth[:1]  # each context judged against another set's images
    reference = [img for s in load_sets("synth:heldout", 24, 6, offset=24) for img in s["images"][:2]]
    real = probe_metrics(probe, contexts, truth, reference)
    fake = probe_metrics(probe, contexts, shuffled, reference)
    assert real["content_consistency"] >= 0.85 and real["style_consistency"] >= 0.85
    distinct = sum(a["meta"]["labels"]["content"] != b["meta"]["labels"]["content"]
                   for a, b in zip(heldout, heldout[1:] + heldout[:1], strict=True))  # fmt: skip
    assert fake["content_consistency"] <= 1 - distinct / len(heldout) + 0.15
    assert fake["style_consistency"] < 0.4
    assert real["similarity"] > fake["similarity"]
    assert len(real["drift_content"]) == 2


def test_evaluate_runs_end_to_end(micro, probe, heldout):
    pipe = build_pipeline(micro, "self")
    pipe.set_progress_bar_config(disable=True)
    reference = [img for s in heldout[2:6] for img in s["images"][:2]]
    params = SamplingParams(steps=2)
    results = evaluate(pipe, functools.partial(probe_metrics, probe), heldout[:2], reference, [1, 2], 2, params)
    assert set(results) == {1, 2} and set(results[1]) == set(GROUPS)
    assert all(np.isfinite(v) for g in results[1].values() for k, v in g.items() if not k.startswith("drift"))
    assert "| 2 | truth |" in table(results)


def test_evaluate_with_label_free_set_metrics(micro):
    """Open sets, scored by retrieval among their own contexts: the truth's colours are its own set's."""
    pipe = build_pipeline(micro, "self")
    pipe.set_progress_bar_config(disable=True)
    sets = load_sets("open:heldout", 4, 4)
    score = functools.partial(set_scores, SetMetrics(SetEmbedder(), group=4))
    results = evaluate(pipe, score, sets, [], [2], 2, SamplingParams(steps=2))
    truth = results[2]["truth"]
    assert truth["colour_retrieval"] == 1.0
    assert all(0.0 <= results[2][g]["shape_retrieval"] <= 1.0 for g in GROUPS)  # an untrained embedder here
    assert len(results[2]["model"]["drift_colour"]) == 2
    assert {"colour_retrieval", "shape_retrieval", "similarity"} <= set(results[2]["round-trip"])


class TinyFeatures(nn.Module):
    """A random-weight stand-in for Inception: images in [0, 1] -> features (or logits)."""

    def __init__(self, n: int):
        super().__init__()
        self.num_features = n
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, n))

    def forward(self, x):
        return self.net(x.float() / 255 if x.dtype == torch.uint8 else x)  # torchmetrics' IS hands over uint8


def test_paper_metrics_code_path_with_random_weights(heldout, clip_tokenizer):
    from transformers import CLIPConfig, CLIPModel

    from train.evaluation.paper_metrics import PaperMetrics

    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(clip_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8,
    ))  # fmt: skip
    metrics = PaperMetrics(clip, clip_tokenizer, fid_feature=TinyFeatures(8), is_feature=TinyFeatures(10))
    contexts = [s["images"][:2] for s in heldout[:6]]
    outputs = [s["images"][2:4] for s in heldout[:6]]
    captions = [synth.Caption(**s["meta"]["labels"]).text for s in heldout[:6]]
    reference = [img for s in heldout[6:12] for img in s["images"][:2]]
    scores = metrics(contexts, outputs, captions, reference)
    assert set(scores) == {"fid", "inception_score", "clip_text", "clip_image"}
    assert all(np.isfinite(v) for v in scores.values()), scores
    assert scores["inception_score"] >= 1.0 - 1e-4


def test_learning_curve_reads_the_measured_points_and_draws_both_panels(tmp_path):
    from train.evaluation.learning_curve import PANEL_W, plot, read_points

    csv_path = tmp_path / "curve.csv"
    csv_path.write_text(
        "model,step,images,colour,shape,note\nA,2,2000,0.5,0.1,x\nA,1,1000,0.3,0.1,x\nB,1,1000,0.2,0.0,x\n"
    )
    points = read_points(csv_path)
    assert points == {"A": [(1000.0, 0.3, 0.1), (2000.0, 0.5, 0.1)], "B": [(1000.0, 0.2, 0.0)]}
    img = np.asarray(plot(points, {"colour": 0.9, "shape": 0.5}, {"colour": 0.9, "shape": 0.8}, 1 / 16))
    blue = (img[..., 2] > 150) & (img[..., 0] < 80)  # model A's colour
    columns = np.nonzero(blue.any(0))[0]
    assert columns.min() < PANEL_W and columns.max() > PANEL_W  # its series in both panels


def test_the_ledger_adds_a_row_per_scored_export_and_draws_its_curve(tmp_path):
    from train.evaluation import ledger

    run = tmp_path / "run"
    (run / "pipeline").mkdir(parents=True)
    (run / "log.csv").write_text("step,loss,context_gain\n50,0.3,0.1\n100,0.2,0.2\n")
    evals = []
    for source, shape in (("open:simple", 0.5), ("open:heldout", 0.25)):
        evals.append(tmp_path / f"{source[5:]}.json")
        scores = {"colour_retrieval": 0.75, "shape_retrieval": shape}
        evals[-1].write_text(json.dumps({"args": {"source": source}, "results": {"4": {"model": scores}}}))
    book = tmp_path / "ledger.csv"
    for images in (1000, 4000):
        (run / "pipeline" / "m2m_training.json").write_text(json.dumps({"images_seen": images}))
        ledger.main(["add", "--ledger", str(book), "--model", "self", "--checkpoint", str(run / "pipeline"),
                     "--evals", *map(str, evals), "--log", str(run / "log.csv")])  # fmt: skip
    rows = list(csv.DictReader(book.open()))
    assert [r["images"] for r in rows] == ["1000", "4000"] and rows[0]["steps"] == "100"
    assert rows[0]["simple_shape"] == "0.5" and rows[0]["heldout_shape"] == "0.25" and rows[0]["context_gain"] == "0.15"
    assert ledger.points(book)["self, simple"] == [(1000.0, 0.75, 0.5), (4000.0, 0.75, 0.5)]
    task = tmp_path / "tasks.json"
    metrics = {"ssim": 0.9, "ssim_32": 0.93, "step_accuracy": 0.75, "turn_accuracy": 0.0, "change_cosine": 0.5}
    task.write_text(
        json.dumps(
            {
                "args": {"task": "procedure"},
                "results": {"2": {}, "4": {"fine-tuned": metrics, "copy-last": {"ssim": 0.95, "ssim_32": 0.92}}},
            }
        )
    )
    ledger.main(["add", "--ledger", str(book), "--model", "self-procedure", "--checkpoint", str(run / "pipeline"),
                 "--evals", str(task)])  # fmt: skip
    last = list(csv.DictReader(book.open()))[-1]
    assert (last["task"], last["task_accuracy"], last["copy_last_ssim"], last["heldout_shape"]) == (
        "procedure",
        "0.75",
        "0.95",
        "",
    )
    assert (last["task_ssim_32"], last["copy_last_ssim_32"]) == ("0.93", "0.92")  # where the task's bar compares
    assert last["task_change_cosine"] == "0.5"
    ledger.main(["plot", "--ledger", str(book), "--out", str(tmp_path / "curve.png")])
    assert (tmp_path / "curve.png").stat().st_size > 1000
    (run / "log-copy.csv").write_text((run / "log.csv").read_text())
    with pytest.raises(SystemExit):  # a log under another name would add a row without its steps and gain
        ledger.main(["add", "--ledger", str(book), "--model", "self", "--checkpoint", str(run / "pipeline"),
                     "--evals", *map(str, evals), "--log", str(run / "log-copy.csv")])  # fmt: skip
    assert len(list(csv.DictReader(book.open()))) == 3
    old = tmp_path / "old.csv"  # a ledger of other columns is not appended to
    old.write_text("date,model\n")
    with pytest.raises(SystemExit, match="columns"):
        ledger.add(old, last)


def test_learning_curve_legend_wraps_every_series_in_order_within_the_width():
    from PIL import Image, ImageDraw

    from train.evaluation.learning_curve import legend_rows, legend_width

    names = [f"model-{i}, open:heldout" for i in range(9)]
    rows = legend_rows(names, 600)
    assert [n for row in rows for n in row] == names
    assert len(rows) > 1 and all(rows)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    assert all(sum(legend_width(draw, n) for n in row) <= 600 for row in rows if len(row) > 1)
    assert legend_rows(names[:1], 10) == [names[:1]]  # one entry wider than the row still gets a row
