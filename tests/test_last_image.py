"""The last context image as input channels (m2m/conditioning.py): what each image reads, in training and generation."""

import copy

import pytest
import torch

from m2m.conditioning import (
    RELATIVE_MAX,
    add_last_image_input,
    after_rows,
    change_scales,
    last_steps,
    previous_latents,
    reads_last_image,
    reads_last_step,
    relative_scale,
)
from m2m.images import to_tensor
from m2m.presets import build_pipeline
from m2m.sampling import SamplingParams
from tests.conftest import colour_images
from tests.test_attention import assert_training_equals_cached_inference, fixed_batch, make_model, predictions


@pytest.fixture(scope="module", params=["self", "dino"])
def last_pipe(request, micro):
    return build_pipeline(micro.replace(last_image_input=True), request.param, seed=0)


def test_each_image_reads_its_predecessor_or_zeros():
    x0 = torch.arange(2 * 3, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 2, 2, 2)  # image j of set b: 3b + j
    sees = torch.tensor([[True, True, True], [True, False, True]])
    last = after_rows(previous_latents(x0, sees), rows=8)[:, 0, 0, 0]  # 2 rows of a clean pass, then the noisy ones
    assert last.tolist() == [0, 0, 0, 0, 1, 0, 0, 4]  # first images and the dropped one read nothing


@pytest.fixture(scope="module", params=[("self", False), ("dino", False), ("self", True)])
def step_pipe(request, micro):
    """A change model that reads the last image and the last step (and one whose change scale is relative)."""
    variant, relative = request.param
    preset = micro.replace(last_image_input=True, last_image_change=True, last_step_input=True)
    preset = preset.replace(last_image_change_scale=2.0, last_image_change_relative=relative)
    return build_pipeline(preset, variant, seed=0)


def test_each_image_reads_its_last_step_or_zeros():
    x0 = torch.tensor([0.0, 1, 3, 7, 0, 2, 6, 6]).view(8, 1, 1, 1).expand(8, 2, 2, 2)  # 2 sets of 4 images
    sees = torch.tensor([[True, True, True, True], [True, True, True, False]])
    steps = last_steps(x0, sees, change_scales(x0, 4, 2.0))[:, 0, 0, 0]
    assert steps.tolist() == [0, 0, 2, 4, 0, 0, 4, 0]  # (image i-1 - image i-2) * 2; none before the third image


def test_a_relative_change_is_in_units_of_the_last_step():
    """With a relative scale, a set's changes from the third image on are scaled by 1 / its last step's rms (at
    most RELATIVE_MAX), so a set whose every step is c times another's denoises the same changes; the second image
    keeps the set scale and the first is an image."""
    g = torch.Generator().manual_seed(0)
    start, moves = torch.randn(1, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g) * 0.5
    targets = []
    for c in (0.8, 3.0):
        x0 = torch.cat([start, start + c * moves.cumsum(0)])  # (5, 4, 8, 8): one set, steps c * moves
        scales = change_scales(x0, 5, 2.0, relative=True)
        targets.append((x0[1:] - x0[:-1]) * scales[1:])  # image i's change times its scale
        assert scales[0].item() == 1.0 and scales[1].item() == 2.0
        assert torch.allclose(last_steps(x0, torch.ones(1, 5, dtype=torch.bool), scales)[2:].pow(2).mean((1, 2, 3)),
                              torch.ones(3))  # fmt: skip
    assert torch.allclose(targets[0][1:], targets[1][1:], atol=1e-5)
    still = torch.zeros(4, 4, 8, 8)  # no step at all: the largest scale, not a division by zero
    assert change_scales(still, 4, 2.0, relative=True)[2:].flatten().tolist() == [RELATIVE_MAX] * 2


def silent(pipe):
    """A copy whose UNet predicts 0 whatever it reads (its last convolution zeroed)."""
    pipe = copy.deepcopy(pipe)
    with torch.no_grad():
        pipe.unet.conv_out.weight.zero_()
        pipe.unet.conv_out.bias.zero_()
    return pipe


