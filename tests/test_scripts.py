"""Every script under train/ and bench/ runs both ways from the repository root: `python -m` and by its path."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(
    path.relative_to(ROOT).as_posix()
    for folder in ("train", "bench")
    for path in (ROOT / folder).rglob("*.py")
    if 'if __name__ == "__main__":' in path.read_text()
)
WAYS = ("module", "path")


def command(script: str, way: str) -> list[str]:
    """`python -m train.data.synth --help` or `python train/data/synth.py --help`."""
    target = ["-m", script.removesuffix(".py").replace("/", ".")] if way == "module" else [script]
    return [sys.executable, *target, "--help"]


@pytest.fixture(scope="module")
def runs() -> dict[tuple[str, str], subprocess.CompletedProcess]:
    """Every script's --help both ways, side by side: most of each run is importing torch and diffusers."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(key: tuple[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run(command(*key), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    keys = [(script, way) for script in SCRIPTS for way in WAYS]
    with ThreadPoolExecutor(max(2, os.cpu_count() or 1)) as pool:
        return dict(zip(keys, pool.map(run, keys), strict=True))


def test_every_script_is_found():
    assert {"train/training/m2m.py", "train/evaluation/evaluate.py", "train/data/synth.py"} <= set(SCRIPTS)
    assert any(script.startswith("bench/") for script in SCRIPTS)


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("script", SCRIPTS)
def test_script_help_runs_as_a_module_and_by_path(runs, script, way):
    proc = runs[script, way]
    assert proc.returncode == 0, f"{' '.join(proc.args[1:])} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert proc.stdout.startswith("usage:")


@pytest.mark.parametrize(
    "row, flag, value",
    [
        ("lr1e-3", "--lr", "1e-3"),
        ("lr2e-3", "--lr", "2e-3"),
        ("tokens256", "--context-tokens", "256"),
        ("dino", "--variant", "dino"),
        ("channels", "--vae", "runs/arch/vae-channels"),
    ],
)
def test_an_architecture_row_changes_what_it_says(row, flag, value):
    """scripts/arch_cpu.sh: a row's flags come after the shared ones, so that argparse's last value is the row's
    (they once came first, and the learning-rate rows trained at the base's 5e-4)."""
    out = subprocess.run(["bash", "scripts/arch_cpu.sh", "command", row], cwd=ROOT, capture_output=True, text=True)
    words = out.stdout.split()
    assert out.returncode == 0 and words[max(i for i, w in enumerate(words) if w == flag) + 1] == value


APPROACHES = ("adapter", "scratch", "scratch-last", "scratch-change", "scratch-scaled", "scratch-step",
              "scratch-relative", "tune-last")  # fmt: skip


@pytest.mark.parametrize("task", ["nvs", "procedure"])
@pytest.mark.parametrize("variant", ["self", "dino"])
def test_every_task_approach_is_a_recipe_the_trainer_takes(variant, task):
    """scripts/train_tasks_cpu.sh: each approach's flags parse and pass the trainer's checks; only the scaled change
    (and it with the last step) draws on the last pixels, over the floor the script names; STEPS and COOLDOWN end a
    run on a cool-down; novel views train on the renders NVS_DATA names."""
    from train.training.m2m import check_recipe, parse_args

    env = {"CHANGE_FLOOR": "0.25", "STEPS": "900", "COOLDOWN": "200", "NVS_DATA": "data/nvs-3000"}
    for approach in APPROACHES:
        out = subprocess.run(["bash", "scripts/train_tasks_cpu.sh", "flags", approach, variant, task], cwd=ROOT,
                             env={**os.environ, **env},
                             capture_output=True, text=True)  # fmt: skip
        assert out.returncode == 0, out.stderr
        cfg = parse_args(out.stdout.split())
        check_recipe(cfg)
        on_pixels = approach in ("scratch-scaled", "scratch-step", "scratch-relative")  # the scaled change, and on
        assert (cfg.variant, cfg.task, cfg.last_image_change) == (variant, task, approach == "scratch-change"
                                                                  or on_pixels)  # fmt: skip
        assert cfg.last_step_input == (approach in ("scratch-step", "scratch-relative"))
        assert cfg.last_image_change_relative == (approach == "scratch-relative")
        assert (cfg.steps, cfg.cooldown_steps) == (900, 200)
        assert cfg.data == ("data/nvs-3000" if task == "nvs" else "procedure:train")
        assert (cfg.last_image_pixels, cfg.last_image_change_floor) == ((True, 0.25) if on_pixels else (False, 0.0))


@pytest.mark.parametrize("variant", ["self", "dino"])
def test_the_train_on_chunks_are_a_recipe_the_trainer_takes_and_may_end_on_a_cool_down(variant):
    """scripts/train_on_cpu.sh: the flags go on from the shipped model with the design's flags; flat by default,
    and STEPS with COOLDOWN end the run on a cool-down."""
    from train.training.m2m import check_recipe, parse_args

    for env, schedule in (({}, (1000000, 0)), ({"STEPS": "1300", "COOLDOWN": "200"}, (1300, 200))):
        out = subprocess.run(["bash", "scripts/train_on_cpu.sh", "flags", variant], cwd=ROOT,
                             env={**os.environ, **env}, capture_output=True, text=True)  # fmt: skip
        assert out.returncode == 0, out.stderr
        cfg = parse_args(out.stdout.split())
        check_recipe(cfg)
        assert (cfg.variant, cfg.init, cfg.data) == (variant, f"checkpoints/m2m-{variant}-tiny", "open:train")
        assert (cfg.steps, cfg.cooldown_steps) == schedule
