"""`python -m m2m generate` as a user runs it: outputs, manifest, zip, and one-line errors."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from m2m.images import file_sha256
from m2m.presets import build_pipeline
from m2m.sampling import SamplingParams

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, micro):
    path = tmp_path_factory.mktemp("ckpt") / "m2m-self-micro"
    build_pipeline(micro, "self").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def context_files(tmp_path_factory, images):
    folder = tmp_path_factory.mktemp("context")
    paths = []
    for i, img in enumerate(images(2)):
        paths.append(folder / f"c{i}.png")
        img.save(paths[-1])
    return paths


def run_cli(*args: str, cwd=None, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, "-m", "m2m", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)  # fmt: skip


def test_generate_writes_pngs_manifest_and_zip(checkpoint, context_files, tmp_path):
    out = tmp_path / "out"
    ctx = [str(p) for p in context_files]
    args = ["--num-images", "3", "--steps", "2", "--guidance", "2.5", "--seed", "4", "--out", str(out)]
    proc = run_cli("generate", "--checkpoint", str(checkpoint), "--context", *ctx, *args)
    assert proc.returncode == 0, proc.stderr
    assert "generating" in proc.stderr  # the progress bar
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["variant"] == "self"
    assert manifest["parameters"] | {"seed": 4, "steps": 2, "guidance": 2.5} == manifest["parameters"]
    assert SamplingParams.from_json(manifest) == SamplingParams(steps=2, guidance=2.5, seed=4)
    assert [c["sha256"] for c in manifest["context"]] == [file_sha256(p) for p in ctx]
    assert [e["index"] for e in manifest["images"]] == [2, 3, 4]
    with zipfile.ZipFile(out / "set.zip") as zf:
        assert sorted(zf.namelist()) == sorted([e["file"] for e in manifest["images"]] + ["manifest.json"])
    first = Image.open(out / manifest["images"][0]["file"])
    assert json.loads(first.text["m2m"])["seed"] == manifest["images"][0]["seed"]


def make_bad_files(folder, images):
    (folder / "text.png").write_text("not an image")
    good = folder / "good.png"
    images(1)[0].save(good)
    (folder / "truncated.png").write_bytes(good.read_bytes()[:80])
    return {
        "missing": (str(folder / "nope.png"), "no such file"),
        "not an image": (str(folder / "text.png"), "not an image"),
        "truncated": (str(folder / "truncated.png"), "truncated"),
    }


@pytest.mark.parametrize("case", ["missing", "not an image", "truncated"])
def test_bad_context_file_is_one_line(checkpoint, tmp_path, images, case):
    path, message = make_bad_files(tmp_path, images)[case]
    proc = run_cli("generate", "--checkpoint", str(checkpoint), "--context", path, "--out", str(tmp_path / "o"))
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_bad_checkpoint_is_one_line(tmp_path):
    (tmp_path / "model_index.json").write_text(
        '{"_class_name": "M2MPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}'
    )
    proc = run_cli("generate", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o"))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "cannot load" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("variant,task", [("dino", "nvs"), ("self", "procedure")])
def test_task_flag_runs_the_embedded_task_model(context_files, tmp_path, variant, task):
    out = tmp_path / "out"
    ctx = [str(p) for p in context_files]
    proc = run_cli("generate", "--variant", variant, "--task", task, "--context", *ctx, "--num-images", "1",
                   "--steps", "2", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["variant"], manifest["task"]) == (variant, task)
    assert manifest["checkpoint"].endswith(f"m2m-{variant}-tiny-{task}")


def test_checkpoint_and_task_together_is_one_line(checkpoint, tmp_path):
    proc = run_cli("generate", "--checkpoint", str(checkpoint), "--task", "nvs", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "either --checkpoint or --variant/--task" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_embedded_models_are_found_where_the_env_var_or_flag_says(checkpoint, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(checkpoint, models / "m2m-self-tiny")  # the layout of checkpoints/
    for how in ({"M2M_CHECKPOINT_DIR": str(models)}, {}):
        flag = [] if how else ["--checkpoint-dir", str(models)]
        proc = run_cli("generate", *flag, "--num-images", "1", "--steps", "2", "--out", str(tmp_path / "o"), **how)
        assert proc.returncode == 0, proc.stderr
        manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
        assert manifest["checkpoint"] == str(models / "m2m-self-tiny")


def test_a_non_editable_install_says_where_the_models_are(tmp_path):
    """`pip install .` ships the package without checkpoints/ (~60 MB): the CLI says in one line where to point it."""
    pytest.importorskip("setuptools")
    source = tmp_path / "src"
    shutil.copytree(ROOT / "m2m", source / "m2m", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*pip, "--target", str(tmp_path / "site"), str(source)], check=True, capture_output=True)
    env = {"PYTHONPATH": str(tmp_path / "site"), "M2M_CHECKPOINT_DIR": ""}
    proc = run_cli("generate", "--num-images", "1", "--out", str(tmp_path / "o"), cwd=tmp_path, **env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert str(tmp_path / "site") in proc.stderr  # the installed copy ran, not this checkout
    assert "--checkpoint PATH" in proc.stderr and "M2M_CHECKPOINT_DIR" in proc.stderr
