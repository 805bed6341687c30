"""The Gradio demo: handlers, bad input, reproducibility, the API through gradio_client, and a real browser."""

import io
import json
import os
import re
import shutil
import socket
import struct
import time
import warnings
import zipfile
import zlib
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

import app
from demo import cards, handlers, sets
from demo.examples import find_examples, thumbnail_strip
from demo.models import TASKS, VARIANTS, Models, resolve_device
from m2m.adapters import add_lora, rebase, save_adapter
from m2m.cli import parse_args as cli_args
from m2m.images import load_image
from m2m.loading import load_pipeline
from m2m.presets import build_pipeline
from m2m.sampling import SamplingParams

ROOT = Path(__file__).resolve().parents[1]
TASK = "Visual Procedure Generation"


def no_progress(*args, **kwargs):
    return None


@pytest.fixture(scope="module")
def models(tmp_path_factory, micro):
    folder = tmp_path_factory.mktemp("checkpoints")
    for variant in ("self", "dino"):
        build_pipeline(micro, variant).save_pretrained(folder / f"m2m-{variant}-tiny")
    return Models(folder, "cpu")


@pytest.fixture(scope="module")
def context_files(tmp_path_factory, images):
    folder = tmp_path_factory.mktemp("ctx")
    paths = []
    for i, img in enumerate(images(2)):
        paths.append(str(folder / f"c{i}.png"))
        img.save(paths[-1])
    return paths


def run(models, files, n=3, variant="M2M-Self", task="General", seed=0):
    return list(handlers.generate(models, files, variant, task, n, 2, 3.0, seed, 0, None, progress=no_progress))


def more(models, state, n=1):
    return list(handlers.continue_set(models, state, n, progress=no_progress))[-1][3]


def redo(models, state, k, and_after=False):
    return list(handlers.regenerate(models, state, k, and_after, progress=no_progress))[-1][3]