def test_a_change_model_learns_nothing_to_do_where_the_image_stays(last_pipe):
    """Denoising the change: an image equal to its predecessor is a zero target (v = 0 at zero noise), so a
    silent UNet's loss is 0 there; denoising the image, it is not."""
    latents, pixels, timesteps, _ = fixed_batch(last_pipe, 1, 3)
    latents[:, 1] = latents[:, 0]
    losses = {}
    for change in (False, True):
        pipe = silent(last_pipe)
        pipe.isa.register_to_config(last_image_change=change)
        model = make_model(pipe)
        losses[change] = model(latents, pixels, timesteps, torch.zeros(3, *latents.shape[2:]))[0]
    assert losses[True][1] == 0 and losses[False][1] > 1e-3
    assert losses[True][0] == losses[False][0]  # the first image has no predecessor: the same in both


@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_a_change_model_generates_the_last_image_plus_the_change(last_pipe, scale):
    """The same predictions (a silent UNet) from the same noise: the change model's latent is the input model's,
    divided by the change's scale, plus the last image's latent."""
    pipe = silent(last_pipe)
    last = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ctx = pipe._context_for([0], pipe.prepare(colour_images(1)), None, 1)
    params = SamplingParams(steps=3, guidance=2.0)
    plain = pipe.denoise(ctx, 7, params, last=last)
    pipe.isa.register_to_config(last_image_change=True, last_image_change_scale=scale)
    changed = pipe.denoise(ctx, 7, params, last=last)
    assert torch.allclose(changed, plain / scale + last, atol=1e-6)
    relative = pipe.denoise(ctx, 7, params, last=last, change_scale=2 * scale)  # a relative model's own scale
    assert torch.allclose(relative, plain / (2 * scale) + last, atol=1e-6)


def test_a_change_drawn_on_the_last_pixels_keeps_them_where_nothing_changes(last_pipe):
    """A zero change drawn on the last image's pixels gives the last image itself, not its round trip through the
    autoencoder; a model so configured generates its decoded image plus what the round trip lost, clamped."""
    pipe = copy.deepcopy(last_pipe)
    pipe.isa.register_to_config(last_image_change=True)
    context = colour_images(2)
    prepared = pipe.prepare(context)
    last, own = pipe.last_latent(prepared), to_tensor(prepared[-1:])  # (1, 4, h, w), (1, 3, H, W)
    round_trip = pipe.decode(last)
    assert (round_trip - own).abs().max() > 0.05  # a random autoencoder loses much
    assert torch.equal(pipe.on_last_pixels(round_trip, prepared[-1], last), own)
    kwargs = dict(num_images=1, num_inference_steps=2, guidance_scale=2.0, seed=0)
    decoded = to_tensor(pipe(context, **kwargs).images)
    pipe.isa.register_to_config(last_image_pixels=True)
    on_pixels = to_tensor(pipe(context, **kwargs).images)
    assert (on_pixels - (decoded + own - round_trip).clamp(-1, 1)).abs().max() <= 2 / 127.5 + 1e-6  # 8-bit pixels


@pytest.mark.parametrize("floor", [0.0, 0.2, 1.0])
def test_a_change_floor_keeps_the_last_pixels_wherever_the_change_is_under_it(last_pipe, floor):
    """With `last_image_change_floor`, a pixel keeps the last image's value where the change's largest channel is
    under the floor, and takes the change in full where it is not: floor 0 draws every change."""
    pipe = copy.deepcopy(last_pipe)
    pipe.isa.register_to_config(last_image_change=True, last_image_pixels=True, last_image_change_floor=floor)
    prepared = pipe.prepare(colour_images(1))
    last, own = pipe.last_latent(prepared), to_tensor(prepared[-1:])  # (1, 4, h, w), (1, 3, H, W)
    noise = 0.4 * torch.randn(own.shape, generator=torch.Generator().manual_seed(0))  # changes below and above 0.2
    out = pipe.on_last_pixels(pipe.decode(last) + noise, prepared[-1], last)
    kept = noise.abs().amax(1, keepdim=True) < floor  # (1, 1, H, W)
    assert torch.allclose(out, torch.where(kept, own, (own + noise).clamp(-1, 1)), atol=1e-5)
    assert kept.any() == (floor > 0) and (~kept).any()


