"""Task adapters: a LoRA on the UNet plus the task's own ISA weights, on top of a base M2M pipeline.

A task model (novel view synthesis, visual procedures) is the base model fine-tuned with LoRA
(peft): the adapter folder holds the LoRA weights, the fine-tuned ISA component and
`adapter_config.json` naming the base pipeline folder. It weighs a few MB where a full pipeline
weighs 20, which is what lets four task models ship next to the two base models.

    pipe = load_pipeline("checkpoints/m2m-self-tiny-nvs")   # base + adapter, as any checkpoint
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from m2m.attention import ImageSetAttention, install
from m2m.sets import atomic_folder

ADAPTER_CONFIG = "adapter_config.json"
LORA_WEIGHTS = "unet_lora.safetensors"
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                "conv1", "conv2")  # fmt: skip


def add_lora(unet: UNet2DConditionModel, rank: int) -> LoraConfig:
    """Add a trainable LoRA of `rank` to the UNet's attention, feed-forward and ResNet convolutions."""
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(LORA_TARGETS), init_lora_weights=True)
    unet.add_adapter(config)
    return config


def is_adapter(folder: str | Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def adapter_config(folder: str | Path) -> dict:
    """{"base", "task", "variant", "lora"} of an adapter folder."""
    return json.loads((Path(folder) / ADAPTER_CONFIG).read_text())


def save_adapter(pipe, out: str | Path, base: str | Path, config: LoraConfig, task: str = "") -> None:
    """The LoRA weights, the ISA component and the base's location, written to a temporary folder and renamed."""
    out = Path(out)
    weights = {k: v.detach().to(torch.float16).contiguous() for k, v in get_peft_model_state_dict(pipe.unet).items()}
    lora = {"r": config.r, "lora_alpha": config.lora_alpha, "target_modules": sorted(config.target_modules)}
    meta = {"base": _relative(Path(base), out), "task": task, "variant": pipe.variant, "lora": lora}
    with atomic_folder(out) as tmp:
        save_file(weights, tmp / LORA_WEIGHTS)
        copy.deepcopy(pipe.isa).to(torch.float16).save_pretrained(tmp / "isa")  # a copy: training weights stay fp32
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2))


def apply_adapter(pipe, folder: str | Path):
    """Put an adapter's LoRA and ISA weights on a loaded base pipeline (in place); returns the pipeline."""
    folder = Path(folder)
    meta = adapter_config(folder)
    if meta["variant"] != pipe.variant:
        raise ValueError(f"{folder}: an adapter for M2M-{meta['variant']}, not M2M-{pipe.variant}")
    config = LoraConfig(init_lora_weights=True, **meta["lora"])
    pipe.unet.add_adapter(config)
    state = {k: v.to(pipe.unet.dtype) for k, v in load_file(folder / LORA_WEIGHTS).items()}
    result = set_peft_model_state_dict(pipe.unet, state)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"{folder}: LoRA weights do not fit the base UNet ({result.unexpected_keys[:1]})")
    isa = ImageSetAttention.from_pretrained(folder / "isa").to(pipe.unet.device, pipe.unet.dtype)
    pipe.register_modules(isa=isa)
    install(pipe.unet, isa)
    return pipe


def base_folder(folder: str | Path) -> Path:
    """The base pipeline an adapter folder was trained from."""
    return (Path(folder) / adapter_config(folder)["base"]).resolve()  # an absolute base stays as it is


def rebase(folder: str | Path, base: str | Path) -> None:
    """Point an adapter at another copy of its base (after moving one without the other)."""
    if not (Path(base) / "model_index.json").is_file():
        raise FileNotFoundError(f"{base}: not a pipeline folder (no model_index.json)")
    meta = {**adapter_config(folder), "base": _relative(Path(base), Path(folder))}
    (Path(folder) / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2))


def _relative(base: Path, out: Path) -> str:
    """The base as a path relative to the adapter folder, so that both can move together (checkpoints/)."""
    try:
        return os.path.relpath(base.resolve(), out.resolve())
    except ValueError:  # another drive
        return str(base.resolve())
