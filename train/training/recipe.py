"""The learning signal of a training step: which timesteps are drawn, how each image's loss weighs, the noise schedule.

The candidates compared in docs/open-sets.md §6 (the recipe table), each a flag of train/training/m2m.py:
  --timestep-sampler uniform        every training timestep equally likely (DDPM; the default)
  --timestep-sampler logit-normal   t/T = sigmoid(N(0, 1)): the middle of the schedule more often (SD3)
  --min-snr-gamma 5          each image's loss weighted by min(SNR, γ) / (SNR + 1) for v-prediction
                             (min(SNR, γ) / SNR for ε): easy low-noise steps count less (Hang et al. 2023);
                             a pure-noise step (SNR 0) weighs 1
  --zero-terminal-snr        betas rescaled so the last timestep is pure noise; with trailing timestep
                             spacing, sampling starts from it (Lin et al. 2024). Needs v-prediction.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler
from diffusers.training_utils import compute_snr
from torch import Tensor

TIMESTEP_SAMPLERS = ("uniform", "logit-normal")


def sample_timesteps(kind: str, n: int, num_train_timesteps: int, device: torch.device | str) -> Tensor:
    """`n` training timesteps (n,) in [0, num_train_timesteps), drawn as `kind` says."""
    if kind == "uniform":
        return torch.randint(0, num_train_timesteps, (n,), device=device)
    if kind == "logit-normal":
        u = torch.sigmoid(torch.randn(n, device=device))  # (n,) in (0, 1), peaked at 1/2
        return (u * num_train_timesteps).long().clamp_(0, num_train_timesteps - 1)
    raise ValueError(f"unknown timestep sampler {kind!r}; choose from {TIMESTEP_SAMPLERS}")


def min_snr_weights(scheduler: DDIMScheduler, timesteps: Tensor, gamma: float) -> Tensor:
    """Min-SNR-γ weights (n,) of the per-image losses at `timesteps` (n,), for the scheduler's prediction target."""
    snr = compute_snr(scheduler, timesteps)  # (n,) α²/σ²; 0 at a zero-terminal-SNR schedule's last step
    clipped = snr.clamp(max=gamma)
    kind = scheduler.config.prediction_type
    if kind == "v_prediction":
        weights = clipped / (snr + 1)
    elif kind == "epsilon":
        weights = clipped / snr
    else:
        raise ValueError(f"min-SNR weighting for prediction_type {kind!r} is not defined here")
    # SNR 0 (pure noise): the formula gives 0 (v) or 0/0 (ε), yet sampling starts there; weigh it 1, as diffusers does
    return torch.where(snr == 0, torch.ones_like(weights), weights)


def with_zero_terminal_snr(scheduler: DDIMScheduler) -> DDIMScheduler:
    """The same scheduler with its betas rescaled to zero terminal SNR; sampling then must start at the last step."""
    if scheduler.config.prediction_type != "v_prediction":
        raise ValueError("zero terminal SNR needs v-prediction: ε cannot be predicted from pure noise")
    if scheduler.config.timestep_spacing != "trailing":
        raise ValueError("zero terminal SNR needs timestep_spacing='trailing', so that sampling starts at pure noise")
    return DDIMScheduler.from_config(scheduler.config, rescale_betas_zero_snr=True)
