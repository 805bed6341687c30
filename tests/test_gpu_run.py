"""scripts/gpu_run.sh and scripts/install_gpu_run.sh end to end on the CPU (--dry-run): what a GPU machine would run;
scripts/device_tree.sh, the tree that travels there."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from train.data.sprites import load_sprites

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_run_dry_run_trains_packs_and_installs(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PY": sys.executable}
    run = subprocess.run(["bash", "scripts/gpu_run.sh", str(out), "--dry-run"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(p.stat().st_size <= 15 * 2**20 for p in out.iterdir()), files
    assert {"throughput.json", "context-cost.json", "logs.tar.gz", "models.tar.00"} <= set(files)
    rows = json.loads((out / "throughput.json").read_text())["rows"]
    assert {r["variant"] for r in rows} == {"self", "dino"} and all(r["images_per_s"] > 0 for r in rows)
    assert "self-ref@1" in json.loads((out / "context-cost.json").read_text())["per_image"]
    install = subprocess.run(["bash", "scripts/install_gpu_run.sh", str(out), "--dry-run"], cwd=ROOT,
                             env={**env, "MARGIN": "-1"}, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    for v in ("self", "dino"):
        assert f"M2M-{v}: installed" in install.stdout, install.stdout
        installed = out / "installed" / f"m2m-{v}-tiny"
        assert (installed / "vae").is_dir() and (installed / "unet").is_dir()  # the frozen parts put back
    assert (out / "installed" / "m2m-dino-tiny" / "image_encoder").is_dir()


def test_gpu_run_refuses_a_bad_flag(tmp_path):
    run = subprocess.run(["bash", "scripts/gpu_run.sh", str(tmp_path), "--dryrun"], cwd=ROOT, capture_output=True,
                         text=True)  # fmt: skip
    assert run.returncode == 2 and "usage" in run.stderr


def test_device_tree_keeps_what_gpu_run_reads_and_restores(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    for rel in ("scripts/device_tree.sh", "scripts/gpu_run.sh", "scripts/common.sh", "train/data/sprites.py"):
        (clone / rel).write_bytes((ROOT / rel).read_bytes())  # this tree's versions, committed or not
    rng = np.random.default_rng(0)
    atlas, wheels = tmp_path / "sprites.npz", tmp_path / "wheels"
    np.savez_compressed(atlas, rgba=rng.integers(0, 256, (50, 4, 8, 8), dtype=np.uint8),
                        names=np.array([f"s{i}" for i in range(50)]), heldout=np.arange(50) % 10 == 0)  # fmt: skip
    wheels.mkdir()
    (wheels / "fake-1.0-py3-none-any.whl").write_bytes(b"0" * 1000)
    env = {**os.environ, "PY": sys.executable, "ATLAS": str(atlas), "WHEELHOUSE": str(wheels)}
    slim = subprocess.run(["bash", "scripts/device_tree.sh", "slim"], cwd=clone, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert slim.returncode == 0, slim.stdout + slim.stderr
    assert sorted(p.name for p in (clone / "checkpoints").iterdir()) == ["README.md", "m2m-dino-tiny", "m2m-self-tiny"]
    assert not (clone / "docs").exists() and (clone / "m2m" / "attention.py").exists()
    assert "travels:" in slim.stdout and "gpu_run.sh" in slim.stdout
    assert (clone / ".whl" / "fake-1.0-py3-none-any.whl").exists()
    assert len(load_sprites("train", clone / "data" / "sprites-gpu.npz.xz")) == 45  # every training sprite fits
    restore = subprocess.run(["bash", "scripts/device_tree.sh", "restore"], cwd=clone, capture_output=True, text=True)
    assert restore.returncode == 0, restore.stderr
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True).stdout
    assert (clone / "docs").is_dir() and not [line for line in status.splitlines() if line.startswith(" D")]
