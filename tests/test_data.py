"""MIS-synth and the set loader: determinism, the held-out split, shard round trips, batch shapes."""

import functools
import http.server
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from m2m.images import load_image, to_model_size, to_tensor
from train.data import synth
from train.data.loader import SetCollate, make_loader
from train.data.shards import read_shard, read_shards, shard_urls, write_shard, write_shards

ROOT = Path(__file__).resolve().parents[1]


def arrays(images):
    return [np.asarray(img) for img in images]


def test_generator_is_deterministic_and_varied():
    a, b = synth.set_record("train", 3, 4), synth.set_record("train", 3, 4)
    assert a["meta"] == b["meta"]
    assert all(np.array_equal(x, y) for x, y in zip(arrays(a["images"]), arrays(b["images"]), strict=True))
    imgs = arrays(a["images"])
    assert all(img.shape == (synth.SIZE, synth.SIZE, 3) for img in imgs)
    assert not np.array_equal(imgs[0], imgs[1])  # layout, pose, count and detail vary within a set


def test_heldout_combinations_are_unseen_but_their_parts_are_seen():
    train, held = set(synth.captions("train")), set(synth.captions("heldout"))
    assert len(synth.CLASSES) >= 12 and len(synth.STYLES) >= 12
    assert held and not train & held
    assert {c.content for c in train} == set(range(len(synth.CLASSES)))
    assert {c.style for c in train} == set(range(len(synth.STYLES)))
    records = [synth.set_record("heldout", i, 1) for i in range(5)]
    assert all(synth.Caption(**r["meta"]["labels"]) in held for r in records)


def test_shard_round_trip(tmp_path):
    records = [synth.set_record("train", i, 3) for i in range(4)]
    path = tmp_path / "s-00000.tar"
    assert write_shard(path, records) == 4
    back = list(read_shard(path))
    assert [r["key"] for r in back] == [r["key"] for r in records]
    for r, q in zip(records, back, strict=True):
        assert r["meta"] == q["meta"]
        assert all(np.array_equal(x, y) for x, y in zip(arrays(r["images"]), arrays(q["images"]), strict=True))


def plain_tarfile_shard(path, records):
    """A shard as the plain `tarfile` writer before webdataset wrote it: bare members, no timestamps."""
    with tarfile.open(path, "w") as tar:
        for record in records:
            members = []
            for i, img in enumerate(record["images"]):
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                members.append((f"{record['key']}.{i:02d}.png", buf.getvalue()))
            members.append((f"{record['key']}.json", json.dumps(record["meta"], sort_keys=True).encode()))
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), 0
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards_keep_the_old_bytes_and_old_shards_read(tmp_path):
    records = [synth.set_record("train", i, 3) for i in range(3)]
    write_shard(tmp_path / "new.tar", records)
    plain_tarfile_shard(tmp_path / "old.tar", records)
    assert (tmp_path / "new.tar").read_bytes() == (tmp_path / "old.tar").read_bytes()
    back = list(read_shards([tmp_path / "old.tar", tmp_path / "new.tar"]))
    assert [r["key"] for r in back] == [r["key"] for r in records] * 2
    for r, q in zip(records * 2, back, strict=True):
        assert r["meta"] == q["meta"]
        assert all(np.array_equal(x, y) for x, y in zip(arrays(r["images"]), arrays(q["images"]), strict=True))


def test_shard_sources_are_folders_globs_braces_and_urls(tmp_path):
    for i in range(3):
        write_shard(tmp_path / f"s-{i:05d}.tar", [grey_set(f"set-{i}", 2)])
    names = [str(tmp_path / f"s-{i:05d}.tar") for i in range(3)]
    assert shard_urls(str(tmp_path)) == shard_urls(f"{tmp_path}/s-*.tar") == names
    assert shard_urls(f"{tmp_path}/s-{{00000..00001}}.tar,{tmp_path}/s-00002.tar") == names
    assert shard_urls("pipe:cat x-{0,1}.tar,https://host/y.tar") == ["pipe:cat x-0.tar", "pipe:cat x-1.tar",
                                                                     "https://host/y.tar"]  # fmt: skip
    with pytest.raises(FileNotFoundError, match="no shards match"):
        shard_urls(f"{tmp_path}/t-*.tar")


