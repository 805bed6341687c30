"""Train M2M (either variant, any preset) on image sets with `accelerate`.

    # tiny, from scratch, on this CPU (the autoencoder and the DINO encoder are pretrained first)
    python -m train.training.m2m --preset tiny --variant self --vae runs/vae-tiny --out runs/m2m-self-tiny
    # full scale, from SD-2.1-base, on 8 GPUs with DeepSpeed ZeRO-2 (or train/accelerate/ddp.yaml; not FSDP)
    accelerate launch --config_file train/accelerate/deepspeed-zero2.yaml -m train.training.m2m --preset sd21-base \\
        --variant dino --data "data/mis/train-*.tar" --out runs/m2m-dino-sd21

Each step takes a batch of sets of one length K (sampled per batch), noises every image at
its own timestep and predicts it from the clean images before it (teacher forcing, one UNet
call). A checkpoint (`out/checkpoints/step-N`, written to a temporary folder and renamed) holds
the model, optimiser, schedule, EMA, RNG and data position, so a run killed at any moment
resumes from its last checkpoint at the same step, on the same batches, with the same loss
curve: run the same command again (a checkpoint refuses other recipe flags). `out/pipeline` is the
EMA model as an M2MPipeline (with `--export-raw`, `out/pipeline-raw` the training weights),
`out/log.csv` the loss, the learning rate, images/s and a held-out loss with and without the
context (the first sign that the context is used), `out/samples/` a sample grid every N steps.
The recipe (train/training/recipe.py): --timestep-sampler, --min-snr-gamma, --zero-terminal-snr.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from diffusers import AutoencoderKL, DDIMScheduler
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from tqdm import tqdm
from transformers import Dinov2Model, get_wsd_schedule

if not __package__:  # run by path: import from the repository root as `python -m` does, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])
from m2m.adapters import add_lora, save_adapter
from m2m.autoencoder import load_autoencoder
from m2m.conditioning import add_last_image_input, check_change_floor
from m2m.encoders import vae_latents
from m2m.images import to_pil
from m2m.loading import TRAINING_RECORD, load_pipeline, training_record
from m2m.model import M2MModel
from m2m.pipeline import M2MPipeline
from m2m.presets import Preset, build_pipeline, from_hub, get_preset
from m2m.sampling import SamplingParams
from m2m.sets import atomic_folder, contact_sheet, stack_rows
from train.data.loader import make_loader
from train.data.open_sets import OpenBatches
from train.training.recipe import TIMESTEP_SAMPLERS, min_snr_weights, sample_timesteps, with_zero_terminal_snr


@dataclass
class TrainConfig:
    preset: str = "tiny"
    variant: str = "self"
    out: str = "runs/m2m"
    data: str = "synth:train"  # shards (dir, glob), synth:train, open:train (rendered on the device), ...
    sprites: str | None = None  # open sets: the drawings' atlas (train/data/sprites.py); default data/sprites.npz
    val_data: str | None = "synth:heldout"  # held-out sets for the with/without-context loss
    init: str | None = None  # an M2M pipeline folder to start from (fine-tuning); else the preset's start
    vae: str | None = None  # tiny: a trained AutoencoderKL folder (train/training/autoencoder.py)
    image_encoder: str | None = None  # tiny M2M-DINO: a pretrained Dinov2Model folder (train/training/encoder.py)
    context_tokens: int | None = None  # M2M-Self: context tokens per image and ISA layer (default: preset's, --init's)
    reference_images: int | None = None  # M2M-Self: reference attention to this many recent images (0: the paper's)
    recent_context_images: int | None = None  # ISA: images before the last N pooled to --older-context-tokens
    older_context_tokens: int | None = None  # (the cost of a new image stays flat as the set grows)
    unet_width: float = 1.0  # a new model: the preset's UNet channels times this (0.5: the half-width UNet)
    image_encoder_size: int | None = None  # a new M2M-DINO: the encoder's input size (larger: more context tokens)
    last_image_input: bool = False  # the UNet also reads the last image's latent (m2m/conditioning.py); with --init,
    # its first convolution is widened with zero weights, so the model starts as the one loaded
    last_image_change: bool = False  # ... and denoises the change from the last image (implies --last-image-input)
    last_step_input: bool = False  # ... and reads the last step, last image minus the one before (implies the same)
    last_image_change_scale: float = 1.0  # ... times this (1 / the change's rms: latent_stats --changes)
    last_image_change_relative: bool = False  # ... or, from a set's third image on, 1 / the last step's rms
    last_image_pixels: bool = False  # ... and draws it on the last image's own pixels (generation only)
    last_image_change_floor: float = 0.0  # ... where its largest channel is at least this (generation only)
    steps: int = 3000
    batch_sets: int = 8
    min_k: int = 2
    max_k: int = 6
    lr: float = 3e-4
    warmup: int = 200
    cooldown_steps: int = 0  # > 0: the rate stays flat after warm-up, then falls linearly to zero over the last
    # this many of --steps (warm-up, stable, decay); 0: cosine over --steps. A flat run (--steps far off) resumes
    # with a near --steps and this to end on a cool-down
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    timestep_sampler: str = "uniform"  # the recipe (train/training/recipe.py): uniform or logit-normal,
    min_snr_gamma: float | None = None  # min-SNR-γ loss weights (None: all 1),
    zero_terminal_snr: bool = False  # betas rescaled to zero terminal SNR (saved in the model's scheduler)
    context_dropout: float = 0.1
    mixed_precision: str | None = None  # no / fp16 / bf16; None: as `accelerate launch` (or its config) says
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile the training forward (GPU runs: fewer kernel launches; CUDA graphs in
    compile_mode: str | None = None  # "reduce-overhead" where shapes are static: a fixed K and batch)
    compile_backend: str = "inductor"  # tests use aot_eager: the same graph capture, no code generation
    channels_last: bool = False  # the UNet's convolutions in channels-last memory (faster on GPUs)
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    log_every: int = 25
    val_every: int = 100
    sample_every: int = 500
    max_minutes: float | None = None  # stop (with a checkpoint) after this long; run again to go on
    budget_minutes: float | None = None  # stop once the run has trained this long over all its resumes
    workers: int = 2
    shuffle_buffer: int = 64  # shards: sets each loader worker holds (undecoded) to shuffle across shards
    n_sets: int = 10**7  # synth: sets per epoch
    seed: int = 0
    report_to: str | None = None  # "tensorboard" or "wandb" besides log.csv
    export_fp16: bool = False  # out/pipeline in fp16 (half the size)
    export_raw: bool = False  # also out/pipeline-raw: the training weights without the EMA
    lora_rank: int = 0  # > 0: fine-tune --init with a LoRA of this rank (+ its ISA weights); out/pipeline is an adapter
    task: str = ""  # the task a fine-tune is for (recorded in the adapter)


TRAIN_PRESETS = {
    "tiny": TrainConfig(ema_decay=0.995),
    "sd21-base": TrainConfig(
        preset="sd21-base",
        data="data/mis/train-*.tar",
        val_data=None,
        batch_sets=4,
        max_k=4,
        lr=1e-5,
        warmup=500,
        steps=100_000,
        ema_decay=0.9999,
        mixed_precision="fp16",
        gradient_checkpointing=True,
        checkpoint_every=2000,
        sample_every=2000,
        log_every=50,
        val_every=1000,
    ),
}

LOG_FIELDS = ["step", "loss", "lr", "images_per_s", "val_loss_context", "val_loss_no_context", "context_gain", "images"]


class Progress:
    """What a checkpoint needs besides the weights: the step, the data position and the recipe it trains with."""

    def __init__(self, recipe: dict):
        self.step, self.epoch, self.batch_in_epoch, self.recipe = 0, 0, 0, recipe
        self.seconds = 0.0  # wall-clock spent training, over all resumes (the budget of an equal-time comparison)
        self.images = 0  # images trained on in this run, over all resumes
        self.prior_images = 0  # images the --init model had seen when the run started (fixed by its first start)

    def state_dict(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "recipe": self.recipe,
                "seconds": self.seconds, "images": self.images, "prior_images": self.prior_images}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("recipe", RECIPE_DEFAULTS)  # checkpoints from before the recipe flags used the defaults
        if saved != self.recipe:
            raise ValueError(f"the checkpoint was trained with {saved}, this run asks for {self.recipe}: "
                             "give the same flags, or a new --out")  # fmt: skip
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.seconds = state.get("seconds", 0.0)  # checkpoints from before the budget: unknown, counted from here
        self.images = state.get("images", 0)
        self.prior_images = state.get("prior_images", self.prior_images)


RECIPE_FIELDS = ("timestep_sampler", "min_snr_gamma", "zero_terminal_snr")
RECIPE_DEFAULTS = {name: getattr(TrainConfig(), name) for name in RECIPE_FIELDS}


def recipe_of(cfg: TrainConfig) -> dict:
    """The flags that change the learning signal: a run resumes only with the same ones."""
    return {name: getattr(cfg, name) for name in RECIPE_FIELDS}


def check_recipe(cfg: TrainConfig) -> None:
    """Bad recipe flags, refused before anything is built."""
    if cfg.timestep_sampler not in TIMESTEP_SAMPLERS:
        raise ValueError(f"--timestep-sampler {cfg.timestep_sampler!r}: choose from {TIMESTEP_SAMPLERS}")
    if cfg.zero_terminal_snr and cfg.lora_rank:  # an adapter keeps no scheduler: it samples with its base's
        raise ValueError("--zero-terminal-snr changes the noise schedule, which a LoRA adapter cannot carry")
    if reads_last(cfg) and cfg.lora_rank:  # an adapter stores LoRA deltas only
        raise ValueError("--last-image-input widens the UNet's input, which a LoRA adapter cannot carry")
    if cfg.last_image_pixels and not cfg.last_image_change:
        raise ValueError("--last-image-pixels draws a change on the last image: it needs --last-image-change")
    if check_change_floor(cfg.last_image_change_floor) and not cfg.last_image_pixels:
        raise ValueError("--last-image-change-floor drops small changes on the last pixels: needs --last-image-pixels")
    if not 0 <= cfg.cooldown_steps <= cfg.steps:
        raise ValueError(f"--cooldown-steps must be between 0 and --steps ({cfg.steps}), got {cfg.cooldown_steps}")
    if cfg.last_image_change_relative and not cfg.last_image_change:
        raise ValueError("--last-image-change-relative scales a change from the last image: needs --last-image-change")
    if cfg.last_image_change_scale <= 0:
        raise ValueError(f"--last-image-change-scale must be positive, got {cfg.last_image_change_scale}")


def reads_last(cfg: TrainConfig) -> bool:
    """Whether the UNet reads the last image (and perhaps the last step) beside its noisy latent."""
    return cfg.last_image_input or cfg.last_image_change or cfg.last_step_input


def build_start(cfg: TrainConfig) -> M2MPipeline:
    """The starting weights: an M2M pipeline (fine-tune), SD-2.1-base from the hub, or the tiny preset."""
    if cfg.init is not None:
        pipe = load_pipeline(cfg.init)
        if pipe.variant != cfg.variant:
            raise ValueError(f"--init {cfg.init} is an M2M-{pipe.variant} model, not {cfg.variant}")
        if cfg.unet_width != 1.0 or cfg.image_encoder_size is not None:
            raise ValueError("--unet-width and --image-encoder-size shape a new model; --init keeps the one it loads")
        if cfg.context_tokens is not None:  # pooling has no weights: the loaded model reads finer (or coarser) maps
            pipe.isa.set_context_tokens(cfg.context_tokens)
        if cfg.reference_images is not None:  # nor has reference attention: it reads the UNet's own self-attention
            pipe.set_reference_images(cfg.reference_images)
        pipe.isa.register_to_config(**older_context(cfg))
        if reads_last(cfg):
            add_last_image_input(pipe.unet, 2 if cfg.last_step_input else 1)
        if cfg.last_image_change:
            pipe.isa.register_to_config(last_image_change=True, last_image_change_scale=cfg.last_image_change_scale,
                                        last_image_change_relative=cfg.last_image_change_relative,
                                        last_image_pixels=cfg.last_image_pixels,
                                        last_image_change_floor=cfg.last_image_change_floor)  # fmt: skip
        return pipe
    preset = new_model_preset(cfg)
    if preset.hub_id is not None:
        if cfg.unet_width != 1.0:
            raise ValueError(f"--unet-width: the {preset.name} preset loads its UNet from {preset.hub_id}, as it is")
        return from_hub(preset, cfg.variant)
    if cfg.vae is None and cfg.steps > 10:
        raise ValueError("the tiny preset trains on a fitted autoencoder: pass --vae (train/training/autoencoder.py)")
    vae = load_autoencoder(cfg.vae, torch_dtype=torch.float32) if cfg.vae else None
    if vae is not None:  # the UNet denoises that autoencoder's latents, however many channels they have
        c = vae.config.latent_channels
        preset = preset.replace(unet={**preset.unet, "in_channels": c, "out_channels": c})
    pipe = build_pipeline(preset, cfg.variant, seed=cfg.seed)
    vae = vae if vae is not None else pipe.vae
    encoder = pipe.image_encoder
    if encoder is not None and cfg.image_encoder is not None:  # M2M-DINO; also the fp16 one of a shipped checkpoint
        encoder = Dinov2Model.from_pretrained(cfg.image_encoder, dtype=torch.float32)
    return M2MPipeline(unet=pipe.unet, vae=vae, scheduler=pipe.scheduler, isa=pipe.isa, image_encoder=encoder)


def new_model_preset(cfg: TrainConfig) -> Preset:
    """The preset with this run's architecture flags applied (a model trained from its start)."""
    preset, changes = get_preset(cfg.preset), {}
    if cfg.context_tokens is not None:
        changes["max_context_tokens"] = cfg.context_tokens
    if cfg.reference_images is not None:
        changes["reference_images"] = cfg.reference_images
    if cfg.image_encoder_size is not None:
        changes["image_encoder_size"] = cfg.image_encoder_size
    if reads_last(cfg):
        changes.update(
            last_image_input=True,
            last_image_change=cfg.last_image_change,
            last_step_input=cfg.last_step_input,
            last_image_change_scale=cfg.last_image_change_scale,
            last_image_change_relative=cfg.last_image_change_relative,
            last_image_pixels=cfg.last_image_pixels,
            last_image_change_floor=cfg.last_image_change_floor,
        )
    changes.update(older_context(cfg))
    if cfg.unet_width != 1.0:
        changes["unet"] = {**preset.unet, "block_out_channels": scaled_channels(preset, cfg.unet_width)}
    return preset.replace(**changes)


