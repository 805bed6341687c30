"""M2M: many-to-many image generation with auto-regressive diffusion models (Shen et al. 2024)."""

from m2m.attention import ImageSetAttention
from m2m.loading import CheckpointError, load_pipeline, task_checkpoint
from m2m.pipeline import GeneratedImage, M2MPipeline, M2MPipelineOutput
from m2m.presets import PRESETS, Preset, build_pipeline, from_hub, get_preset
from m2m.sampling import SamplingParams, image_seed

__all__ = [
    "PRESETS",
    "CheckpointError",
    "GeneratedImage",
    "ImageSetAttention",
    "M2MPipeline",
    "M2MPipelineOutput",
    "Preset",
    "SamplingParams",
    "build_pipeline",
    "from_hub",
    "get_preset",
    "image_seed",
    "load_pipeline",
    "task_checkpoint",
]
