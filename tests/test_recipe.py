"""train/training/recipe.py: the timestep samplers, min-SNR-γ weights, zero terminal SNR; and a run that uses them."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from safetensors.torch import load_file

from m2m.loading import load_pipeline
from m2m.presets import TINY, build_pipeline
from train.training.m2m import parse_args, start_run, train, weighted_loss
from train.training.recipe import min_snr_weights, sample_timesteps, with_zero_terminal_snr


def tiny_scheduler(**changes) -> DDIMScheduler:
    return DDIMScheduler(**{**TINY.scheduler, **changes})


@pytest.mark.parametrize("kind", ["uniform", "logit-normal"])
def test_timesteps_stay_in_range(kind):
    torch.manual_seed(0)
    t = sample_timesteps(kind, 20_000, 1000, "cpu")
    assert t.dtype == torch.long and t.min() >= 0 and t.max() <= 999


def test_logit_normal_draws_the_middle_of_the_schedule_more_often():
    torch.manual_seed(0)
    middle = {k: ((t >= 250) & (t < 750)).float().mean().item()
              for k in ("uniform", "logit-normal") for t in [sample_timesteps(k, 20_000, 1000, "cpu")]}  # fmt: skip
    assert middle["uniform"] == pytest.approx(0.5, abs=0.02)
    assert middle["logit-normal"] == pytest.approx(0.728, abs=0.02)  # P(|N(0, 1)| < logit(3/4))


def test_unknown_timestep_sampler_is_refused():
    with pytest.raises(ValueError, match="logit-normal"):
        sample_timesteps("lognormal", 4, 1000, "cpu")


def test_min_snr_weighted_v_loss_is_the_x0_loss_weighted_by_min_snr_gamma():
    """For v-prediction: w·|v - v̂|² = min(SNR, γ)·|x0 - x̂0|², the definition of min-SNR-γ (Hang et al. 2023)."""
    sched, gamma = tiny_scheduler(), 5.0
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0, 10, 100, 400, 700, 999])
    x0, noise, v_hat = (torch.randn(6, 4, 8, 8, generator=g) for _ in range(3))
    xt = sched.add_noise(x0, noise, t)
    v = sched.get_velocity(x0, noise, t)
    a = sched.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    s = (1 - sched.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    x0_hat = a * xt - s * v_hat  # the x0 that v̂ implies
    snr = a.flatten() ** 2 / s.flatten() ** 2
    lhs = min_snr_weights(sched, t, gamma) * (v - v_hat).pow(2).mean((1, 2, 3))
    rhs = snr.clamp(max=gamma) * (x0 - x0_hat).pow(2).mean((1, 2, 3))
    assert torch.allclose(lhs, rhs, rtol=1e-3)


def test_min_snr_weights_for_epsilon_cap_the_easy_steps():
    sched = tiny_scheduler(prediction_type="epsilon")
    w = min_snr_weights(sched, torch.tensor([0, 999]), 5.0)
    assert w[0] < 0.01 and w[1] == pytest.approx(1.0)  # SNR ≫ γ at t = 0, ≪ γ at the end


def test_zero_terminal_snr_ends_in_pure_noise_and_needs_v_prediction_with_trailing_steps():
    base = tiny_scheduler()
    zero = with_zero_terminal_snr(base)
    assert base.alphas_cumprod[-1] > 1e-3 and zero.alphas_cumprod[-1] < 1e-6
    assert zero.config.rescale_betas_zero_snr and not base.config.rescale_betas_zero_snr
    with pytest.raises(ValueError, match="v-prediction"):
        with_zero_terminal_snr(tiny_scheduler(prediction_type="epsilon"))
    with pytest.raises(ValueError, match="trailing"):
        with_zero_terminal_snr(tiny_scheduler(timestep_spacing="leading"))


def test_min_snr_still_trains_the_pure_noise_step_where_sampling_starts():
    zero = with_zero_terminal_snr(tiny_scheduler())
    w = min_snr_weights(zero, torch.tensor([998, 999]), 5.0)
    assert 0 < w[0] < 0.01 and w[1] == 1.0  # the formula's 0 at SNR 0 would leave it untrained


def run_args(start, out, *recipe: str) -> list[str]:
    return ["--init", str(start), "--variant", "self", "--out", str(out), "--steps", "2", "--batch-sets", "2",
            "--min-k", "2", "--max-k", "3", "--workers", "0", "--val-every", "100", "--checkpoint-every", "2",
            "--sample-every", "100", "--warmup", "1", *recipe]  # fmt: skip


@pytest.fixture
def start(micro, tmp_path):
    folder = tmp_path / "start"
    build_pipeline(micro, "self", seed=0).save_pretrained(folder)
    return folder


RECIPE = ("--timestep-sampler", "logit-normal", "--min-snr-gamma", "5", "--zero-terminal-snr")


def test_the_step_loss_is_the_weighted_mean_over_the_recipes_timesteps(start, tmp_path):
    run = start_run(parse_args(run_args(start, tmp_path / "run", *RECIPE)))
    assert run.model.scheduler is run.pipe.scheduler and run.pipe.scheduler.config.rescale_betas_zero_snr
    g = torch.Generator().manual_seed(0)
    latents, pixels = torch.randn(2, 3, 4, 8, 8, generator=g), torch.rand(2, 3, 3, 32, 32, generator=g) * 2 - 1
    torch.manual_seed(1)
    loss = weighted_loss(run, latents, pixels)
    torch.manual_seed(1)  # the same draws: the timesteps, then the model's noise and context dropout
    t = sample_timesteps("logit-normal", 6, 1000, "cpu")
    per_image = run.model(latents, pixels, t)  # (2, 3)
    expected = (per_image * min_snr_weights(run.pipe.scheduler, t, 5.0).view(2, 3)).mean()
    assert torch.allclose(loss, expected)


def test_a_run_with_every_recipe_flag_saves_its_schedule_and_the_raw_weights(start, tmp_path):
    out = tmp_path / "run"
    train(parse_args(run_args(start, out, *RECIPE, "--export-raw")))
    pipe, raw = load_pipeline(out / "pipeline"), load_pipeline(out / "pipeline-raw")
    assert pipe.scheduler.config.rescale_betas_zero_snr and raw.scheduler.config.rescale_betas_zero_snr
    trained = load_file(out / "checkpoints" / "step-0000002" / "model.safetensors")
    assert all(torch.equal(v, trained[f"unet.{n}"]) for n, v in raw.unet.state_dict().items())
    for scheduler in ("ddim", "dpm++"):  # both samplers start from the pure-noise step
        image = np.asarray(pipe(num_images=1, num_inference_steps=3, scheduler=scheduler).images[0], np.float32)
        assert image.std() > 1.0, scheduler  # NaNs would give one flat colour


def test_a_run_resumes_only_with_the_recipe_it_was_trained_with(start, tmp_path):
    out = tmp_path / "run"
    train(parse_args(run_args(start, out, "--timestep-sampler", "logit-normal")))
    with pytest.raises(ValueError, match="logit-normal"):
        train(parse_args(run_args(start, out, "--steps", "4")))
    assert train(parse_args(run_args(start, out, "--timestep-sampler", "logit-normal", "--steps", "3")))["step"] == 3


def test_bad_recipe_flags_are_refused_before_anything_is_built(start, tmp_path):
    with pytest.raises(ValueError, match="choose from"):
        start_run(parse_args(run_args(start, tmp_path / "a", "--timestep-sampler", "lognormal")))
    with pytest.raises(ValueError, match="LoRA"):
        start_run(parse_args(run_args(start, tmp_path / "b", "--zero-terminal-snr", "--lora-rank", "4")))


def test_recipe_table_gives_each_scored_run_its_scores_errors_and_losses(tmp_path):
    from bench.recipe_table import table

    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "log.csv").write_text(
        "step,loss,lr,images_per_s,val_loss_context,val_loss_no_context\n50,0.3,0.0005,8,0.25,0.27\n60,0.2,0.0005,8,,\n"
    )
    scores = {"colour_retrieval": 0.5, "shape_retrieval": 0.1, "similarity": 0.2}
    groups = {"model": scores, "no-context": {**scores, "colour_retrieval": 0.0625}}
    for tag in ("base", "base-raw"):
        saved = {"args": {"sets": 64, "generate": 2}, "results": {"4": groups}}
        (tmp_path / f"eval-{tag}.json").write_text(json.dumps(saved))
    lines = table(tmp_path).splitlines()
    assert len(lines) == 4 and lines[2].startswith("| `base` |") and lines[3].startswith("| `base-raw` |")
    assert "| 60 (≈1.9k) |" in lines[2] and "0.500 ± 0.044" in lines[2] and "0.250 / 0.270" in lines[2]


def test_arch_table_gives_each_row_its_context_gain_and_both_sources(tmp_path):
    from bench.arch_table import table

    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "log.csv").write_text(
        "step,loss,lr,images_per_s,val_loss_context,val_loss_no_context,context_gain\n"
        "50,0.3,0.0005,8,0.25,0.27,0.1\n60,0.2,0.0005,8,,,\n100,0.2,0.0005,8,0.2,0.25,0.2\n"
    )
    (tmp_path / "half").mkdir()  # started, not scored yet: no row, and no say in the common step
    (tmp_path / "half" / "log.csv").write_text("step,loss,lr,images_per_s,val_loss_context,val_loss_no_context\n")
    scores = {"colour_retrieval": 0.5, "shape_retrieval": 0.25, "similarity": 0.2}
    groups = {"model": scores, "no-context": {**scores, "shape_retrieval": 0.0625}, "round-trip": scores}
    for source in ("simple", "heldout"):
        saved = {"args": {"sets": 32, "generate": 2}, "results": {"4": groups}}
        (tmp_path / f"eval-base-{source}.json").write_text(json.dumps(saved))
    lines = table(tmp_path).splitlines()
    assert len(lines) == 3 and lines[2].startswith("| `base` |")  # the empty log gives no row
    assert "| 100 (3.2k) | 15.0 % | 15.0 % |" in lines[2]  # the mean gain of the validations logged, and at the
    assert "context gain at step 100" in lines[0]  # last step every row logged (one row here)
    assert lines[2].count("0.250 ± 0.054") == 2 and lines[2].endswith("| 0.062 / 0.250 | 0.062 / 0.250 |")
    (tmp_path / "lr").mkdir()  # a row on a slower machine, not scored: every row compares where it stopped
    (tmp_path / "lr" / "log.csv").write_text(
        "step,loss,lr,images_per_s,val_loss_context,val_loss_no_context,context_gain\n50,0.3,0.001,2,0.2,0.26,0.3\n"
    )
    lines = table(tmp_path).splitlines()
    assert "context gain at step 50" in lines[0] and "| 100 (3.2k) | 15.0 % | 10.0 % |" in lines[2]
    assert lines[3].startswith("| `lr` |") and "| 50 (1.6k) | 30.0 % | 30.0 % | — | — | — | — | — | — |" in lines[3]