def zip_names(path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return sorted(zf.namelist())


def read_manifest(zip_path) -> dict:
    with zipfile.ZipFile(zip_path) as zf:
        return json.loads(zf.read("manifest.json"))


def pixels(path) -> np.ndarray:
    return np.asarray(load_image(path).convert("RGB"))


# --- the handlers -------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_set_strip_shows_the_given_images_first_then_each_new_one(models, context_files, variant):
    outs = run(models, context_files, 3, variant)
    assert [len(strip) for strip, *_ in outs] == [2, 3, 4, 5]  # the given images at once, then one by one
    assert outs[0][1] is None  # nothing to download before the first new image
    assert [caption for _, caption in outs[-1][0]] == ["given 1", "given 2", "new 1 · Seed 0", "new 2 · Seed 0",
                                                       "new 3 · Seed 0"]  # fmt: skip
    zip_path, gif, sheet = outs[-1][1]
    assert zip_names(zip_path) == sorted(
        ["given/01-c0.png", "given/02-c1.png", "manifest.json", *(x.name for x in outs[-1][3].new)]
    )
    manifest = read_manifest(zip_path)
    assert manifest["variant"] == variant and manifest["task"] == "General"
    assert manifest["context_order"] == ["c0.png", "c1.png"]
    assert [im["index"] for im in manifest["images"]] == [2, 3, 4]
    assert SamplingParams.from_json(manifest) == SamplingParams(steps=2, guidance=3.0, seed=0)
    with Image.open(gif) as g, Image.open(sheet) as s:
        assert g.n_frames == 5 and s.size[0] > 5 * 100


def test_generation_shows_progress_at_every_denoising_step(models, context_files):
    calls = []
    list(handlers.generate(models, context_files, "M2M-Self", "General", 2, 3, 3.0, 0, progress=lambda *a, **k:
                           calls.append((a[0], k["desc"]))))  # fmt: skip
    assert [d for _, d in calls] == [f"image {i} of 2: step {s} of 3" for i in (1, 2) for s in (1, 2, 3)]
    assert [f for f, _ in calls] == sorted(f for f, _ in calls) and calls[-1][0] == 1.0


def test_stop_keeps_finished_images_and_continue_appends(models, context_files):
    stream = handlers.generate(models, context_files, "M2M-Self", "General", 4, 2, 3.0, 0, progress=no_progress)
    next(stream)
    next(stream)
    *_, state = next(stream)
    stream.close()  # what the Stop button does to the running event
    assert len(state.new) == 2
    assert [x.index for x in more(models, state, 2).new] == [2, 3, 4, 5]


def test_regenerate_one_image(models, context_files):
    state = run(models, context_files, 3)[-1][3]
    before = state.new
    state = redo(models, state, 2)
    assert len(state.new) == 3 and state.new[0] == before[0] and state.new[2] == before[2]
    assert state.new[1].index == 3 and state.new[1].seed != before[1].seed
    assert state.earlier == (before[1],)  # new image 3 was made after the replaced one: it stays in the zip
    state = redo(models, state, 2, and_after=True)
    assert [x.index for x in state.new] == [2, 3, 4] and state.new[0] == before[0]
    assert state.earlier == ()  # nothing left is made after a replaced image


def test_a_replaced_image_stays_while_an_image_is_made_after_it_even_through_another():
    img = lambda name, *after: sets.NewImage(f"/s/{name}", 0, 0, after)  # noqa: E731
    y, x = img("y.png", "a.png"), img("x.png", "a.png", "y.png")  # x was made after y; both replaced since
    s = sets.ImageSet("/s", (), (), None, earlier=(y, x))
    assert sets.with_new(s, (img("a.png"), img("z.png", "a.png", "x.png"))).earlier == (y, x)
    assert sets.with_new(s, (img("a.png"), img("z.png", "a.png"))).earlier == ()


def test_regenerate_keeps_the_sets_seed_for_the_images_before_k(models, context_files):
    state = redo(models, run(models, context_files, 3, seed=7)[-1][3], 3)
    assert state.recipe.params.seed == 7 and [x.seed for x in state.new[:2]] == [7, 7] and state.new[2].seed != 7
    assert [x.seed for x in more(models, state).new] == [7, 7, state.new[2].seed, 7]  # Continue goes on with 7


def open_files() -> int:
    return len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").is_dir() else 0


def test_fifty_generations_leave_no_file_open(models, context_files):
    """Continue and Regenerate read the set's images back: every file is closed, the open descriptors stay flat."""

    def new_set():  # one image, one step, no guidance batch: the files matter here, not the model
        stream = handlers.generate(models, context_files[:1], "M2M-Self", "General", 1, 1, 1.0, 0, progress=no_progress)
        return list(stream)[-1][3]

    new_set()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        before = open_files()
        for _ in range(17):  # 51 generations: a new set, Continue, Regenerate
            state = redo(models, more(models, new_set()), 1)
        after = open_files()
    assert len(state.new) == 2 and after <= before
    assert not [w for w in caught if "unclosed file" in str(w.message)]


def test_idle_session_folders_are_removed():
    old = Path(sets.session_folder())
    os.utime(old, (0, 0))  # idle since 1970
    new = Path(sets.session_folder())
    assert new.is_dir() and not old.exists()


def test_reorder_keeps_the_moved_image_selected(context_files):
    gallery = [(p, None) for p in context_files]  # what an interactive Gallery passes
    assert handlers.move(gallery, 1, -1) == (context_files[::-1], 0)
    assert handlers.move(context_files, 0, -1) == (context_files, 0)
    with pytest.raises(gr.Error, match="select"):
        handlers.move(context_files, None, 1)


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
    strip, *_ = run(models, context_files, 1, task=TASK)[-1]
    assert len(strip) == 3


# --- the device, the Models panel, the examples -------------------------------------------------


def test_auto_device_is_cuda_in_fp16_with_a_gpu_else_the_cpu(monkeypatch):
    monkeypatch.delenv("M2M_DEVICE", raising=False)
    assert app.parse_args([]).device == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == ("cuda", torch.float16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == ("cpu", torch.float32)
    assert resolve_device("cuda:1") == ("cuda:1", torch.float16)
    monkeypatch.setenv("M2M_DEVICE", "cpu")
    assert app.parse_args([]).device == "cpu" and app.parse_args(["--device", "cuda"]).device == "cuda"
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")  # as a Space starts it
    assert app.parse_args([]).host == "0.0.0.0"


def test_models_panel_gives_each_model_its_card_size_and_status(models):
    folder = models.folder("M2M-Self", "General")
    card = {"weights": cards.fingerprint(folder), "trained_on": "MIS-synth", "quality": "style 0.56"}
    table = cards.models_table(models, {folder.name: card, "m2m-dino-tiny": {**card, "weights": "other"}})
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in table.splitlines()[2:8]}
    assert len(rows) == len(VARIANTS) * len(TASKS)
    assert "MIS-synth" in rows["M2M-Self", "General"] and "style 0.56" in rows["M2M-Self", "General"]
    assert "not measured for these weights" in rows["M2M-DINO", "General"]  # a retrained model: no old figures,
    assert "MIS-synth" not in rows["M2M-DINO", "General"]  # nor the old data
    assert "unavailable: no checkpoint at" in rows["M2M-DINO", "Novel View Synthesis"]
    pipe = load_pipeline(folder)
    n = sum(p.numel() for m in (pipe.unet, pipe.vae, pipe.isa) for p in m.parameters())
    assert f"{n / 1e6:.1f}M parameters" in rows["M2M-Self", "General"]


def test_the_shipped_models_all_load_and_have_cards():
    shipped = Models(ROOT / "checkpoints", "cpu")
    table = cards.models_table(shipped)
    assert table.count("| ready |") == len(VARIANTS) * len(TASKS)  # a Space from the repository runs all six
    assert set(cards.read_cards()) == {shipped.folder(v, t).name for v in VARIANTS for t in TASKS}
    assert "not measured" not in table  # every card describes the weights shipped beside it (retrained: re-card)


def test_every_task_has_captioned_example_sets():
    examples = find_examples(ROOT / "examples")
    assert {e.task for e in examples} == set(TASKS)
    assert [e.task for e in examples] == sorted((e.task for e in examples), key=list(TASKS).index)
    plant = next(e for e in examples if e.name == "procedure-grow-plant")
    assert plant.label == "a plant growing, 3 steps" and plant.task == TASK
    assert all(e.expect for e in examples)  # each says what the model should make of it (issue 27 point 4)
    assert all(e.images and not e.caption.startswith(("mis", "nvs", "procedure")) for e in examples)
    assert thumbnail_strip(plant.images, height=50, gap=2).size == (154, 50)


def test_an_example_caption_may_come_with_or_without_what_to_expect(tmp_path):
    for name in ("plain", "described", "procedure-unlisted"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "1.png")
    (tmp_path / "captions.json").write_text('{"plain": "a set", "described": {"caption": "b set", "expect": "more"}}')
    found = {e.name: (e.caption, e.expect, e.task) for e in find_examples(tmp_path)}
    assert found == {"plain": ("a set", "", "General"), "described": ("b set", "more", "General"),
                     "procedure-unlisted": ("procedure unlisted", "", TASK)}  # fmt: skip


def test_the_app_the_cli_and_the_pipeline_default_to_the_same_settings(models, tmp_path):
    """One default: the form's sliders, an example set, the CLI's flags and SamplingParams (the pipeline's)."""
    demo = app.build_demo(models, examples_dir=tmp_path)
    form = {c.label: c.value for c in demo.blocks.values() if getattr(c, "label", None) in ("Steps", "Guidance")}
    cli = cli_args(["generate"])
    example = find_examples(ROOT / "examples")[0]
    default = SamplingParams()
    assert form == {"Steps": default.steps, "Guidance": default.guidance}
    assert (cli.steps, cli.guidance, cli.seed, cli.scheduler) == (default.steps, default.guidance, default.seed,
                                                                  default.scheduler)  # fmt: skip
    assert (example.steps, example.guidance) == (default.steps, default.guidance)


def test_older_manifests_still_give_their_settings():
    """Manifests written before SamplingParams: the demo's top-level settings, the CLI's `parameters`."""
    demo = {"checkpoint": "c", "variant": "M2M-Self", "task": "General", "steps": 2, "guidance": 2.5,
            "context_window": 0, "images": []}  # fmt: skip
    assert SamplingParams.from_json(demo) == SamplingParams(steps=2, guidance=2.5)
    assert SamplingParams.from_json({**demo, "context_window": 3}).max_context == 3
    cli = {"parameters": {"num_images": 3, "steps": 50, "guidance": 3.0, "seed": 4, "scheduler": "dpm++",
                          "max_context": None, "context_cache": True}}  # fmt: skip
    assert SamplingParams.from_json(cli) == SamplingParams(steps=50, seed=4, scheduler="dpm++")
    params = SamplingParams(steps=7, guidance=1.5, seed=9, scheduler="dpm++", max_context=2)
    assert SamplingParams.from_json(json.loads(json.dumps({"parameters": params.to_json()}))) == params


# --- bad input ----------------------------------------------------------------------------------


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
    assert len(run(models, context_files, 1)) == 2  # and nothing else broke


def test_too_many_images(models, context_files):
    with pytest.raises(gr.Error, match="at most"):
        run(models, context_files[:1] * (handlers.MAX_CONTEXT_IMAGES + 1), 1)
    with pytest.raises(gr.Error, match="num_images"):
        run(models, context_files, handlers.MAX_NEW_IMAGES + 1)


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
    strip = run(models, [str(path)], 1)[-1][0]
    with Image.open(strip[0][0]) as shown:  # the strip shows an RGB PNG copy that any browser can show
        assert shown.format == "PNG" and shown.mode == "RGB"
    if kind == "gif":  # the first frame is the one used
        assert pixels(strip[0][0])[0, 0].tolist() == [200, 20, 20]


# --- a running server ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(models):
    demo = app.build_demo(models)
    port = free_port()
    demo.queue(default_concurrency_limit=2).launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True
    )
    return demo, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def server(models):
    demo, url = serve(models)
    yield url
    demo.close()