def older_context(cfg: TrainConfig) -> dict:
    """The ISA pooling of older context images that the flags ask for (no weight depends on it)."""
    asked = {"recent_context_images": cfg.recent_context_images, "older_context_tokens": cfg.older_context_tokens}
    return {key: value for key, value in asked.items() if value is not None}


def scaled_channels(preset: Preset, width: float) -> tuple[int, ...]:
    """The UNet's channels times `width`, each still a multiple of its GroupNorm's groups."""
    groups = preset.unet.get("norm_num_groups", 32)
    channels = tuple(round(c * width / groups) * groups for c in preset.unet["block_out_channels"])
    if min(channels) < groups:
        raise ValueError(f"--unet-width {width}: the narrowest level would have fewer channels than {groups} groups")
    return channels


def trainable(model: M2MModel) -> list[torch.nn.Parameter]:
    """UNet + ISA, less the weights the variant's context encoder never uses (M2M-Self: the text K/V)."""
    for p in model.encoder.unused_parameters(model):
        p.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


@torch.no_grad()
def to_latents(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    """Sets (B, K, 3, H, W) in [-1, 1] -> scaled posterior-mean latents (B, K, 4, h, w), as the pipeline encodes."""
    z = torch.cat([vae_latents(vae, c) for c in pixels.flatten(0, 1).split(64)])
    return z.unflatten(0, pixels.shape[:2])


class Validation:
    """A fixed held-out batch with fixed noise: the loss of images 2..K with and without their context."""

    def __init__(self, cfg: TrainConfig, vae: AutoencoderKL, scheduler: DDIMScheduler, device):
        batch = next(iter(make_loader(cfg.val_data, 16, 4, 4, vae.config.sample_size, 0, n_sets=16, shuffle=False)))
        gen = torch.Generator().manual_seed(1234)
        self.pixels = batch["pixels"].to(device, vae.dtype)  # (16, 4, 3, H, W)
        self.latents = to_latents(vae, self.pixels)
        n = self.latents.shape[0] * self.latents.shape[1]
        self.timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=gen).to(device)
        self.noise = torch.randn(self.latents.flatten(0, 1).shape, generator=gen).to(device, self.latents.dtype)

    @torch.no_grad()
    def __call__(self, model) -> tuple[float, float]:
        sees = torch.ones(self.latents.shape[:2], dtype=torch.bool, device=self.latents.device)  # (B, K)
        losses = [model(self.latents, self.pixels, self.timesteps, self.noise, s)[:, 1:].mean().item()
                  for s in (sees, ~sees)]  # fmt: skip
        return losses[0], losses[1]


