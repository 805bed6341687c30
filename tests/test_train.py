"""train/training/m2m.py on the micro preset: the whole loop, exact resume after kill -9, 2-process data parallel."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from accelerate.utils import DistributedType
from diffusers.training_utils import EMAModel
from safetensors import safe_open
from safetensors.torch import load_file

from m2m.attention import cross_attentions
from m2m.loading import CheckpointError, load_pipeline
from m2m.presets import build_pipeline
from train.training import m2m as training
from train.training.m2m import TRAIN_PRESETS, check_precision, check_strategy, parse_args, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=["self", "dino"])
def start(request, micro, tmp_path_factory) -> Path:
    """A micro pipeline folder to train from (`--init`)."""
    folder = tmp_path_factory.mktemp(f"start-{request.param}")
    build_pipeline(micro, request.param, seed=0).save_pretrained(folder)
    return folder


def args(start: Path, out: Path, steps: int, *extra: str) -> list[str]:
    variant = "dino" if (start / "image_encoder").exists() else "self"
    return ["--init", str(start), "--variant", variant, "--out", str(out), "--steps", str(steps),
            "--batch-sets", "2", "--min-k", "2", "--max-k", "3", "--workers", "0", "--log-every", "1",
            "--val-every", "2", "--checkpoint-every", "2", "--sample-every", "100", "--warmup", "2",
            *extra]  # fmt: skip


def losses(out: Path) -> list[tuple[int, float]]:
    with (out / "log.csv").open() as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def test_training_runs_logs_and_exports_a_loadable_pipeline(start, tmp_path):
    result = train(parse_args(args(start, tmp_path, 4, "--sample-every", "4")))
    assert result["step"] == 4
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert all(float(r["images_per_s"]) > 0 for r in rows)
    peak = parse_args(args(start, tmp_path, 4)).lr  # warm-up over 2 steps, then a cosine down to 0 at step 4
    assert [float(r["lr"]) for r in rows] == pytest.approx([peak / 2, peak, peak / 2, 0.0])
    assert rows[1]["val_loss_context"] and rows[1]["val_loss_no_context"]  # the sign that the context is used
    with_context, without = float(rows[1]["val_loss_context"]), float(rows[1]["val_loss_no_context"])
    assert float(rows[1]["context_gain"]) == pytest.approx((without - with_context) / without, abs=1e-3)
    record = json.loads((tmp_path / "pipeline" / "m2m_training.json").read_text())
    assert record["images_seen"] == record["run_images"] == int(rows[-1]["images"]) >= 4 * 2 * 2  # 4 steps, 2 sets
    again = train(parse_args(args(tmp_path / "pipeline", tmp_path / "on", 1, "--mixed-precision", "no")))
    assert again["step"] == 1
    on = json.loads((tmp_path / "on" / "pipeline" / "m2m_training.json").read_text())
    assert on["images_seen"] == record["images_seen"] + on["run_images"]  # a fine-tune carries the count on
    assert (tmp_path / "samples" / "step-0000004.png").is_file()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    pipe = load_pipeline(tmp_path / "pipeline")
    assert pipe.variant == ("dino" if (start / "image_encoder").exists() else "self")
    assert len(pipe(num_images=1, num_inference_steps=2).images) == 1


def test_exported_pipeline_is_the_ema_of_the_training_weights(start, tmp_path):
    """out/pipeline = EMA of the weights after each step (kept in checkpoints 1..3), not the last weights."""
    decay = 0.2  # diffusers' EMA warms up as min(decay, (1 + s) / (10 + s)): 0.2 is reached at step 3
    train(parse_args(args(start, tmp_path, 3, "--ema-decay", str(decay), "--checkpoint-every", "1",
                          "--keep-checkpoints", "3", "--lr", "1e-2")))  # fmt: skip
    weights = [load_file(tmp_path / "checkpoints" / f"step-{s:07d}" / "model.safetensors") for s in (1, 2, 3)]
    schedule = EMAModel([torch.nn.Parameter(torch.zeros(1))], decay=decay)
    exported, initial = load_pipeline(tmp_path / "pipeline"), load_pipeline(start)
    for part in ("unet", "isa"):
        for name, value in getattr(exported, part).state_dict().items():
            ema = weights[0][f"{part}.{name}"]  # the decay at step 1 is 0
            for s in (2, 3):
                d = schedule.get_decay(s)
                ema = d * ema + (1 - d) * weights[s - 1][f"{part}.{name}"]
            assert torch.allclose(value, ema, atol=1e-6), name
    last = weights[2]
    assert any(not torch.allclose(v, last[f"unet.{n}"], atol=1e-5) for n, v in exported.unet.state_dict().items())
    pairs = zip(exported.unet.parameters(), initial.unet.parameters(), strict=True)
    assert not all(torch.equal(a, b) for a, b in pairs)  # and training moved them


def test_bf16_autocast_on_cpu_trains_fp32_weights(start, tmp_path):
    """The CPU recipe (scripts/train_tiny.sh) trains under bf16 autocast: the weights stay fp32, the loss finite."""
    command = [sys.executable, "-m", "train.training.m2m", *args(start, tmp_path, 2, "--mixed-precision", "bf16")]
    subprocess.run([*command, "--ema-decay", "0.0"], cwd=ROOT, check=True, capture_output=True)  # own Accelerator
    assert all(np.isfinite(loss) for _, loss in losses(tmp_path))
    with safe_open(tmp_path / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors", "pt") as f:
        names = f.keys()
        assert {f.get_slice(name).get_dtype() for name in names} == {"F32"}  # as saved, not as loaded
    trained, initial = load_pipeline(tmp_path / "pipeline"), load_pipeline(start)
    assert any(not torch.equal(a, b) for a, b in zip(trained.unet.parameters(), initial.unet.parameters(), strict=True))


def test_self_variant_does_not_train_the_replaced_text_projections(micro, tmp_path):
    from m2m.model import M2MModel
    from train.training.m2m import trainable

    pipe = build_pipeline(micro, "self")
    model = M2MModel(pipe.unet, pipe.isa, pipe.scheduler)
    params = {id(p) for p in trainable(model)}
    for _, attn in cross_attentions(model.unet):
        assert id(attn.to_k.weight) not in params and id(attn.to_q.weight) in params
    assert all(id(p) in params for p in model.isa.parameters())


def test_a_fine_tune_may_read_its_context_unpooled(start, tmp_path):
    """--init with --context-tokens: M2M-Self trains and exports with the new pooling; M2M-DINO has none to change."""
    cmd = args(start, tmp_path / "run", 1, "--context-tokens", "64", "--mixed-precision", "no")
    if (start / "image_encoder").exists():
        with pytest.raises(ValueError, match="only M2M-Self"):
            train(parse_args(cmd))
        return
    train(parse_args(cmd))
    assert load_pipeline(start).isa.config.max_context_tokens == 16
    assert load_pipeline(tmp_path / "run" / "pipeline").isa.config.max_context_tokens == 64


def test_a_budget_counts_training_time_over_every_resume(start, tmp_path):
    """--budget-minutes: a run stops once its steps have taken that long, and a resume does not start it anew."""
    budget = ["--budget-minutes", "0.00001", "--mixed-precision", "no"]  # under a millisecond: one step spends it
    assert train(parse_args(args(start, tmp_path, 50, *budget)))["step"] == 1
    assert train(parse_args(args(start, tmp_path, 50, *budget)))["step"] == 1
    assert train(parse_args(args(start, tmp_path, 3, "--mixed-precision", "no")))["step"] == 3  # no budget: on


def test_a_flat_run_resumes_into_a_linear_cool_down(start, tmp_path):
    """--cooldown-steps: a resume may end a run on a flat rate falling linearly to zero (the schedule is not stored)."""
    flat = ["--mixed-precision", "no", "--checkpoint-every", "3"]
    train(parse_args(args(start, tmp_path, 3, *flat)))  # a cosine over 3 steps, then a resume that changes it
    assert train(parse_args(args(start, tmp_path, 6, *flat, "--cooldown-steps", "2")))["step"] == 6
    peak = parse_args(args(start, tmp_path, 6)).lr
    lrs = {int(r["step"]): float(r["lr"]) for r in csv.DictReader((tmp_path / "log.csv").open())}
    assert [lrs[s] for s in (4, 5, 6)] == pytest.approx([peak, peak / 2, 0.0])  # flat, then linear to 0 at --steps
    with pytest.raises(ValueError, match="--cooldown-steps"):
        train(parse_args(args(start, tmp_path / "bad", 3, "--cooldown-steps", "4")))


def test_a_fine_tune_may_turn_reference_attention_on(start, tmp_path):
    """--init with --reference-images: M2M-Self trains and exports it (no new weight); M2M-DINO refuses it."""
    cmd = args(start, tmp_path / "run", 1, "--reference-images", "2", "--mixed-precision", "no",
               "--recent-context-images", "2", "--older-context-tokens", "4")  # fmt: skip
    if (start / "image_encoder").exists():
        with pytest.raises(ValueError, match="M2M-DINO has none"):
            train(parse_args(cmd))
        return
    train(parse_args(cmd))
    before, after = load_pipeline(start), load_pipeline(tmp_path / "run" / "pipeline")
    assert (before.isa.config.reference_images, after.isa.config.reference_images) == (0, 2)
    assert (after.isa.config.recent_context_images, after.isa.config.older_context_tokens) == (2, 4)
    from m2m.attention import ReferenceAttnProcessor

    kinds = {type(proc) for name, proc in after.unet.attn_processors.items() if name.endswith("attn1.processor")}
    assert kinds == {ReferenceAttnProcessor}  # loaded back, the model attends as it was trained
    assert set(before.unet.state_dict()) == set(after.unet.state_dict())
    assert set(before.isa.state_dict()) == set(after.isa.state_dict())


def test_a_fine_tune_may_widen_its_input_to_the_last_image(start, tmp_path):
    """--init with --last-image-input: the exported pipeline's UNet reads [noisy; last image] and loads back so;
    only its first convolution changed shape."""
    from m2m.conditioning import reads_last_image

    train(parse_args(args(start, tmp_path / "run", 1, "--last-image-input", "--mixed-precision", "no")))
    before, after = load_pipeline(start), load_pipeline(tmp_path / "run" / "pipeline")
    assert not reads_last_image(before.unet) and reads_last_image(after.unet)
    shapes = {name: tuple(w.shape) for name, w in before.unet.state_dict().items()}
    changed = [name for name, w in after.unet.state_dict().items() if tuple(w.shape) != shapes[name]]
    assert changed == ["conv_in.weight"]
    assert len(after(num_images=2, num_inference_steps=1).images) == 2  # generates, the second from the first


def test_architecture_flags_shape_a_new_model_and_are_refused_on_init(start):
    from train.training.m2m import new_model_preset

    cfg = parse_args(["--unet-width", "0.5", "--reference-images", "1", "--image-encoder-size", "256",
                      "--recent-context-images", "4", "--last-image-change", "--last-image-pixels",
                      "--last-image-change-floor", "0.5", "--last-image-change-relative"])  # fmt: skip
    preset = new_model_preset(cfg)
    assert preset.last_image_input and preset.last_image_change and preset.last_image_change_floor == 0.5
    isa = build_pipeline(preset, "self").isa  # what an export writes
    assert isa.config.last_image_change_floor == 0.5 and isa.config.last_image_change_relative
    assert preset.unet["block_out_channels"] == (32, 64, 64)  # the tiny preset's (64, 128, 128), halved
    assert (preset.reference_images, preset.image_encoder_size) == (1, 256)
    assert (preset.recent_context_images, preset.older_context_tokens) == (4, 16)
    with pytest.raises(ValueError, match="fewer channels"):
        new_model_preset(parse_args(["--unet-width", "0.1"]))
    with pytest.raises(ValueError, match="shape a new model"):
        train(parse_args(args(start, Path("unused"), 1, "--unet-width", "0.5")))


def test_kill_9_then_resume_carries_on_the_same_loss_curve(start, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train(parse_args(args(start, straight, 12)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "train.training.m2m", *args(start, killed, 12)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 240
    while not (killed / "checkpoints" / "step-0000004").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = max(step for step, _ in losses(killed))
    result = train(parse_args(args(start, killed, 12)))  # the same command again
    assert result["step"] == 12
    assert before < 12, "the run finished before it could be killed"
    got, want = losses(killed), losses(straight)
    assert [s for s, _ in got] == list(range(1, 13))  # no step twice, none missing
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in want], rel=1e-5, abs=1e-6)


def test_two_process_data_parallel_on_cpu(micro, tmp_path):
    folder = tmp_path / "start"
    build_pipeline(micro, "self", seed=0).save_pretrained(folder)
    # torchrun starts the processes; accelerate makes them one gloo group (`accelerate launch` does the same on GPUs)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "train.training.m2m", *args(folder, tmp_path / "run", 3)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 process(es), DistributedType.MULTI_CPU" in proc.stdout
    assert [s for s, _ in losses(tmp_path / "run")] == [1, 2, 3]
    peak = parse_args(args(folder, tmp_path, 3)).lr  # the schedule is counted in steps, not steps x processes
    with (tmp_path / "run" / "log.csv").open() as f:
        assert [float(r["lr"]) for r in csv.DictReader(f)] == pytest.approx([peak / 2, peak, 0.0])
    assert load_pipeline(tmp_path / "run" / "pipeline").variant == "self"


def test_only_strategies_that_keep_parameters_whole_are_accepted():
    """The EMA, gradient clipping and the export hold whole parameters: FSDP and ZeRO-3 would give them one shard."""

    def accelerator(kind: DistributedType, stage: int = 0) -> SimpleNamespace:
        plugin = SimpleNamespace(deepspeed_config={"zero_optimization": {"stage": stage}})
        return SimpleNamespace(distributed_type=kind, state=SimpleNamespace(deepspeed_plugin=plugin))

    for refused in (accelerator(DistributedType.FSDP), accelerator(DistributedType.DEEPSPEED, 3)):
        with pytest.raises(ValueError, match=r"shards the parameters.*deepspeed-zero2\.yaml"):
            check_strategy(refused, 2)
    zero2 = accelerator(DistributedType.DEEPSPEED, 2)
    check_strategy(zero2, 4)
    assert zero2.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] == 4
    check_strategy(accelerator(DistributedType.MULTI_GPU), 4)


@pytest.mark.parametrize("fast", [True, False])
def test_bf16_on_a_device_that_emulates_it_warns(monkeypatch, recwarn, fast):
    monkeypatch.setattr(training, "bf16_is_fast", lambda device: fast)
    for precision in ("no", "bf16"):
        check_precision(SimpleNamespace(mixed_precision=precision, device=torch.device("cpu")))
    assert [str(w.message) for w in recwarn if "emulated" in str(w.message)] == ([] if fast else [
        "bf16 autocast is emulated on this cpu (no AVX512): a step is many times slower than in fp32; "
        "train with --mixed-precision no"])  # fmt: skip


def test_bf16_is_fast_on_a_cpu_exactly_where_onednn_has_bf16_kernels():
    assert training.bf16_is_fast(torch.device("cpu")) is torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert training.bf16_is_fast(torch.device("meta")) is False


def test_the_accelerate_configs_the_docs_name_exist():
    texts = [ROOT / "README.md", ROOT / "train/training/m2m.py", *sorted((ROOT / "docs").glob("*.md"))]
    named = {m for path in texts for m in re.findall(r"train/accelerate/[\w.-]+\.yaml", path.read_text())}
    assert "train/accelerate/deepspeed-zero2.yaml" in named
    assert [name for name in sorted(named) if not (ROOT / name).is_file()] == []


def test_config_presets_and_flags():
    cfg = parse_args(["--preset", "sd21-base", "--lr", "2e-5", "--no-gradient-checkpointing"])
    assert cfg.preset == "sd21-base" and cfg.lr == 2e-5 and cfg.gradient_checkpointing is False
    assert parse_args(["--mixed-precision", "bf16"]).mixed_precision == "bf16"
    assert parse_args([]) == TRAIN_PRESETS["tiny"]
    with pytest.raises(SystemExit):
        parse_args(["--preset", "nope"])


def test_lora_fine_tune_ships_a_small_adapter_that_loads_like_a_checkpoint(micro, tmp_path):
    base = tmp_path / "base"
    build_pipeline(micro, "self", seed=0).save_pretrained(base)
    out = tmp_path / "nvs"
    train(parse_args(args(base, out, 2, "--lora-rank", "4", "--data", "procedure:train",
                          "--val-data", "procedure:heldout", "--task", "procedure", "--ema-decay", "0.0")))  # fmt: skip
    adapter = out / "pipeline"
    size = sum(f.stat().st_size for f in adapter.rglob("*") if f.is_file())
    full = sum(f.stat().st_size for f in base.rglob("*") if f.is_file())
    assert size < full / 5
    tuned, plain = load_pipeline(adapter), load_pipeline(base)
    kw = dict(num_images=1, num_inference_steps=2, seed=3)
    a, b = np.asarray(tuned(**kw).images[0]), np.asarray(plain(**kw).images[0])
    assert not np.array_equal(a, b)  # the adapter changes the model
    with pytest.raises(CheckpointError, match="adapter"):
        (adapter / "unet_lora.safetensors").write_bytes(b"broken")
        load_pipeline(adapter)


def test_precision_bench_times_both_and_counts_flops():
    bench = [sys.executable, "bench/train_precision.py", "--checkpoint", "checkpoints/m2m-self-tiny"]
    out = subprocess.run([*bench, "--sets", "1", "--k", "2", "--rounds", "2"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    gflop = float(out.split(" GFLOP per training image")[0].split()[-1])
    ratio = float(out.strip().splitlines()[-1].split()[-1])
    assert gflop > 1 and ratio > 0  # the tiny UNet's step is GFLOPs per image; both precisions ran


def test_a_new_model_denoises_the_latents_of_the_autoencoder_it_is_given(tmp_path):
    """--vae with 6 latent channels: the tiny UNet is built for 6 in and out, trains, and the export generates."""
    from m2m.autoencoder import ColourAutoencoderKL
    from m2m.presets import TINY

    vae = ColourAutoencoderKL(**{**TINY.vae, "latent_channels": 6, "sample_size": 32, "block_out_channels": (8, 8),
                                 "down_block_types": ("DownEncoderBlock2D",) * 2,
                                 "up_block_types": ("UpDecoderBlock2D",) * 2})  # fmt: skip
    vae.save_pretrained(tmp_path / "vae")  # 32x32 images, 16x16 latents: the tiny UNet's size
    out = tmp_path / "run"
    train(parse_args(["--variant", "self", "--vae", str(tmp_path / "vae"), "--out", str(out), "--steps", "2",
                      "--batch-sets", "1", "--min-k", "2", "--max-k", "2", "--workers", "0", "--val-every", "100",
                      "--checkpoint-every", "100", "--sample-every", "100", "--mixed-precision", "no"]))  # fmt: skip
    pipe = load_pipeline(out / "pipeline")
    assert pipe.unet.config.in_channels == pipe.unet.config.out_channels == 6
    assert pipe(num_images=1, num_inference_steps=2).images[0].size == (32, 32)