def new_images(strip) -> list[tuple[str, str]]:
    """(file, caption) of the new images in a strip as gradio_client returns it."""
    items = [(x["image"], x["caption"]) for x in strip]
    return [(f, c) for f, c in items if c.startswith("new")]


def test_api_generate_streams_and_returns_the_zip(server, context_files):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    job = client.submit(
        context_images=[handle_file(p) for p in context_files], variant="M2M-Self", task="General",
        num_images=2, steps=2, guidance=3.0, seed=5, api_name="/generate",
    )  # fmt: skip
    strip, downloads, _ = job.result(timeout=120)
    assert len(strip) == 4 and len(new_images(strip)) == 2
    assert len(job.outputs()) == 3  # the given images, then one update per new image
    zip_path = next(f for f in downloads if str(f).endswith(".zip"))
    assert len([n for n in zip_names(zip_path) if n.endswith(".png")]) == 4
    with pytest.raises(Exception, match="not an image"):
        client.predict(context_images=[handle_file(__file__)], variant="M2M-Self", task="General", num_images=1,
                       steps=2, guidance=3.0, seed=0, api_name="/generate")  # fmt: skip


def test_the_manifest_and_the_strip_make_every_image_again(server, context_files, tmp_path):
    """After Regenerate and Continue, the zip's manifest makes the whole set again, and a caption's Seed its image."""
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    kw = dict(variant="M2M-Self", task="General", steps=2, guidance=3.0, context_window=0, api_name="/generate")
    client.predict(context_images=[handle_file(p) for p in context_files], num_images=3, seed=5, **kw)
    client.predict(k=2, and_after=False, api_name="/regenerate")  # new image 3 stays, made after the old 2
    strip, downloads, _ = client.predict(num_images=1, api_name="/continue")
    with zipfile.ZipFile(next(f for f in downloads if str(f).endswith(".zip"))) as zf:
        zf.extractall(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert len(manifest["images"]) == 4 and len(manifest["earlier"]) == 1
    assert SamplingParams.from_json(manifest) == SamplingParams(steps=2, guidance=3.0, seed=5)

    def make(after: list[str], seed: int) -> np.ndarray:
        given = [handle_file(str(tmp_path / g)) for g in manifest["given"]]
        strip = client.predict(context_images=given + [handle_file(a) for a in after], num_images=1, seed=seed, **kw)[0]
        return pixels(new_images(strip)[-1][0])

    for entry in manifest["images"] + manifest["earlier"]:
        made = make([str(tmp_path / a) for a in entry["after"]], entry["seed"])
        assert np.array_equal(made, pixels(tmp_path / entry["file"])), entry
    shown = new_images(strip)
    redone = 0
    for k, (file, caption) in enumerate(shown):
        if "replaced" not in caption:  # that one is made after an image no longer shown: the manifest has it
            seed = int(re.search(r"Seed (\d+)", caption).group(1))
            assert np.array_equal(make([f for f, _ in shown[:k]], seed), pixels(file)), caption
            redone += 1
    assert redone == 3


def test_two_users_at_once_do_not_mix(server, context_files, images, tmp_path):
    from gradio_client import Client, handle_file

    other = tmp_path / "other.png"
    images(3)[2].save(other)
    a, b = Client(server, verbose=False), Client(server, verbose=False)
    kw = dict(variant="M2M-Self", task="General", num_images=2, steps=2, guidance=3.0, seed=1, api_name="/generate")
    ja = a.submit(context_images=[handle_file(p) for p in context_files], **kw)
    jb = b.submit(context_images=[handle_file(str(other))], **kw)
    ra, rb = ja.result(timeout=120), jb.result(timeout=120)
    manifests = [read_manifest(next(f for f in downloads if str(f).endswith(".zip"))) for _, downloads, _ in (ra, rb)]
    assert [i["index"] for i in manifests[0]["images"]] == [2, 3]
    assert [i["index"] for i in manifests[1]["images"]] == [1, 2]


# --- the Space's front page ---------------------------------------------------------------------


def front_matter() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("---\n")[1]
    return dict(line.split(": ", 1) for line in block.strip().splitlines())


def test_space_front_matter_matches_the_pinned_gradio():
    meta = front_matter()
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line)
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == pins["gradio"]
    assert re.fullmatch(r'"?3\.1[0-3]"?', meta["python_version"])
    assert 0 < len(meta["short_description"]) <= 60 and (ROOT / meta["app_file"]).is_file()