@torch.no_grad()
def sample_grid(pipe: M2MPipeline, sets: torch.Tensor, path: Path) -> None:
    """One row per held-out set (K, 3, H, W): 3 context images | 3 generated. Saved as one PNG."""
    rows = []
    for pixels in sets:
        context = to_pil(pixels[:3])
        generated = pipe(context, num_images=3, params=SamplingParams(guidance=2.0)).images
        rows.append(contact_sheet(context, generated))
    path.parent.mkdir(parents=True, exist_ok=True)
    stack_rows(rows).save(path)


def export(pipe: M2MPipeline, out: Path, cfg: TrainConfig, record: dict) -> None:
    """The model (the EMA's weights, or the raw ones) as a pipeline folder or a task adapter, written atomically,
    with `record` (what it was trained on) beside its weights."""
    if cfg.lora_rank:
        save_adapter(pipe, out, cfg.init, pipe.unet.peft_config["default"], cfg.task)
        (out / TRAINING_RECORD).write_text(json.dumps(record, indent=2))
        return
    if cfg.export_fp16:  # a half-precision copy: the training modules stay as they are
        pipe = copy.deepcopy(pipe).to(torch.float16)
    with atomic_folder(out) as tmp:
        pipe.save_pretrained(tmp)
        (Path(tmp) / TRAINING_RECORD).write_text(json.dumps(record, indent=2))