def test_a_change_model_denoises_the_change_times_its_scale_and_a_first_image_as_it_is(last_pipe):
    """Without noise, v = -sigma * x0: a silent UNet's loss is sigma^2 * mean(x0^2) of what it denoises, so a change
    scaled by 3 costs 9 times as much, and a set's first image (no last one: the image itself) the same."""
    latents, pixels, timesteps, _ = fixed_batch(last_pipe, 1, 3)
    losses = {}
    for scale in (1.0, 3.0):
        pipe = silent(last_pipe)
        pipe.isa.register_to_config(last_image_change=True, last_image_change_scale=scale)
        model = make_model(pipe)
        losses[scale] = model(latents, pixels, timesteps, torch.zeros(3, *latents.shape[2:]))[0]
    assert torch.allclose(losses[3.0][1:], 9 * losses[1.0][1:], rtol=1e-4)
    assert torch.allclose(losses[3.0][0], losses[1.0][0])


def test_a_new_model_reads_twice_its_latent_channels(last_pipe):
    assert reads_last_image(last_pipe.unet)
    assert last_pipe.unet.config.in_channels == 2 * last_pipe.unet.config.out_channels


def test_training_forward_equals_cached_inference_with_the_last_image(last_pipe):
    assert_training_equals_cached_inference(last_pipe)


@pytest.mark.parametrize("change", [False, True])
def test_a_dropped_context_drops_the_last_image_unless_the_model_denoises_the_change(last_pipe, change):
    """Context dropout (guidance's unconditional branch) hides image i - 1 from image i's input as from ISA; a model
    that denoises the change from it reads it in both branches."""
    pipe = copy.deepcopy(last_pipe)
    pipe.isa.register_to_config(last_image_change=change)
    model = make_model(pipe)
    latents, pixels, timesteps, noise = fixed_batch(pipe, 1, 4)
    moved = latents.clone()
    moved[:, 1] += 1.0  # image 2's last image
    dropped = torch.tensor([[True, True, False, True]])  # image 2 sees no context
    a = predictions(model, latents, pixels, timesteps, noise, dropped)
    b = predictions(model, moved, pixels, timesteps, noise, dropped)
    assert torch.allclose(a[0, 2], b[0, 2], atol=1e-6) != change


def test_widening_a_trained_unet_keeps_what_it_generates(self_pipe, images):
    """Zero weights for the new channels: the widened model generates the same images; once they are trained
    (here: perturbed) the last image changes what comes out."""
    wide = copy.deepcopy(self_pipe)
    add_last_image_input(wide.unet)
    assert reads_last_image(wide.unet) and not reads_last_image(self_pipe.unet)
    context = images(2)
    kwargs = dict(num_images=2, num_inference_steps=2, seed=3)
    before = [torch.as_tensor(list(im.getdata())) for im in self_pipe(context, **kwargs).images]
    after = [torch.as_tensor(list(im.getdata())) for im in wide(context, **kwargs).images]
    assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True))
    with torch.no_grad():
        wide.unet.conv_in.weight[:, 4:].normal_(0, 0.5)
    moved = [torch.as_tensor(list(im.getdata())) for im in wide(context, **kwargs).images]
    assert not torch.equal(moved[0], before[0])


def test_a_step_model_reads_three_times_its_latent_channels_and_generates_as_it_trains(step_pipe):
    assert reads_last_step(step_pipe.unet) and reads_last_image(step_pipe.unet)
    assert step_pipe.unet.config.in_channels == 3 * step_pipe.unet.config.out_channels
    assert_training_equals_cached_inference(step_pipe)


