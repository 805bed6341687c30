"""scripts/gpu_run.sh and scripts/install_gpu_run.sh end to end on the CPU (--dry-run): what a GPU machine would run."""

import json
import os
import subprocess
import sys
from pathlib import Path

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
