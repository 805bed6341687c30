"""M2M: many-to-many image generation with auto-regressive diffusion models (Shen et al. 2024)."""

from m2m.attention import ImageSetAttention
from m2m.pipeline import GeneratedImage, M2MPipeline, M2MPipelineOutput, image_seed
from m2m.presets import PRESETS, Preset, build_pipeline, from_hub, get_preset

__all__ = [
    "PRESETS",
    "GeneratedImage",
    "ImageSetAttention",
    "M2MPipeline",
    "M2MPipelineOutput",
    "Preset",
    "build_pipeline",
    "from_hub",
    "get_preset",
    "image_seed",
]
