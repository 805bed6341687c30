"""ColourAutoencoderKL: colour survives the round trip from the first step, and the class survives saving."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from m2m.autoencoder import ColourAutoencoderKL, load_autoencoder, widen_latents
from m2m.images import to_tensor
from m2m.pipeline import M2MPipeline
from m2m.presets import TINY, build_autoencoder, build_pipeline
from train.evaluation.check_autoencoder import check, images_of
from train.evaluation.set_metrics import SetMetrics, as_jpeg

OPEN_VAE = Path("checkpoints/vae-tiny-open")

SMALL = dict(TINY.vae, block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
             up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32)  # fmt: skip


def round_trip(vae: AutoencoderKL, x: torch.Tensor) -> torch.Tensor:
    return vae.decode(vae.encode(x).latent_dist.mode()).sample


def test_untrained_round_trip_is_the_block_mean_image_in_colour():
    torch.manual_seed(0)
    vae = ColourAutoencoderKL(**SMALL)
    x = torch.rand(2, 3, 32, 32) * 2 - 1  # (N, 3, H, W)
    block_mean = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="bilinear")
    torch.testing.assert_close(round_trip(vae, x), block_mean, atol=1e-5, rtol=0)
    # a plain AutoencoderKL of the same config starts far from it
    assert (round_trip(AutoencoderKL(**SMALL), x) - block_mean).abs().mean() > 0.1


def test_colour_path_gets_gradients_and_deep_paths_can_start_learning():
    vae = ColourAutoencoderKL(**SMALL)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    F.mse_loss(round_trip(vae, x), torch.zeros_like(x)).backward()
    for conv in (vae.colour_in, vae.colour_out, vae.decoder.conv_out, vae.quant_conv):
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_widened_latents_keep_the_round_trip_and_learn(tmp_path):
    torch.manual_seed(0)
    vae = ColourAutoencoderKL(**SMALL)
    with torch.no_grad():  # a trained-looking start: every weight off its init
        for p in vae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    wide = widen_latents(vae, 6)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert wide.config.latent_channels == 6 and wide.encode(x).latent_dist.mean.shape[1] == 6
    torch.testing.assert_close(round_trip(wide, x), round_trip(vae, x), atol=1e-5, rtol=0)
    old, new = vae.encode(x).latent_dist, wide.encode(x).latent_dist
    torch.testing.assert_close(new.mean[:, :4], old.mean)
    torch.testing.assert_close(new.logvar[:, :4], old.logvar)
    assert new.mean[:, 4:].abs().mean() > 1e-3  # the new channels carry something from the first step
    F.mse_loss(round_trip(wide, x), torch.zeros_like(x)).backward()
    for reader in (wide.post_quant_conv, wide.colour_out):  # the weights that read the new channels learn
        assert reader.weight.grad[:, 4:].abs().sum() > 0
    wide.save_pretrained(tmp_path)
    assert load_autoencoder(tmp_path).config.latent_channels == 6
    with pytest.raises(ValueError, match="more than the 4 latent channels"):
        widen_latents(vae, 4)
    with pytest.raises(TypeError, match="ColourAutoencoderKL"):
        widen_latents(AutoencoderKL(**SMALL), 6)


def test_saved_folder_loads_as_the_class_it_was_saved_as(tmp_path):
    vae = ColourAutoencoderKL(**SMALL)
    with torch.no_grad():
        vae.colour_out.bias.fill_(0.25)
    vae.save_pretrained(tmp_path / "colour")
    AutoencoderKL(**SMALL).save_pretrained(tmp_path / "plain")
    loaded = load_autoencoder(tmp_path / "colour")
    assert type(loaded) is ColourAutoencoderKL and torch.equal(loaded.colour_out.bias, vae.colour_out.bias)
    assert type(load_autoencoder(tmp_path / "plain")) is AutoencoderKL


def test_tiny_pipeline_saves_and_loads_its_colour_autoencoder(tmp_path):
    assert type(build_autoencoder("tiny")) is ColourAutoencoderKL
    assert type(build_autoencoder("sd21-base")) is AutoencoderKL
    pipe = build_pipeline("tiny", "self")
    pipe.save_pretrained(tmp_path)
    loaded = M2MPipeline.from_pretrained(tmp_path)
    assert type(loaded.vae) is ColourAutoencoderKL
    x = torch.rand(1, 3, 128, 128) * 2 - 1
    torch.testing.assert_close(round_trip(loaded.vae, x), round_trip(pipe.vae, x))


@pytest.mark.skipif(not OPEN_VAE.exists(), reason="no shipped open-set autoencoder")
def test_shipped_open_set_autoencoder_keeps_colour_and_shape():
    sets = images_of("open:heldout", 16, 6)  # 16 held-out open sets: 4 untouched, 2 round-tripped
    got = check(load_autoencoder(OPEN_VAE).eval(), sets, 4, SetMetrics.load())
    # measured 0.906, 29.3 dB, 0.906; the MIS-synth bases' autoencoder, before it left checkpoints/: 0.062, 19.2, 0.656
    assert got["colour_retrieval_round_trip"] >= 0.75 and got["psnr"] >= 26
    assert got["shape_retrieval_truth"] >= 0.9 and got["shape_retrieval_round_trip"] >= 0.8


def test_jpeg_reference_is_a_small_change_that_still_changes_the_pixels():
    image = images_of("open:heldout", 1, 1)[0][0]
    x, y = (to_tensor([img]) for img in (image, as_jpeg(image, 95)))
    assert y.shape == x.shape and 0 < (x - y).abs().mean() < 0.02  # under 1 % of the range, on average


def test_a_source_without_sets_that_long_is_a_clear_error():
    with pytest.raises(ValueError, match="has no set of 9 images: lower --length"):
        images_of("folders:examples/zero-shot", 8, 9)


def test_per_channel_latent_stats_balance_every_channel_and_decode_back(tmp_path, micro):
    """Fitted on some images, the UNet's latents of those images have mean 0 and std 1 in every channel; the
    pipeline decodes them back to exactly what the unnormalised latents decode to; saved, the folder keeps them."""
    from m2m.autoencoder import fit_channel_stats, from_model_latents, to_model_latents
    from m2m.encoders import vae_latents

    pipe = build_pipeline(micro, "self", seed=0)
    with torch.no_grad():  # every latent channel varies (an untrained colour autoencoder leaves its 4th at 0)
        pipe.vae.quant_conv.weight.normal_(0, 0.3)
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(6, 3, 64, 64, generator=g) * 2 - 1
    with torch.no_grad():
        before = pipe.decode(vae_latents(pipe.vae, pixels))  # the global scaling factor
        fit_channel_stats(pipe.vae, pixels)
        latents = vae_latents(pipe.vae, pixels)  # (N, 4, h, w)
        after = pipe.decode(latents)
        mode = pipe.vae.encode(pixels).latent_dist.mode()
    assert torch.allclose(latents.mean((0, 2, 3)), torch.zeros(4), atol=1e-4)
    assert torch.allclose(latents.std((0, 2, 3)), torch.ones(4), atol=1e-4)
    assert torch.allclose(after, before, atol=1e-4)
    assert torch.allclose(from_model_latents(pipe.vae, to_model_latents(pipe.vae, mode)), mode, atol=1e-5)
    pipe.vae.save_pretrained(tmp_path / "vae")
    loaded = load_autoencoder(str(tmp_path / "vae"))
    assert loaded.config.latents_std == pytest.approx(pipe.vae.config.latents_std)


def test_the_latent_stats_command_writes_a_balanced_autoencoder(tmp_path, micro):
    from train.training import latent_stats

    build_autoencoder(micro).save_pretrained(tmp_path / "vae")
    stats = latent_stats.main(["--vae", str(tmp_path / "vae"), "--data", "procedure:train", "--sets", "2",
                               "--out", str(tmp_path / "out"), "--changes"])  # fmt: skip
    saved = load_autoencoder(str(tmp_path / "out"))
    assert saved.config.scaling_factor == 1.0 and saved.config.latents_mean == pytest.approx(stats["latents_mean"])
    assert len(stats["latents_std"]) == saved.config.latent_channels and min(stats["latents_std"]) > 0  # none dead
    assert stats["change_rms"] > 0 and stats["last_image_change_scale"] == pytest.approx(1 / stats["change_rms"])


def test_the_change_rms_is_that_of_consecutive_images(micro):
    """A still set changes by 0; going a -> b -> a changes as much per step as a -> b."""
    from train.training.latent_stats import change_rms

    vae = build_autoencoder(micro).eval()
    a, b = torch.full((1, 3, 32, 32), -0.5), torch.full((1, 3, 32, 32), 0.5)
    assert change_rms(vae, [torch.cat([a, a, a])]) == pytest.approx(0.0, abs=1e-6)
    there = change_rms(vae, [torch.cat([a, b])])
    assert there > 0 and change_rms(vae, [torch.cat([a, b, a])]) == pytest.approx(there, rel=1e-5)