def test_generation_scales_the_change_by_the_last_step_it_reads(step_pipe):
    """The last step read and the change's scale: the set's, or 1 / the last step's rms for a relative model; a
    set of one image has no step (the set's scale)."""
    prepared = step_pipe.prepare(colour_images(3))
    last, step, scale = step_pipe.last_inputs(prepared)
    raw = last - step_pipe.last_latent(prepared[:-1])  # (1, 4, h, w)
    expected = float(relative_scale(raw)) if step_pipe.relative_change else 2.0
    assert scale == pytest.approx(expected) and torch.allclose(step, raw * expected)
    assert step_pipe.last_inputs(prepared[:1])[1:] == (None, 2.0)


def test_a_dropped_context_drops_the_last_step_even_for_a_change_model(step_pipe):
    """Guidance's unconditional branch sees no last step: image 3 reads images 2 - 1, unless its context is dropped."""
    model = make_model(step_pipe)
    latents, pixels, timesteps, noise = fixed_batch(step_pipe, 1, 4)
    moved = latents.clone()
    moved[:, 1] += 1.0  # image 3's last step (and image 2's last image: not looked at)
    for dropped, same in ((torch.tensor([[True, True, True, False]]), True), (None, False)):
        a = predictions(model, latents, pixels, timesteps, noise, dropped)
        b = predictions(model, moved, pixels, timesteps, noise, dropped)
        assert torch.allclose(a[0, 3], b[0, 3], atol=1e-6) == same


def test_widening_to_the_last_step_keeps_what_it_generates_until_trained(last_pipe, images):
    """Zero weights for the step's channels: the same images; once they are trained (here: perturbed) the third
    image of the set on changes (the second has no step: the same)."""
    wide = copy.deepcopy(last_pipe)
    add_last_image_input(wide.unet, 2)
    assert reads_last_step(wide.unet) and not reads_last_step(last_pipe.unet)
    kwargs = dict(num_images=2, num_inference_steps=2, seed=3)
    before = [to_tensor([im]) for im in last_pipe(images(1), **kwargs).images]
    assert all(
        torch.equal(x, y)
        for x, y in zip(before, (to_tensor([im]) for im in wide(images(1), **kwargs).images), strict=True)
    )
    with torch.no_grad():
        wide.unet.conv_in.weight[:, 8:].normal_(0, 0.5)
    moved = [to_tensor([im]) for im in wide(images(1), **kwargs).images]
    assert torch.equal(moved[0], before[0]) and not torch.equal(moved[1], before[1])


def test_bad_last_image_flags_are_refused():
    from train.training.m2m import TrainConfig, check_recipe

    with pytest.raises(ValueError, match="last-image-input"):
        check_recipe(TrainConfig(init="x", lora_rank=4, last_image_input=True))
    with pytest.raises(ValueError, match="last-image-input"):
        check_recipe(TrainConfig(init="x", lora_rank=4, last_step_input=True))
    with pytest.raises(ValueError, match="must be positive"):
        check_recipe(TrainConfig(last_image_change=True, last_image_change_scale=0.0))
    with pytest.raises(ValueError, match="needs --last-image-change"):
        check_recipe(TrainConfig(last_image_input=True, last_image_pixels=True))
    with pytest.raises(ValueError, match="needs --last-image-change"):
        check_recipe(TrainConfig(last_image_input=True, last_image_change_relative=True))
    with pytest.raises(ValueError, match="needs --last-image-pixels"):
        check_recipe(TrainConfig(last_image_change=True, last_image_change_floor=0.1))
    for floor in (-0.1, 2.0):
        with pytest.raises(ValueError, match="0 to 2"):
            check_recipe(TrainConfig(last_image_change=True, last_image_pixels=True, last_image_change_floor=floor))


def test_a_floor_off_the_pixel_range_is_refused_by_the_model(micro):
    with pytest.raises(ValueError, match="0 to 2"):
        build_pipeline(micro.replace(last_image_input=True, last_image_change_floor=2.0), "self")