def prior_images(cfg: TrainConfig) -> int:
    """The images the --init model had seen (its record; 0 for a new model or one without a record)."""
    record = training_record(cfg.init) if cfg.init else None
    return record["images_seen"] if record else 0


def run_record(run: Run) -> dict:
    """What an export says of its training: images seen in all (the --init's, then this run's), steps, time."""
    return {"images_seen": run.progress.prior_images + run.progress.images, "run_images": run.progress.images,
            "run_steps": run.progress.step, "run_training_minutes": round(run.progress.seconds / 60, 2),
            "init": run.cfg.init, "data": run.cfg.data}  # fmt: skip


def latest_checkpoint(out: Path) -> Path | None:
    found = sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    return found[-1] if found else None


def save_checkpoint(accelerator: Accelerator, out: Path, step: int, keep: int) -> None:
    """accelerate's full state, atomically: a kill at any moment leaves the previous checkpoint whole."""
    final, tmp = out / "checkpoints" / f"step-{step:07d}", out / "checkpoints" / f".tmp-step-{step:07d}"
    if accelerator.is_main_process:
        tmp.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # the model from the main process, RNG states from every process
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in sorted((out / "checkpoints").glob("step-*"))[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


class CsvLog:
    """log.csv; on resume the rows after the checkpoint's step are dropped, so the curve carries on."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if path.exists() and resume_step > 0:
            with path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, LOG_FIELDS).writerow(row)


def check_strategy(accelerator: Accelerator, batch_sets: int) -> None:
    """DDP or DeepSpeed ZeRO-2, which keep every parameter whole on each process; FSDP and ZeRO-3 are refused.

    The EMA and gradient clipping hold the module's own parameters, and the EMA is checkpointed from the main
    process only: under a strategy that shards the parameters, both would see one shard (docs/training.md).
    """
    sharded = accelerator.distributed_type == DistributedType.FSDP
    plugin = accelerator.state.deepspeed_plugin if accelerator.distributed_type == DistributedType.DEEPSPEED else None
    if plugin is not None:
        sharded = plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0) == 3
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = batch_sets  # our loader is not prepared
    if sharded:
        raise ValueError(f"{accelerator.distributed_type} shards the parameters, which the EMA and its export do not "
                         "support: use train/accelerate/deepspeed-zero2.yaml or ddp.yaml")  # fmt: skip


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 autocast speeds a step up on `device`: on GPUs that have bf16, and on CPUs with oneDNN's
    AVX512 bf16 kernels. On an AVX2-only CPU it is emulated and far slower than fp32 (docs/training.md)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)  # Ampere and later
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def check_precision(accelerator: Accelerator) -> None:
    """A warning where bf16 was asked for on a device that emulates it."""
    device = accelerator.device
    if accelerator.mixed_precision == "bf16" and not bf16_is_fast(device):
        why = "no AVX512" if device.type == "cpu" else "no native bf16"
        warnings.warn(f"bf16 autocast is emulated on this {device.type} ({why}): a step is many times slower "
                      "than in fp32; train with --mixed-precision no", stacklevel=2)  # fmt: skip


@dataclass
class Run:
    """What a training run builds once and every step uses: the model, its optimiser, schedule, EMA and log."""

    cfg: TrainConfig
    accelerator: Accelerator
    pipe: M2MPipeline
    model: M2MModel  # as accelerate prepared it
    params: list[torch.nn.Parameter]
    ema: EMAModel
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    vae: AutoencoderKL
    progress: Progress
    log: CsvLog | None = None
    val: Validation | None = None

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)


def start_run(cfg: TrainConfig) -> Run:
    """The accelerator, the starting pipeline, what trains (all of it, or a LoRA), its optimiser, schedule and EMA."""
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on GPUs that have them; no effect on CPU
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, log_with=cfg.report_to, project_dir=cfg.out)
    check_strategy(accelerator, cfg.batch_sets)
    check_precision(accelerator)
    check_recipe(cfg)
    pipe = build_start(cfg)
    if cfg.zero_terminal_snr:  # saved with the model: its sampler then starts from pure noise
        pipe.register_modules(scheduler=with_zero_terminal_snr(pipe.scheduler))
    set_seed(cfg.seed, device_specific=True)  # after building (which seeds itself): different noise on every rank
    if cfg.lora_rank:
        if cfg.init is None:
            raise ValueError("--lora-rank fine-tunes a trained model: give it with --init")
        pipe.unet.requires_grad_(False)
        add_lora(pipe.unet, cfg.lora_rank)  # only the LoRA weights (and ISA) train
    model = M2MModel(pipe.unet, pipe.isa, pipe.scheduler, pipe.image_encoder, cfg.context_dropout).train()
    if cfg.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    params = trainable(model)
    ema = EMAModel(params, decay=cfg.ema_decay)
    fused = accelerator.device.type == "cuda"  # one kernel for the whole update
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    speed_up(model, cfg)
    # accelerate steps a prepared schedule once per process at every step: counted in those steps
    n = accelerator.num_processes
    sched = learning_rate_schedule(opt, cfg.warmup * n, cfg.steps * n, cfg.cooldown_steps * n)
    model, opt, sched = accelerator.prepare(model, opt, sched)
    progress = Progress(recipe_of(cfg))
    progress.prior_images = prior_images(cfg)  # a resume takes the checkpoint's: the --init may have moved on since
    accelerator.register_for_checkpointing(ema, progress)
    vae = pipe.vae.to(accelerator.device).requires_grad_(False).eval()
    if pipe.image_encoder is not None:
        pipe.image_encoder.to(accelerator.device)
    ema.to(accelerator.device)
    return Run(cfg, accelerator, pipe, model, params, ema, opt, sched, vae, progress)


def speed_up(model: M2MModel, cfg: TrainConfig) -> None:
    """channels-last and torch.compile, in place: the module, its parameters and their names stay the same."""
    if cfg.channels_last:
        model.unet.to(memory_format=torch.channels_last)
    if cfg.compile:
        model.compile(backend=cfg.compile_backend, mode=cfg.compile_mode, dynamic=False)


def resume(run: Run) -> None:
    """The last checkpoint's state, if there is one; then the log (cut at its step), trackers, the validation batch."""
    accelerator, cfg = run.accelerator, run.cfg
    accelerator.print(f"training M2M-{cfg.variant} on {accelerator.num_processes} process(es), "
                      f"{accelerator.distributed_type}, {accelerator.device}")  # fmt: skip
    found = latest_checkpoint(run.out)
    if found is not None:
        accelerator.load_state(str(found))
        run.ema.to(accelerator.device)  # the EMA's state comes back on the CPU
        accelerator.print(f"resumed from {found} at step {run.progress.step}")
    run.log = CsvLog(run.out / "log.csv", run.progress.step) if accelerator.is_main_process else None
    if cfg.report_to:
        accelerator.init_trackers("m2m", config=dataclasses.asdict(cfg))
    run.val = Validation(cfg, run.vae, run.pipe.scheduler, accelerator.device) if cfg.val_data else None


def batches(run: Run) -> Iterator[dict]:
    """Endless batches from where the run stands: open sets rendered on the device, or the loader's epochs."""
    cfg, accelerator, progress = run.cfg, run.accelerator, run.progress
    res = run.vae.config.sample_size
    if cfg.data.startswith("open:"):  # rendered on the training device, no loader: training never waits for data
        yield from open_batches(cfg, accelerator, res).iterate(progress.step)
        return
    while True:
        loader = make_loader(cfg.data, cfg.batch_sets, cfg.min_k, cfg.max_k, res, cfg.workers, cfg.n_sets,
                             accelerator.process_index, accelerator.num_processes, seed=cfg.seed,
                             shuffle_buffer=cfg.shuffle_buffer)  # fmt: skip
        loader.dataset.set_epoch(progress.epoch)
        loader.dataset.resume_at(progress.batch_in_epoch, cfg.batch_sets)
        yield from loader
        progress.epoch, progress.batch_in_epoch = progress.epoch + 1, 0


def train_step(run: Run, batch: dict) -> tuple[torch.Tensor, int]:
    """One optimiser step on a batch of sets; returns the loss and the images it saw on all processes."""
    accelerator = run.accelerator
    pixels = batch["pixels"].to(accelerator.device)  # (B, K, 3, H, W)
    with accelerator.autocast() if pixels.is_cuda else nullcontext():  # bf16 encode on a GPU
        latents = to_latents(run.vae, pixels.to(run.vae.dtype)).float()  # (B, K, 4, h, w); noised in fp32
    with accelerator.autocast():
        loss = weighted_loss(run, latents, pixels)
    accelerator.backward(loss)
    if run.cfg.grad_clip:
        accelerator.clip_grad_norm_(run.params, run.cfg.grad_clip)
    run.opt.step()
    run.sched.step()
    run.opt.zero_grad(set_to_none=True)
    run.ema.step(run.params)
    run.progress.step, run.progress.batch_in_epoch = run.progress.step + 1, run.progress.batch_in_epoch + 1
    return loss, pixels.shape[0] * pixels.shape[1] * accelerator.num_processes


def weighted_loss(run: Run, latents: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """The batch's loss under the recipe: timesteps drawn by `cfg.timestep_sampler`, each image weighted (min-SNR).

    This is log.csv's `loss`; the held-out losses stay unweighted, on uniform timesteps.
    """
    cfg, scheduler = run.cfg, run.pipe.scheduler
    b, k = latents.shape[:2]
    t = sample_timesteps(cfg.timestep_sampler, b * k, scheduler.config.num_train_timesteps, latents.device)  # (B*K,)
    per_image = run.model(latents, pixels, t)  # (B, K); pixels: what M2M-DINO's encoder reads
    if cfg.min_snr_gamma is not None:
        per_image = per_image * min_snr_weights(scheduler, t, cfg.min_snr_gamma).view(b, k)
    return per_image.mean()


def learning_rate_schedule(
    opt: torch.optim.Optimizer, warmup: int, steps: int, cooldown: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Warm-up, then cosine to zero at `steps`; with a `cooldown`, flat instead and a linear fall over its last steps.

    Both are functions of the step alone (a checkpoint stores no schedule), so a resume may change them.
    """
    if cooldown <= 0:
        return get_cosine_schedule_with_warmup(opt, warmup, steps)
    return get_wsd_schedule(opt, warmup, cooldown, num_training_steps=steps, decay_type="linear")


def train(cfg: TrainConfig) -> dict:
    """From the last checkpoint in `cfg.out` (or the start) to `cfg.steps`, or until `cfg.max_minutes` are spent."""
    run = start_run(cfg)
    resume(run)
    t0 = started = time.monotonic()
    images, last = 0, {}
    bar = tqdm(total=cfg.steps, initial=run.progress.step, desc=f"M2M-{cfg.variant}",
               disable=not run.accelerator.is_main_process)  # fmt: skip
    for batch in batches(run):
        if run.progress.step >= cfg.steps or out_of_time(run, t0):
            break
        tick = time.monotonic()
        loss, n = train_step(run, batch)
        if cfg.budget_minutes is not None and run.accelerator.device.type == "cuda":
            torch.cuda.synchronize()  # the step's kernels run asynchronously: count them, not their launches
        run.progress.seconds += time.monotonic() - tick
        run.progress.images += n
        images += n
        bar.update()
        last = step_end(run, loss, images, started)
        if last.get("images_per_s") is not None:
            started, images = time.monotonic(), 0
    bar.close()
    saved = latest_checkpoint(run.out)
    if saved is None or int(saved.name.split("-")[1]) != run.progress.step:
        finish_checkpoint(run, run.progress.step)
    run.accelerator.end_training()
    return {"step": run.progress.step, **last}


def open_batches(cfg: TrainConfig, accelerator: Accelerator, res: int) -> OpenBatches:
    return OpenBatches.from_source(cfg.data, cfg.batch_sets, cfg.min_k, cfg.max_k, accelerator.device, cfg.sprites,
                                   rank=accelerator.process_index, world=accelerator.num_processes, seed=cfg.seed,
                                   size=res)  # fmt: skip


def out_of_time(run: Run, t0: float) -> bool:
    """Whether this call's minutes or the run's budget are spent, agreed by every process (they stop at one step)."""
    cfg, accelerator = run.cfg, run.accelerator
    if cfg.max_minutes is None and cfg.budget_minutes is None:
        return False
    late = (cfg.max_minutes is not None and time.monotonic() - t0 > 60 * cfg.max_minutes) or (
        cfg.budget_minutes is not None and run.progress.seconds >= 60 * cfg.budget_minutes
    )
    late = torch.tensor(float(late), device=accelerator.device)
    return accelerator.reduce(late, "sum").item() > 0


def step_end(run: Run, loss: torch.Tensor, images: int, started: float) -> dict:
    """Logging, validation, samples and checkpoints after a step; returns the logged row (empty if none)."""
    cfg, accelerator, step, row = run.cfg, run.accelerator, run.progress.step, {}
    if step % cfg.log_every == 0 or step == 1:
        loss = accelerator.reduce(loss.detach(), "mean").item()
        row = {"step": step, "loss": round(loss, 6), "lr": run.sched.get_last_lr()[0],
               "images_per_s": round(images / max(time.monotonic() - started, 1e-9), 2),
               "images": run.progress.images}  # fmt: skip
    if run.val is not None and (step % cfg.val_every == 0 or step == 1):
        row["step"] = step
        with_context, without = run.val(run.model)
        row["val_loss_context"], row["val_loss_no_context"] = round(with_context, 6), round(without, 6)
        row["context_gain"] = round(context_gain(with_context, without), 4)
    if row and accelerator.is_main_process:
        run.log.write(row)
        tqdm.write(" ".join(f"{k}={v}" for k, v in row.items()))
    if row and cfg.report_to:
        accelerator.log({k: v for k, v in row.items() if k != "step"}, step=step)
    if step % cfg.sample_every == 0 and accelerator.is_main_process and run.val is not None:
        with ema_weights(run.ema, run.params):
            sample_grid(run.pipe, run.val.pixels[:2], run.out / "samples" / f"step-{step:07d}.png")
    if step % cfg.checkpoint_every == 0 or step == cfg.steps:
        finish_checkpoint(run, step)
    return row


def context_gain(with_context: float, without: float) -> float:
    """How much the context lowers the held-out loss, as a share of the loss without it (0: the context is unused)."""
    return (without - with_context) / max(without, 1e-12)


def finish_checkpoint(run: Run, step: int) -> None:
    save_checkpoint(run.accelerator, run.out, step, run.cfg.keep_checkpoints)
    if run.accelerator.is_main_process:
        record = run_record(run)
        with ema_weights(run.ema, run.params):
            export(run.pipe, run.out / "pipeline", run.cfg, record)
        if run.cfg.export_raw:
            export(run.pipe, run.out / "pipeline-raw", run.cfg, record)
    run.accelerator.wait_for_everyone()


@contextmanager
def ema_weights(ema: EMAModel, params):
    """The EMA weights swapped in (for sampling or export), the training weights back after."""
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=sorted(TRAIN_PRESETS))
    for field in dataclasses.fields(TrainConfig):
        if field.name == "preset":
            continue
        flag = "--" + field.name.replace("_", "-")
        if field.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = {"int": int, "int | None": int, "float": float, "float | None": float}.get(field.type, str)
            p.add_argument(flag, type=kind, default=None)
    args = vars(p.parse_args(argv))
    base = TRAIN_PRESETS[args.pop("preset")]
    return dataclasses.replace(base, **{k: v for k, v in args.items() if v is not None})


def main(argv: list[str] | None = None) -> dict:
    return train(parse_args(argv))


if __name__ == "__main__":
    main()