def test_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text) < 12_000
    assert "bash scripts/setup.sh && .venv/bin/python app.py" in text and "bash scripts/test.sh" in text
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for link in re.findall(r"\]\(([^)#\s]+)", page.read_text()):
            target = (page.parent / link).resolve()
            inside = target.is_relative_to(ROOT)  # not the workspace's notes beside the repository
            if not link.startswith("http") and inside:
                assert target.exists(), f"{page.name}: {link}"


# --- a real browser on the embedded models ------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture(scope="module")
def space():
    """The app as a Space runs it: the embedded checkpoints, on the CPU."""
    demo, url = serve(Models(ROOT / "checkpoints", "cpu"))
    yield url
    demo.close()


def watch_the_set(page, total: int, deadline_s: float = 420) -> tuple[list[int], set[str]]:
    """How many images the strip held over time, and the progress lines seen, until `total` images are done (the
    deadline only ends a hung run: a 2-core machine shared with training takes minutes)."""
    counts, progress, deadline = [], set(), time.time() + deadline_s
    while time.time() < deadline and not page.get_by_text(f"{total} of {total} image(s) done").count():
        n = page.locator("#set img").count()
        if not counts or n != counts[-1]:
            counts.append(n)
        progress.update(re.findall(r"image \d+ of \d+: step \d+ of \d+", page.locator("#status").inner_text()))
        time.sleep(0.05)
    counts.append(page.locator("#set img").count())
    return counts, progress