def test_pipe_and_http_sources_read_the_same_sets(tmp_path):
    write_shards(tmp_path, "train", 4, 2, 1, lambda i: synth.set_record("train", i, 2))
    want = [(r["key"], arrays(r["images"])) for r in read_shards(shard_urls(str(tmp_path)))]

    def got(spec: str) -> list:
        return [(r["key"], arrays(r["images"])) for r in read_shards(shard_urls(spec))]

    def same(a: list, b: list) -> bool:
        return [k for k, _ in a] == [k for k, _ in b] and all(
            np.array_equal(x, y) for (_, xs), (_, ys) in zip(a, b, strict=True) for x, y in zip(xs, ys, strict=True)
        )

    assert same(got(f"pipe:cat {tmp_path}/train-{{00000..00001}}.tar"), want)
    if shutil.which("curl") is None:
        pytest.skip("http:// shards are read through curl")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/train-{{00000..00001}}.tar"
        assert same(got(url), want)
        batch = next(iter(make_loader(url, 4, 2, 2, 8, workers=0, shuffle=False)))
        assert batch["keys"] == [k for k, _ in want]
    finally:
        server.shutdown()


def epoch_keys(source: str, epoch: int, world: int, workers: int, buffer: int = 4) -> list[list[str]]:
    """The keys each rank's loader gives in one epoch, in order."""
    ranks = []
    for rank in range(world):
        loader = make_loader(source, 2, 1, 1, 8, workers, rank=rank, world=world, shuffle_buffer=buffer)
        loader.dataset.set_epoch(epoch)
        ranks.append([k for batch in loader for k in batch["keys"]])
    return ranks


def test_two_ranks_by_two_workers_see_every_set_once_per_epoch_in_a_new_order(tmp_path):
    for i in range(8):
        write_shard(tmp_path / f"s-{i:05d}.tar", [grey_set(f"set-{i}-{j}", 2) for j in range(3)])
    everything = sorted(f"set-{i}-{j}" for i in range(8) for j in range(3))
    epochs = [epoch_keys(str(tmp_path), epoch, world=2, workers=2) for epoch in (0, 1)]
    for ranks in epochs:
        assert sorted(ranks[0] + ranks[1]) == everything  # each set once, on one rank
    assert epochs[0] != epochs[1] and epochs[0] == epoch_keys(str(tmp_path), 0, world=2, workers=2)
    unbuffered = epoch_keys(str(tmp_path), 0, world=2, workers=2, buffer=1)  # the same shards, each read in order
    assert unbuffered != epochs[0] and [sorted(k) for k in unbuffered] == [sorted(k) for k in epochs[0]]


@pytest.mark.parametrize("kind", ["shards", "synth"])
def test_loader_resumed_at_batch_k_gives_the_rest_of_the_epoch(tmp_path, kind):
    """Before: a resumed loader of 2 workers began with worker 0's next batch, wherever the epoch stood."""
    for i in range(4):
        write_shard(tmp_path / f"s-{i:05d}.tar", [grey_set(f"set-{i}-{j}", 4) for j in range(3)])
    source = str(tmp_path) if kind == "shards" else "synth:train"

    def run(resume: int) -> list:
        loader = make_loader(source, 2, 2, 3, 8, 2, n_sets=12, rank=1, world=2, seed=5, shuffle_buffer=4)
        loader.dataset.set_epoch(3)
        loader.dataset.resume_at(resume, 2)
        return list(loader)

    straight = run(0)
    assert len(straight) == 4  # rank 1 of 2: two shards, one per worker, of three sets: batches of 2 and 1 each
    for k in (1, 2, 3):
        resumed = run(k)
        assert [b["keys"] for b in resumed] == [b["keys"] for b in straight[k:]]
        assert all(torch.equal(a["pixels"], b["pixels"]) for a, b in zip(resumed, straight[k:], strict=True))


