"""M2MPipeline: cache = recompute, seeds, streaming, context sizes and windows, save/load, schedulers."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from m2m.loading import CheckpointError, load_pipeline
from m2m.pipeline import M2MPipeline
from m2m.sampling import SamplingParams, context_window, image_seed

FAST = dict(num_inference_steps=3, guidance_scale=3.0)


def max_diff(a, b) -> float:
    return max((x.pixels - y.pixels).abs().max().item() for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("max_context", [None, 2])
def test_cache_equals_recompute(pipe, max_context, images):
    context = images(3)
    cached = list(pipe.generate_iter(context, num_images=3, seed=5, max_context=max_context, **FAST))
    recomputed = list(
        pipe.generate_iter(context, num_images=3, seed=5, max_context=max_context, context_cache=False, **FAST)
    )
    assert max_diff(cached, recomputed) <= 1e-4


def test_context_changes_the_images(pipe, images):
    a = pipe(images(2), num_images=1, seed=1, **FAST).images[0]
    b = pipe(images(3)[:2], num_images=1, seed=1, **FAST).images[0]
    assert np.abs(np.asarray(a, float) - np.asarray(b, float)).max() > 0


def test_seed_determinism_and_regeneration(pipe, images):
    context = images(2)
    first = list(pipe.generate_iter(context, num_images=3, seed=7, **FAST))
    again = list(pipe.generate_iter(context, num_images=3, seed=7, **FAST))
    other = list(pipe.generate_iter(context, num_images=3, seed=8, **FAST))
    assert max_diff(first, again) == 0
    assert max_diff(first, other) > 1e-3
    assert [r.index for r in first] == [2, 3, 4]
    assert [r.seed for r in first] == [image_seed(7, i) for i in (2, 3, 4)]
    assert len({r.seed for r in first}) == 3
    # image 4 alone, from the given context plus images 2 and 3 as saved 8-bit PNGs
    alone = list(pipe.generate_iter(context + [r.image for r in first[:2]], num_images=1, seed=7, **FAST))
    assert alone[0].index == 4 and alone[0].seed == first[2].seed
    assert max_diff(alone, first[2:]) <= 1e-4


def test_images_stream_one_by_one(self_pipe, images):
    steps = []
    stream = self_pipe.generate_iter(images(1), num_images=3, on_step=lambda: steps.append(1), **FAST)
    first = next(stream)
    assert first.index == 1 and len(steps) == FAST["num_inference_steps"]  # nothing of image 2 computed yet
    rest = list(stream)
    assert len(rest) == 2 and len(steps) == 3 * FAST["num_inference_steps"]


@pytest.mark.parametrize("n", [0, 1, 24])
def test_any_number_of_context_images(self_pipe, n, images):
    out = self_pipe(images(n), num_images=2, num_inference_steps=2)
    assert len(out.images) == 2 and out.indices == [n, n + 1]
    assert all(img.size == (self_pipe.resolution,) * 2 and img.mode == "RGB" for img in out.images)


def test_context_window_keeps_first_and_recent():
    assert context_window(5, None) == [0, 1, 2, 3, 4]
    assert context_window(3, 4) == [0, 1, 2]
    assert context_window(10, 4) == [0, 1, 8, 9]
    assert context_window(10, 1) == [9]


def test_window_limits_what_is_seen(self_pipe, images):
    """With max_context=2, images in the middle of a long context do not matter."""
    context = images(5)
    changed = context[:2] + images(6)[2:3] + context[3:]
    kw = dict(num_images=1, seed=3, max_context=2, **FAST)
    a, b = self_pipe(context, **kw).images[0], self_pipe(changed, **kw).images[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "L", "I;16", "1"])
def test_any_mode_and_size(self_pipe, mode):
    img = Image.new("RGB", (7, 300), (10, 200, 30)).convert(mode)
    out = self_pipe([img, Image.new("RGB", (1, 1))], num_images=1, num_inference_steps=2)
    assert out.images[0].size == (self_pipe.resolution,) * 2


def test_save_load_round_trip(pipe, tmp_path, images):
    pipe.save_pretrained(tmp_path)
    files = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl", ".ckpt"))]
    assert "isa/diffusion_pytorch_model.safetensors" in files
    assert ("image_encoder/model.safetensors" in files) == (pipe.variant == "dino")
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["isa"] == ["m2m.attention", "ImageSetAttention"]
    loaded = load_pipeline(tmp_path)
    assert loaded.variant == pipe.variant
    kw = dict(num_images=2, seed=2, **FAST)
    before, after = pipe.generate_iter(images(2), **kw), loaded.generate_iter(images(2), **kw)
    assert max_diff(list(before), list(after)) <= 1e-4  # same weights; float kernels may differ in the last bits


def test_dpm_solver_and_unknown_scheduler(self_pipe, images):
    out = self_pipe(images(1), num_images=1, num_inference_steps=4, scheduler="dpm++")
    assert len(out.images) == 1
    with pytest.raises(ValueError, match="unknown scheduler"):
        self_pipe(images(1), num_images=1, scheduler="euler?")


def test_params_and_their_keywords_make_the_same_images(self_pipe, images):
    """`params=SamplingParams(...)` and the keyword shorthand are one call; giving both is an error."""
    params = SamplingParams(steps=3, guidance=2.0, seed=6, scheduler="dpm++", max_context=1)
    by_params = list(self_pipe.generate_iter(images(2), num_images=2, params=params))
    by_keywords = list(self_pipe.generate_iter(images(2), num_images=2, num_inference_steps=3, guidance_scale=2.0,
                                               seed=6, scheduler="dpm++", max_context=1))  # fmt: skip
    assert max_diff(by_params, by_keywords) == 0
    with pytest.raises(TypeError, match="not both"):
        list(self_pipe.generate_iter(images(1), params=params, seed=1))


def test_the_pipeline_samples_with_the_default_params(self_pipe, images):
    """No sampling keyword = SamplingParams(): its step count, and the same images as params=SamplingParams()."""
    steps = []
    default = list(self_pipe.generate_iter(images(1), num_images=1, on_step=lambda: steps.append(1)))
    assert len(steps) == SamplingParams().steps
    assert max_diff(default, list(self_pipe.generate_iter(images(1), num_images=1, params=SamplingParams()))) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_images=0), "num_images"),
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(seed=-1), "seed"),
        (dict(guidance_scale=-1.0), "guidance_scale"),
        (dict(max_context=0), "max_context"),
    ],
)
def test_bad_arguments_say_which(self_pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        list(self_pipe.generate_iter([], **kwargs))


def test_bad_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_pipeline(tmp_path / "missing")
    with pytest.raises(CheckpointError, match=r"no model_index\.json"):
        load_pipeline(tmp_path)
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_pipeline(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(CheckpointError, match="not an M2MPipeline"):
        load_pipeline(tmp_path)


def test_truncated_weights_are_a_checkpoint_error(self_pipe, tmp_path):
    self_pipe.save_pretrained(tmp_path)
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot load"):
        load_pipeline(tmp_path)


def test_dino_pipeline_needs_an_encoder(micro):
    from m2m.presets import build_pipeline

    pipe = build_pipeline(micro, "dino")
    with pytest.raises(ValueError, match="image_encoder"):
        M2MPipeline(pipe.unet, pipe.vae, pipe.scheduler, pipe.isa, None)
    assert isinstance(pipe.unet, torch.nn.Module)


@pytest.mark.parametrize("variant", ["self", "dino"])
def test_loading_without_a_dtype_gives_one_dtype(micro, variant, tmp_path, images):
    """A checkpoint saved in fp16 (as the shipped ones are) loads in fp32 throughout, and runs."""
    from m2m.presets import build_pipeline

    build_pipeline(micro, variant, seed=0).to(torch.float16).save_pretrained(tmp_path)
    for loaded in (M2MPipeline.from_pretrained(tmp_path), load_pipeline(tmp_path)):
        modules = [m for m in loaded.components.values() if isinstance(m, torch.nn.Module)]
        assert {p.dtype for m in modules for p in m.parameters()} == {torch.float32}
        assert len(loaded(images(1), num_images=1, num_inference_steps=2).images) == 1


def test_guidance_one_is_no_guidance(pipe, images):
    """Scale 1 skips the unconditional branch; the guided formula at scale 1 (+ a hair) gives the same images."""
    kw = dict(num_images=2, seed=4, num_inference_steps=3)
    plain = list(pipe.generate_iter(images(2), guidance_scale=1.0, **kw))
    guided = list(pipe.generate_iter(images(2), guidance_scale=1.0 + 1e-6, **kw))
    assert max_diff(plain, guided) <= 1e-4
    assert max_diff(plain, list(pipe.generate_iter(images(2), guidance_scale=3.0, **kw))) > 1e-3  # scale matters
