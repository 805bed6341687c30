"""How a set is sampled: one `SamplingParams` for the pipeline, the command line, the demo, evaluation and manifests.

The paper samples with DDIM in 50 steps; the default here is 25, which the tiny models need no more than.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, SchedulerMixin

SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
}
DEFAULT_SCHEDULER = "ddim"  # the paper's


@dataclass(frozen=True)
class SamplingParams:
    """The settings every image of a set is sampled with; `seed` and an image's index give its noise."""

    steps: int = 25
    guidance: float = 3.0  # classifier-free guidance over the image context; 1 = none
    seed: int = 0
    scheduler: str = DEFAULT_SCHEDULER  # a key of SCHEDULERS
    max_context: int | None = None  # keep the first and the most recent context images; None = all

    def __post_init__(self):
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps (num_inference_steps) must be a positive integer, got {self.steps!r}")
        if not isinstance(self.guidance, (int, float)) or self.guidance < 0:
            raise ValueError(f"guidance (guidance_scale) must be >= 0, got {self.guidance!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; choose from {sorted(SCHEDULERS)}")
        if self.max_context is not None and (not isinstance(self.max_context, int) or self.max_context < 1):
            raise ValueError(f"max_context must be None or a positive integer, got {self.max_context!r}")

    def replace(self, **changes: Any) -> SamplingParams:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The manifest's `parameters` (with the CLI's num_images and context_cache beside them)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, manifest: Mapping[str, Any]) -> SamplingParams:
        """From a manifest (its `parameters`) or those alone; also the demo's older manifests (top-level
        steps, guidance and context_window, 0 = all) and the CLI's (scheduler `None` = the pipeline's, DDIM)."""
        d = manifest.get("parameters", manifest)
        window = d.get("max_context", d.get("context_window")) or None
        known = {k: d[k] for k in ("steps", "guidance", "seed") if k in d}
        return cls(**known, scheduler=d.get("scheduler") or DEFAULT_SCHEDULER, max_context=window)

    @classmethod
    def from_keywords(cls, params: SamplingParams | None = None, **keywords: Any) -> SamplingParams:
        """`params`, or one made of the keywords that are not None (the pipeline's shorthand); not both."""
        given = {k: v for k, v in keywords.items() if v is not None}
        if params is not None and given:
            raise TypeError(f"give params= or the sampling keywords ({', '.join(given)}), not both")
        return params if params is not None else cls(**given)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--steps, --guidance, --seed, --scheduler and --max-context: SamplingParams' fields, with its defaults."""
    d = SamplingParams()
    parser.add_argument("--steps", type=count(1), default=d.steps,
                        help=f"denoising steps (default {d.steps}; the paper: DDIM, 50)")  # fmt: skip
    parser.add_argument("--guidance", type=float, default=d.guidance,
                        help="classifier-free guidance over the image context")  # fmt: skip
    parser.add_argument("--seed", type=count(0), default=d.seed)
    parser.add_argument("--scheduler", choices=sorted(SCHEDULERS), default=d.scheduler)
    parser.add_argument("--max-context", type=count(1), default=d.max_context,
                        help="keep the first and the most recent context images (default: all)")  # fmt: skip


def from_arguments(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(args.steps, args.guidance, args.seed, args.scheduler, args.max_context)


def count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def context_window(n: int, max_context: int | None) -> list[int]:
    """Indices of the context kept for the next image: all, or the first and the most recent ones."""
    if max_context is None or n <= max_context:
        return list(range(n))
    first = max_context // 2
    return list(range(first)) + list(range(n - (max_context - first), n))


def image_seed(seed: int, index: int) -> int:
    """Seed of the image at `index` of a set generated with `seed`: regenerate it alone with the same pair."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint32)[0])


def make_scheduler(base: SchedulerMixin, name: str) -> SchedulerMixin:
    """A fresh scheduler for one image (schedulers keep state), of kind `name`, with `base`'s configuration."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose from {sorted(SCHEDULERS)}")
    cls, extra = SCHEDULERS[name]
    return cls.from_config(base.config, **extra)
