"""Image-Set Attention: shapes, causality across images, the null context, training = inference."""

import pytest
import torch

from m2m.attention import VARIANTS, NullContext, SetContext, cross_attentions, pool_tokens
from m2m.conditioning import unet_input
from m2m.encoders import ENCODERS, ContextCache, context_encoder, dino_tokens, vae_latents
from m2m.images import to_tensor
from m2m.model import M2MModel


def make_model(pipe) -> M2MModel:
    return M2MModel(pipe.unet, pipe.isa, pipe.scheduler, pipe.image_encoder, context_dropout=0.0)


def fixed_batch(pipe, b: int, k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    size = pipe.unet.config.sample_size
    latents = torch.randn(b, k, 4, size, size, generator=g)
    pixels = torch.rand(b, k, 3, pipe.resolution, pipe.resolution, generator=g) * 2 - 1
    timesteps = torch.randint(0, 1000, (b * k,), generator=g)
    noise = torch.randn(b * k, 4, size, size, generator=g)
    return latents, pixels, timesteps, noise


@torch.no_grad()
def predictions(model, latents, pixels, timesteps, noise, sees=None):
    b, k = latents.shape[:2]
    sees = torch.ones(b, k, dtype=torch.bool) if sees is None else sees
    x0 = latents.flatten(0, 1)
    xt = model.scheduler.add_noise(x0, noise, timesteps)
    return model.predict(x0, xt, timesteps, sees, pixels).view(b, k, *x0.shape[1:])


@pytest.mark.parametrize("k", [1, 3, 5])
def test_loss_is_per_image(pipe, k):
    model = make_model(pipe)
    latents, pixels, timesteps, noise = fixed_batch(pipe, 2, k)
    loss = model(latents, pixels, timesteps, noise)
    assert loss.shape == (2, k)
    assert torch.isfinite(loss).all()


def test_causal_across_images(pipe):
    """Changing image j changes no prediction for images 1..j, and changes those after it."""
    model = make_model(pipe)
    latents, pixels, timesteps, noise = fixed_batch(pipe, 1, 4)
    base = predictions(model, latents, pixels, timesteps, noise)
    j = 1
    latents2, pixels2 = latents.clone(), pixels.clone()
    latents2[:, j] += 1.0
    pixels2[:, j] = -pixels2[:, j]
    changed = predictions(model, latents2, pixels2, timesteps, noise)
    diff = (changed - base).abs().amax(dim=(0, 2, 3, 4))  # (K,)
    assert diff[:j].max() < 1e-5  # images before j do not see it
    assert diff[j + 1 :].min() > 1e-4  # images after j do


def test_first_image_and_dropout_see_the_null_context(pipe):
    """Image 1 and context-dropped images equal a plain UNet call with the null context."""
    model = make_model(pipe)
    latents, pixels, timesteps, noise = fixed_batch(pipe, 1, 3)
    sees = torch.tensor([[True, False, True]])
    pred = predictions(model, latents, pixels, timesteps, noise, sees)
    xt = model.scheduler.add_noise(latents.flatten(0, 1), noise, timesteps)
    with torch.no_grad():
        alone = pipe.unet(xt, timesteps, None, cross_attention_kwargs={"isa": NullContext()}).sample
    assert torch.allclose(pred[0, 0], alone[0], atol=1e-5)
    assert torch.allclose(pred[0, 1], alone[1], atol=1e-5)
    assert not torch.allclose(pred[0, 2], alone[2], atol=1e-4)


@torch.no_grad()
def encode(pipe, latents: torch.Tensor, pixels: torch.Tensor) -> ContextCache:
    """Clean images (N, 4, h, w) latents / (N, 3, H, W) pixels -> their K/V in a cache, as generation makes it."""
    encoder = pipe.context_encoder
    return encoder.cache_inputs(pipe, latents if encoder.reads == "latents" else pixels)


def assert_training_equals_cached_inference(pipe) -> None:
    """Teacher forcing predicts image i exactly as generation does from images < i in the cache (and, for a UNet that
    reads it, image i - 1 and the last step as input channels: m2m/conditioning.py)."""
    model = make_model(pipe)
    latents, pixels, timesteps, noise = fixed_batch(pipe, 1, 4)
    pred = predictions(model, latents, pixels, timesteps, noise)
    cache = encode(pipe, latents[0], pixels[0])
    with torch.no_grad():
        xt = model.scheduler.add_noise(latents.flatten(0, 1), noise, timesteps)
        for i in range(1, 4):
            step, scale = pipe.step_input(latents[0, i - 1 : i], latents[0, i - 2 : i - 1] if i > 1 else None)
            if i > 1:  # the change's scale that generation divides by is the one training multiplied by
                assert scale == pytest.approx(model.change_scales(latents.flatten(0, 1), 4)[i].item(), rel=1e-5)
            x = unet_input(pipe.unet, xt[i : i + 1], latents[0, i - 1 : i], step)  # as it is, for the paper's UNet
            ctx = cache.context(list(range(i)))
            out = pipe.unet(x, timesteps[i : i + 1], None, cross_attention_kwargs={"isa": ctx}).sample
            assert torch.allclose(out[0], pred[0, i], atol=1e-5), i


def test_training_forward_equals_cached_inference(pipe):
    assert_training_equals_cached_inference(pipe)


def test_each_encoder_encodes_images_for_inference_as_for_training(pipe, images):
    """From the same images, what the encoder reads and caches at inference predicts each image exactly as
    teacher forcing does from the training batch (the pixels, and the latents training noises)."""
    model, encoder = make_model(pipe), pipe.context_encoder
    prepared = pipe.prepare(images(3))
    pixels = to_tensor(prepared)  # (K, 3, H, W): a set as the training loader gives it
    with torch.no_grad():
        latents = vae_latents(pipe.vae, pixels)  # (K, 4, h, w)
        read = encoder.inputs(pipe, prepared)
    assert torch.allclose(read, latents if encoder.reads == "latents" else pixels, atol=1e-5)
    cache = encoder.cache(pipe, prepared)
    g = torch.Generator().manual_seed(1)
    timesteps, noise = torch.randint(0, 1000, (3,), generator=g), torch.randn(latents.shape, generator=g)
    pred = predictions(model, latents[None], pixels[None], timesteps, noise)
    xt = model.scheduler.add_noise(latents, noise, timesteps)
    with torch.no_grad():
        for i in (1, 2):
            ctx = cache.context(list(range(i)))
            out = pipe.unet(xt[i : i + 1], timesteps[i : i + 1], None, cross_attention_kwargs={"isa": ctx}).sample
            assert torch.allclose(out[0], pred[0, i], atol=1e-4), i


def test_every_variant_has_one_encoder_and_dino_needs_its_image_encoder(pipe):
    assert tuple(ENCODERS) == VARIANTS
    assert type(context_encoder(pipe.isa, pipe.image_encoder)) is ENCODERS[pipe.variant]
    if ENCODERS[pipe.variant].needs_image_encoder:
        with pytest.raises(ValueError, match="image_encoder"):
            context_encoder(pipe.isa, None)


def test_the_weights_an_encoder_leaves_unused_get_no_gradient(pipe):
    """Training freezes `unused_parameters`: the forward never reaches them (M2M-Self: the text K/V)."""
    model = make_model(pipe)
    unused = model.encoder.unused_parameters(model)
    assert bool(unused) == (pipe.variant == "self")
    latents, pixels, timesteps, noise = fixed_batch(pipe, 1, 3)
    model(latents, pixels, timesteps, noise).mean().backward()
    assert all(p.grad is None for p in unused)
    model.zero_grad(set_to_none=True)


@torch.no_grad()
def test_unconditional_rows_attend_to_the_null_context_only(pipe):
    """A guidance batch [cond; uncond] (n_cond=1): cond = a call with the context, uncond = one with null alone."""
    latents, pixels, timesteps, noise = fixed_batch(pipe, 1, 3)
    cache = encode(pipe, latents[0, :2], pixels[0, :2])
    x, t = noise[:1], timesteps[:1]  # (1, 4, h, w), (1,)

    def unet(x, t, ctx):
        return pipe.unet(x, t, None, cross_attention_kwargs={"isa": ctx}).sample

    guided = unet(torch.cat([x, x]), t.repeat(2), cache.context([0, 1], n_cond=1))  # (2, 4, h, w)
    cond, null = unet(x, t, cache.context([0, 1])), unet(x, t, NullContext())
    assert torch.allclose(guided[:1], cond, atol=1e-5)
    assert torch.allclose(guided[1:], null, atol=1e-5)
    assert not torch.allclose(cond, null, atol=1e-4)  # the context matters, so the test can tell them apart


def test_gradients_reach_isa_and_unet_not_dino(pipe):
    model = make_model(pipe)
    latents, pixels, timesteps, noise = fixed_batch(pipe, 2, 3)
    model(latents, pixels, timesteps, noise).mean().backward()
    assert all(p.grad is not None for p in pipe.isa.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in pipe.unet.parameters())
    if pipe.image_encoder is not None:
        assert all(p.grad is None for p in pipe.image_encoder.parameters())
    model.zero_grad(set_to_none=True)


def test_isa_takes_every_cross_attention(pipe):
    names = [n for n, _ in cross_attentions(pipe.unet)]
    assert len(names) == len(pipe.isa.layers) > 0
    procs = pipe.unet.attn_processors
    assert all(type(procs[f"{n}.processor"]).__name__ == "ImageSetAttnProcessor" for n in names)


def test_pooling_keeps_at_most_the_budget():
    x = torch.randn(2, 64, 8)  # an 8x8 map
    assert pool_tokens(x, 16).shape == (2, 16, 8)
    assert pool_tokens(x, 64) is x
    assert torch.allclose(pool_tokens(x, 1)[:, 0], x.mean(1), atol=1e-6)


def test_context_tokens_change_the_pooling_and_no_weight(micro, tmp_path):
    """M2M-Self read unpooled: the 8x8 level's context is its whole map, the weights are the same, the choice saved."""
    from m2m.loading import load_pipeline
    from m2m.presets import build_pipeline

    pipe = build_pipeline(micro, "self")
    before = {n: p.clone() for n, p in pipe.isa.state_dict().items()}
    latents = torch.randn(2, 4, 8, 8)  # two context images, the micro latents
    pooled = context_encoder(pipe.isa).encode(pipe, latents)
    pipe.isa.set_context_tokens(64)
    unpooled = context_encoder(pipe.isa).encode(pipe, latents)
    assert max(k.shape[1] for k, _ in pooled.values()) == 16  # micro pools its 8x8 level to 4x4 (mid block: 4x4)
    assert max(k.shape[1] for k, _ in unpooled.values()) == 64
    assert all(torch.equal(before[n], p) for n, p in pipe.isa.state_dict().items())
    pipe.save_pretrained(tmp_path)
    assert load_pipeline(tmp_path).isa.config.max_context_tokens == 64
    with pytest.raises(ValueError, match="only M2M-Self"):
        build_pipeline(micro, "dino").isa.set_context_tokens(64)


def test_dino_tokens_shape(micro):
    from m2m.presets import build_pipeline

    pipe = build_pipeline(micro, "dino")
    pixels = torch.rand(3, 3, pipe.resolution, pipe.resolution) * 2 - 1
    tokens = dino_tokens(pipe.image_encoder, pipe.isa, pixels)
    patches = (micro.image_encoder_size // micro.image_encoder["patch_size"]) ** 2
    assert tokens.shape == (3, 1 + patches, pipe.unet.config.cross_attention_dim)


def test_reference_attention_adds_no_weight_and_reads_the_window(micro):
    """The paper's model is one setting away: the same weights; image i reads clean images i-1 .. i-W only."""
    from m2m.presets import build_pipeline

    plain, ref = build_pipeline(micro, "self"), build_pipeline(micro.replace(reference_images=2), "self")
    weights = zip(plain.unet.state_dict().values(), ref.unet.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in weights)
    assert plain.isa.state_dict().keys() == ref.isa.state_dict().keys()
    sees = torch.tensor([[True, True, False, True, True]])  # image 2 drops its context
    mask = SetContext(sees, reference_images=2).reference_mask(t=1)[:, 0]  # (K, 1 + W): itself, image i-1, i-2
    expected = [[1, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1]]
    assert mask.int().tolist() == expected
    latents, pixels, timesteps, noise = fixed_batch(plain, 1, 4)
    a, b = (predictions(make_model(p), latents, pixels, timesteps, noise) for p in (plain, ref))
    assert torch.allclose(a[:, 0], b[:, 0], atol=1e-5)  # the first image has nothing to refer to
    assert (a[:, 1:] - b[:, 1:]).abs().amax() > 1e-4
    with pytest.raises(ValueError, match="M2M-DINO has none"):
        build_pipeline(micro.replace(reference_images=2), "dino")


def test_older_images_cost_fewer_keys_and_reference_reads_only_its_window(micro):
    """With recent_context_images=1 and 4 older tokens, image 7 attends to 16 + 5 x 4 ISA keys at the 8x8 level
    (not 6 x 16), and reference attention to the last 2 images' 64 tokens each, however long the set."""
    from conftest import FLAT

    from m2m.presets import build_pipeline

    pipe = build_pipeline(micro.replace(reference_images=2, **FLAT), "self")
    cache = ContextCache.for_isa(pipe.isa)
    context_encoder(pipe.isa).cache_inputs(pipe, torch.randn(6, 4, 8, 8), cache)
    kv = cache.context(list(range(6))).kv
    isa_fine = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"  # the 8x8 level: pooled to 16 tokens
    assert kv[isa_fine][0].shape[1] == 16 + 5 * 4
    assert kv[isa_fine.replace("attn2", "attn1")][0].shape[1] == 2 * 64
    assert cache.context([0]).kv[isa_fine][0].shape[1] == 16