def test_shard_reading_bench_times_both_readers():
    bench = [sys.executable, "bench/shard_reading.py", "--sets", "4", "--k", "2", "--per-shard", "2", "--repeats", "1"]
    out = subprocess.run(bench, cwd=ROOT, check=True, capture_output=True, text=True).stdout.splitlines()
    rates = [float(x) for line in out[1:] for x in re.findall(r"(\d+) images/s", line)]
    assert len(rates) == 4 and min(rates) > 0  # decoded and bytes only, tarfile and webdataset


def test_write_shards_resumes(tmp_path):
    def make(i):
        return synth.set_record("train", i, 2)

    paths = write_shards(tmp_path, "train", 5, 2, 1, make)
    assert len(paths) == 3 and all(p.exists() for p in paths)
    first = paths[0].stat().st_mtime_ns
    paths[1].unlink()
    write_shards(tmp_path, "train", 5, 2, 1, make)
    assert paths[1].exists() and paths[0].stat().st_mtime_ns == first  # done shards are skipped
    assert sum(1 for p in paths for _ in read_shard(p)) == 5


@pytest.mark.parametrize("source", ["synth", "shards"])
def test_loader_batches(tmp_path, source):
    spec = "synth:train"
    if source == "shards":
        write_shards(tmp_path, "train", 6, 3, 1, lambda i: synth.set_record("train", i, 5))
        spec = str(tmp_path)
    loader = make_loader(spec, batch_size=3, min_k=2, max_k=4, resolution=64, workers=2, n_sets=6)
    batches = list(loader)
    assert sum(b["pixels"].shape[0] for b in batches) == 6
    for b in batches:
        bsz, k = b["pixels"].shape[:2]
        assert 2 <= k <= 4 and b["pixels"].shape[2:] == (3, 64, 64)
        assert b["pixels"].min() >= -1 and b["pixels"].max() <= 1
        assert ((b["content"] >= 0) & (b["content"] < len(synth.CLASSES))).all()
        assert len(b["keys"]) == bsz
    assert len({k for b in batches for k in b["keys"]}) == 6  # workers split the sets, none twice


def test_collate_rejects_short_sets():
    import torch

    with pytest.raises(ValueError, match="min_k"):
        SetCollate(3, 4)([{"pixels": torch.zeros(2, 3, 8, 8), "content": 0, "style": 0, "key": "a"}])


