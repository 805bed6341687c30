"""The Gradio demo: handlers, bad input, the `generate` API through gradio_client, and a real browser."""

import io
import json
import os
import shutil
import socket
import struct
import time
import zipfile
import zlib
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

import app
from m2m.adapters import add_lora, rebase, save_adapter
from m2m.pipeline import load_pipeline
from m2m.presets import build_pipeline


def no_progress(*args, **kwargs):
    return None


@pytest.fixture(scope="module")
def models(tmp_path_factory, micro):
    folder = tmp_path_factory.mktemp("checkpoints")
    for variant in ("self", "dino"):
        build_pipeline(micro, variant).save_pretrained(folder / f"m2m-{variant}-tiny")
    return app.Models(folder)


@pytest.fixture(scope="module")
def context_files(tmp_path_factory, images):
    folder = tmp_path_factory.mktemp("ctx")
    paths = []
    for i, img in enumerate(images(2)):
        paths.append(str(folder / f"c{i}.png"))
        img.save(paths[-1])
    return paths


def run(models, files, n=3, variant="M2M-Self", task="General", seed=0):
    return list(app.generate(models, files, variant, task, n, 2, 3.0, seed, 0, None, progress=no_progress))


def zip_names(path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return sorted(zf.namelist())


@pytest.mark.parametrize("variant", list(app.VARIANTS))
def test_generate_streams_one_image_at_a_time(models, context_files, variant):
    outs = run(models, context_files, 3, variant)
    assert [len(gallery) for gallery, *_ in outs] == [1, 2, 3]
    zip_path, gif, sheet = outs[-1][1]
    assert len(zip_names(zip_path)) == 4 and "manifest.json" in zip_names(zip_path)
    with zipfile.ZipFile(zip_path) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    assert manifest["variant"] == variant and manifest["task"] == "General"
    assert manifest["context_order"] == ["c0.png", "c1.png"]
    assert [im["index"] for im in manifest["images"]] == [2, 3, 4]
    assert Image.open(gif).n_frames == 5
    assert Image.open(sheet).size[0] > 5 * 100


def test_stop_keeps_finished_images_and_continue_appends(models, context_files):
    stream = app.generate(models, context_files, "M2M-Self", "General", 4, 2, 3.0, 0, 0, None, progress=no_progress)
    next(stream)
    *_, state = next(stream)
    stream.close()  # what the Stop button does to the running event
    assert len(state["generated"]) == 2
    outs = list(app.continue_set(models, state, 2, progress=no_progress))
    state = outs[-1][3]
    assert [g["index"] for g in state["generated"]] == [2, 3, 4, 5]


def test_regenerate_one_image(models, context_files):
    state = run(models, context_files, 3)[-1][3]
    before = [dict(g) for g in state["generated"]]
    state = list(app.regenerate(models, state, 2, False, progress=no_progress))[-1][3]
    after = state["generated"]
    assert len(after) == 3 and after[0] == before[0] and after[2] == before[2]
    assert after[1]["index"] == 3 and after[1]["seed"] != before[1]["seed"]
    state = list(app.regenerate(models, state, 2, True, progress=no_progress))[-1][3]
    assert [g["index"] for g in state["generated"]] == [2, 3, 4] and state["generated"][0] == before[0]


def test_idle_session_folders_are_removed():
    old = Path(app.new_session()["dir"])
    os.utime(old, (0, 0))  # idle since 1970
    new = Path(app.new_session()["dir"])
    assert new.is_dir() and not old.exists()


def test_reorder_and_remove(context_files):
    assert app.move(context_files, 1, -1) == context_files[::-1]
    assert app.move(context_files, 0, -1) == context_files
    assert app.remove(context_files, 0) == context_files[1:]
    with pytest.raises(gr.Error, match="select"):
        app.remove(context_files, None)


def test_missing_task_checkpoints_are_unavailable_with_a_reason(models):
    assert models.unavailable("M2M-Self", "General") is None
    reason = models.unavailable("M2M-DINO", "Novel View Synthesis")
    assert "no checkpoint" in reason
    with pytest.raises(gr.Error, match="no checkpoint"):
        run(models, [], 1, "M2M-DINO", "Novel View Synthesis")


def test_a_task_adapter_runs_in_its_task_mode_after_moving_next_to_its_base(models, context_files, tmp_path):
    base = models.checkpoint_dir / "m2m-self-tiny"
    pipe = load_pipeline(base)
    save_adapter(pipe, tmp_path / "runs" / "adapter", base, add_lora(pipe.unet, 2), task="procedure")
    folder = models.checkpoint_dir / "m2m-self-tiny-procedure"
    shutil.copytree(tmp_path / "runs" / "adapter", folder)  # moved: its relative base path now points nowhere
    with pytest.raises(gr.Error, match=r"base model .* is missing"):
        run(models, context_files, 1, task=TASK)
    rebase(folder, base)
    assert models.unavailable("M2M-Self", TASK) is None
    gallery, *_ = run(models, context_files, 1, task=TASK)[-1]
    assert len(gallery) == 1
    assert app.example_task("procedure-stacking") == TASK and app.example_task("shapes") == "General"


TASK = "Visual Procedure Generation"


def png_with_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims the given size: a decompression bomb's signature."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytearray(data[12:29])  # chunk type + 13 bytes of IHDR data
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def bad_file(tmp_path, case: str) -> str:
    path = tmp_path / f"{case}.png"
    if case == "text":
        path.write_text("hello")
    elif case == "truncated":
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (9, 9, 9)).save(buf, format="PNG")
        path.write_bytes(buf.getvalue()[:70])
    elif case == "bomb":
        path.write_bytes(png_with_size(100_000, 100_000))
    return str(path)