def download_zip(page, target: Path) -> dict:
    with page.expect_download() as download:
        page.locator('#downloads a[download="m2m-set.zip"]').first.click()
    download.value.save_as(target)
    return read_manifest(target)


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="Debian's chromium is not installed")
def test_browser_end_to_end(space, context_files, tmp_path):
    """Examples as pictures, a click that streams a set into the strip, the Models panel, uploads, bad input."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page.goto(space)
        thumbnails = page.locator("#examples img")
        thumbnails.first.wait_for(timeout=30_000)
        assert thumbnails.count() == len(find_examples(ROOT / "examples"))
        for task in TASKS:  # every task's examples on the first screen, before any click
            box = page.locator("#examples").get_by_text(task).first.bounding_box()
            assert box and box["y"] + box["height"] < 1000, task
        page.get_by_role("button", name="a plant growing, 3 steps").click()
        counts, progress = watch_the_set(page, 4)
        assert counts[-1] == 7 and 3 in counts and {4, 5} & set(counts) and counts == sorted(counts), counts
        assert progress, "no step-level progress was shown"
        for caption in ("given 1", "given 3", "new 4 · Seed 0"):
            assert page.locator("#set").get_by_text(caption, exact=True).is_visible()
        page.screenshot(path=ROOT / "docs" / "demo.png")  # README's picture of the demo, kept current
        assert [im["index"] for im in download_zip(page, tmp_path / "a.zip")["images"]] == [3, 4, 5, 6]

        panel = page.get_by_text("m2m-dino-tiny-procedure")
        assert not panel.is_visible()  # collapsed until asked for
        page.get_by_text("Models", exact=True).click()
        panel.wait_for(timeout=10_000)

        page.locator("#context").get_by_role("button", name="Clear").click()  # the example's images
        page.locator("#context input[type=file]").set_input_files(context_files)
        page.locator("#context img").nth(1).wait_for(timeout=30_000)
        page.locator("#context img").nth(0).click()
        page.get_by_role("button", name="Later ▶").click()
        for slider, value in (("#num-images", "1"), ("#steps", "2")):
            page.locator(f"{slider} input[type=number]").fill(value)
            page.locator(f"{slider} input[type=number]").press("Enter")
        page.get_by_role("button", name="Generate", exact=True).click()
        page.get_by_text("1 of 1 image(s) done").wait_for(timeout=60_000)
        assert download_zip(page, tmp_path / "b.zip")["context_order"] == ["c1.png", "c0.png"]

        page.locator("#context input[type=file]").set_input_files([bad_file(tmp_path, "text")])
        page.get_by_role("button", name="Generate", exact=True).click()
        page.get_by_text("text.png: not an image file").wait_for(timeout=30_000)
        browser.close()
    with Image.open(ROOT / "docs" / "demo.png") as shot:
        assert shot.width >= 1000