def tiny_text_to_image(path, tokenizer):
    """A Stable Diffusion pipeline of tiny random components: no download."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab = tokenizer.get_vocab()
    text = CLIPTextModel(
        CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, max_position_embeddings=16, eos_token_id=1, bos_token_id=0)
    )  # fmt: skip
    unet = UNet2DConditionModel(
        sample_size=4, block_out_channels=(16, 32), layers_per_block=1, cross_attention_dim=16,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=8, attention_head_dim=2,
    )  # fmt: skip
    blocks = dict(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    vae = AutoencoderKL(block_out_channels=(8, 8), latent_channels=4, norm_num_groups=8, **blocks)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=DDIMScheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(path / "sd")
    return path / "sd"


def test_make_mis_renders_sets_and_resumes(tmp_path, clip_tokenizer):
    from train.data import mis

    model = tiny_text_to_image(tmp_path, clip_tokenizer)
    captions = tmp_path / "cc.tsv"
    captions.write_text("http://a\ta red fox.\nhttp://b\t\nhttp://c\tblue bird, flying\nhttp://d\tsea\n")
    out = tmp_path / "mis"
    args = ["--captions", str(captions), "--out", str(out), "--model", str(model), "--images-per-set", "3",
            "--steps", "2", "--size", "8", "--sets-per-shard", "2"]  # fmt: skip
    assert mis.main(args) == 0
    shards = sorted(out.glob("*.tar"))
    records = [r for s in shards for r in read_shard(s)]
    assert [r["meta"]["caption"] for r in records] == ["a red fox.", "blue bird, flying", "sea"]
    assert all(len(r["images"]) == 3 and r["images"][0].size == (8, 8) for r in records)
    assert records[0]["meta"]["seeds"] == mis.image_seeds(0, 0, 3)
    assert not np.array_equal(*arrays(records[0]["images"][:2]))  # only the noise differs, and it shows
    stamp = shards[0].stat().st_mtime_ns
    assert mis.main(args) == 0 and shards[0].stat().st_mtime_ns == stamp


def test_train_autoencoder_runs_and_saves_a_loadable_vae(tmp_path):
    from diffusers import AutoencoderKL

    from train.training import autoencoder

    out = tmp_path / "vae"
    metrics = autoencoder.main(
        ["--out", str(out), "--steps", "2", "--warm-steps", "1", "--batch-sets", "1", "--eval-sets", "2"]
    )
    assert np.isfinite(metrics["psnr"]) and metrics["latent_std"] > 0
    vae = AutoencoderKL.from_pretrained(out)
    assert vae.config.scaling_factor == pytest.approx(1 / metrics["latent_std"])
    assert not (tmp_path / "vae.tmp").exists()

    tuned = tmp_path / "decoder"  # the decoder only, on two sources: the latent space must not move
    metrics = autoencoder.main(["--out", str(tuned), "--init", str(out), "--decoder-only", "--steps", "2",
                                      "--warm-steps", "0", "--batch-sets", "1", "--eval-sets", "1", "--lr", "1e-2",
                                      "--data", "synth:train,procedure:train"])  # fmt: skip
    assert set(metrics["per_source"]) == {"synth:train", "procedure:train"}
    after = AutoencoderKL.from_pretrained(tuned)
    assert after.config.scaling_factor == vae.config.scaling_factor
    before_sd, after_sd = vae.state_dict(), after.state_dict()
    assert all(torch.equal(before_sd[n], after_sd[n]) for n in before_sd if n.startswith(("encoder.", "quant_conv.")))
    assert not all(torch.equal(before_sd[n], after_sd[n]) for n in before_sd if n.startswith("decoder."))

    wide = tmp_path / "wide"  # the same autoencoder, widened to 8 latent channels, trained on
    metrics = autoencoder.main(["--out", str(wide), "--init", str(out), "--latent-channels", "8", "--steps", "1",
                                "--warm-steps", "1", "--batch-sets", "1", "--eval-sets", "1"])  # fmt: skip
    assert np.isfinite(metrics["psnr"]) and AutoencoderKL.load_config(wide)["latent_channels"] == 8
    with pytest.raises(ValueError, match="--decoder-only keeps"):
        autoencoder.main(["--out", str(wide), "--init", str(out), "--latent-channels", "8", "--decoder-only"])


def test_ordered_sources_give_windows_in_order_and_real_folders_load(tmp_path):
    from train.data import procedures

    for i in range(3):  # a real-data layout: one folder per procedure, one image per step
        folder = tmp_path / f"how-to-{i}"
        folder.mkdir()
        for j, img in enumerate(procedures.render("train", i)[1]):
            img.save(folder / f"{j:02d}.png")
    batch = next(iter(make_loader(f"folders:{tmp_path}", 3, 3, 3, 64, 0, shuffle=False)))
    assert batch["pixels"].shape == (3, 3, 3, 64, 64)
    for b, key in enumerate(batch["keys"]):  # consecutive steps, in order
        steps = sorted((tmp_path / key).glob("*.png"))
        start = int(batch["start"][b])
        want = to_tensor([to_model_size(load_image(p), 64) for p in steps[start : start + 3]])
        assert torch.allclose(batch["pixels"][b], want)
    nvs_batch = next(iter(make_loader("nvs:train", 2, 4, 4, 32, 0, n_sets=2)))
    assert nvs_batch["pixels"].shape == (2, 4, 3, 32, 32) and (nvs_batch["start"] <= 4).all()


def test_ordered_sets_stay_ordered_when_read_from_shards(tmp_path):
    from train.data import nvs
    from train.data.shards import write_shards

    write_shards(tmp_path, "train", 2, 2, 0, lambda i: nvs.set_record("train", i))
    batch = next(iter(make_loader(str(tmp_path), 2, 3, 3, 32, 0, shuffle=False)))
    for b, key in enumerate(batch["keys"]):  # a window of consecutive azimuths, not a random subset
        views = nvs.set_record("train", int(key.rsplit("-", 1)[1]))["images"]
        start = int(batch["start"][b])
        want = to_tensor([to_model_size(img, 32) for img in views[start : start + 3]])
        assert torch.allclose(batch["pixels"][b], want, atol=1 / 255)


def test_bad_sources_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no folders of images"):
        make_loader(f"folders:{tmp_path}", 2)
    with pytest.raises(ValueError, match="train or heldout"):
        make_loader("nvs:test", 2)


def grey_set(key: str, n: int) -> dict:
    """An exchangeable set whose image i is a flat grey of level 10 * i: a batch shows which images it took."""
    from PIL import Image

    return {"key": key, "images": [Image.new("RGB", (8, 8), (10 * i,) * 3) for i in range(n)], "meta": {}}


def test_exchangeable_sets_are_sampled_whole_and_anew_each_epoch(tmp_path):
    write_shard(tmp_path / "s-00000.tar", [grey_set(f"set-{j}", 25) for j in range(2)])
    loader = make_loader(str(tmp_path), batch_size=2, min_k=2, max_k=4, resolution=8, workers=0)

    def shown(epoch: int) -> list[list[int]]:
        loader.dataset.set_epoch(epoch)
        levels = (next(iter(loader))["pixels"][:, :, 0, 0, 0] + 1) * 127.5  # (B, K)
        return (levels / 10).round().int().tolist()

    epochs = [shown(e) for e in range(8)]
    assert shown(3) == epochs[3]  # an epoch is the same batch again (the exact resume relies on it)
    seen = {i for batch in epochs for images in batch for i in images}
    assert len(seen) >= 10 and max(seen) >= 4  # not only the first max_k=4 images of the 25
    assert len({len(batch[0]) for batch in epochs}) > 1  # K changes from epoch to epoch
    assert len({str(batch) for batch in epochs}) == len(epochs)  # and so do the images


@pytest.mark.parametrize(
    ("kind", "workers", "world", "message"),
    [("shards", 2, 1, r"1 shards for 1 rank\(s\) x 2 worker"), ("folders", 0, 3, r"2 folders for 3 rank\(s\) x 1"),
     ("synth", 0, 2, r"1 sets \(n_sets\) for 2 rank")],
)  # fmt: skip
def test_fewer_parts_than_ranks_times_workers_fail_clearly(tmp_path, kind, workers, world, message):
    """Before: the last rank got nothing, and the training loop started empty epochs forever."""
    source = {"shards": str(tmp_path), "folders": f"folders:{tmp_path}", "synth": "synth:train"}[kind]
    if kind == "shards":
        write_shard(tmp_path / "s-00000.tar", [grey_set("a", 2), grey_set("b", 2)])
    for j in range(2 if kind == "folders" else 0):
        (tmp_path / f"set-{j}").mkdir()
        grey_set("x", 1)["images"][0].save(tmp_path / f"set-{j}" / "0.png")
    loader = make_loader(source, 1, 1, 1, 8, workers, n_sets=1, rank=world - 1, world=world)
    with pytest.raises(ValueError, match=message):
        next(iter(loader))