BAD_FILES = [("text", "not an image"), ("truncated", "truncated"), ("bomb", "too large")]


@pytest.mark.parametrize(("case", "message"), BAD_FILES)
def test_bad_files_get_a_clear_message(models, context_files, tmp_path, case, message):
    with pytest.raises(gr.Error, match=message):
        run(models, [context_files[0], bad_file(tmp_path, case)], 1)
    assert len(run(models, context_files, 1)) == 1  # and nothing else broke


def test_too_many_images(models, context_files):
    with pytest.raises(gr.Error, match="at most"):
        run(models, context_files[:1] * (app.MAX_CONTEXT_IMAGES + 1), 1)
    with pytest.raises(gr.Error, match="num_images"):
        run(models, context_files, app.MAX_NEW_IMAGES + 1)


@pytest.mark.parametrize("kind", ["gif", "RGBA", "LA", "P", "CMYK", "I;16", "1x1", "tall"])
def test_odd_images_are_converted(models, tmp_path, kind):
    path = tmp_path / f"img.{'gif' if kind == 'gif' else 'tif' if kind == 'CMYK' else 'png'}"
    base = Image.new("RGB", (40, 30), (200, 20, 20))
    if kind == "gif":
        frames = [base, Image.new("RGB", (40, 30), (20, 20, 200))]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    elif kind == "1x1":
        Image.new("RGB", (1, 1), (1, 2, 3)).save(path)
    elif kind == "tall":
        Image.new("RGB", (2, 3000), (1, 2, 3)).save(path)
    elif kind == "I;16":
        Image.fromarray(np.full((30, 40), 40000, dtype=np.uint16)).save(path)
    else:
        base.convert(kind).save(path)
    assert len(run(models, [str(path)], 1)) == 1
    if kind == "gif":  # the first frame is the one used
        assert np.asarray(app.load_context([str(path)])[0].convert("RGB"))[0, 0].tolist() == [200, 20, 20]


# --- a running server ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(models):
    demo = app.build_demo(models)
    port = free_port()
    demo.queue(default_concurrency_limit=2).launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True
    )
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_api_generate_streams_and_returns_the_zip(server, context_files):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    job = client.submit(
        context_images=[handle_file(p) for p in context_files], variant="M2M-Self", task="General",
        num_images=2, steps=2, guidance=3.0, seed=5, api_name="/generate",
    )  # fmt: skip
    gallery, downloads, _ = job.result(timeout=120)
    assert len(gallery) == 2
    assert len(job.outputs()) == 2  # one update per image
    zip_path = next(f for f in downloads if str(f).endswith(".zip"))
    assert len(zip_names(zip_path)) == 3
    with pytest.raises(Exception, match="not an image"):
        client.predict(context_images=[handle_file(__file__)], variant="M2M-Self", task="General", num_images=1,
                       steps=2, guidance=3.0, seed=0, api_name="/generate")  # fmt: skip


def test_two_users_at_once_do_not_mix(server, context_files, images, tmp_path):
    from gradio_client import Client, handle_file

    other = tmp_path / "other.png"
    images(3)[2].save(other)
    a, b = Client(server, verbose=False), Client(server, verbose=False)
    kw = dict(variant="M2M-Self", task="General", num_images=2, steps=2, guidance=3.0, seed=1, api_name="/generate")
    ja = a.submit(context_images=[handle_file(p) for p in context_files], **kw)
    jb = b.submit(context_images=[handle_file(str(other))], **kw)
    ra, rb = ja.result(timeout=120), jb.result(timeout=120)
    manifests = []
    for _, downloads, _ in (ra, rb):
        with zipfile.ZipFile(next(f for f in downloads if str(f).endswith(".zip"))) as zf:
            manifests.append(json.loads(zf.read("manifest.json")))
    assert [i["index"] for i in manifests[0]["images"]] == [2, 3]
    assert [i["index"] for i in manifests[1]["images"]] == [1, 2]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="Debian's chromium is not installed")
def test_browser_end_to_end(server, context_files, tmp_path):
    """Upload two images, generate 3, see them appear one by one, download the zip."""
    from playwright.sync_api import sync_playwright

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=flags)
        page = browser.new_page(accept_downloads=True)
        page.goto(server)
        page.locator("input[type=file]").first.set_input_files(context_files)
        page.locator("#context img").nth(1).wait_for(timeout=30_000)  # both shown, in order
        for slider, value in (("#num-images", "3"), ("#steps", "20")):
            page.locator(f"{slider} input[type=number]").fill(value)
            page.locator(f"{slider} input[type=number]").press("Enter")
        page.get_by_role("button", name="Generate", exact=True).click()
        gallery = page.locator("#generated img")
        seen, deadline = [], time.time() + 120
        while time.time() < deadline and (not seen or seen[-1] < 3):
            count = gallery.count()
            if not seen or count != seen[-1]:
                seen.append(count)
            time.sleep(0.05)
        assert seen[-1] == 3 and ({1, 2} & set(seen)) and seen == sorted(seen), seen  # they arrived one by one
        page.get_by_text("3 of 3 image(s) done").wait_for(timeout=30_000)
        link = page.locator('#downloads a[download="m2m-set.zip"]').first
        with page.expect_download() as download:
            link.click()
        target = tmp_path / "set.zip"
        download.value.save_as(target)
        browser.close()
    assert len([n for n in zip_names(target) if n.endswith(".png")]) == 3
