"""M2M demo: drag in preceding images, pick a variant and a task, watch the set grow, download it.

    python app.py                      # http://127.0.0.1:7860, the embedded checkpoints, CPU
    python app.py --host 0.0.0.0 --port 8000 --checkpoint-dir /models --share

Flags fall back on environment variables (M2M_HOST, M2M_PORT, M2M_SHARE, M2M_CHECKPOINT_DIR,
M2M_DEVICE, and Gradio's GRADIO_SERVER_NAME / GRADIO_SERVER_PORT as Hugging Face Spaces set them).
Models load once, on first use; every handler is given them, and a session's set lives in its
own state, so users never share anything but read-only weights.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from PIL import Image

from m2m.images import ImageInputError, load_image
from m2m.pipeline import CheckpointError, M2MPipeline, load_pipeline
from m2m.sets import contact_sheet, write_gif, write_zip
from m2m.tasks import is_checkpoint, task_checkpoint

ROOT = Path(__file__).resolve().parent
VARIANTS = {"M2M-Self": "self", "M2M-DINO": "dino"}
TASKS = {"General": "general", "Novel View Synthesis": "nvs", "Visual Procedure Generation": "procedure"}
MAX_CONTEXT_IMAGES = 32
MAX_NEW_IMAGES = 24
SESSION_TTL_S = 6 * 3600  # a session's files are removed after this long without a new set


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    share: bool
    checkpoint_dir: Path
    device: str


def parse_args(argv: list[str] | None = None) -> Settings:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=env("M2M_HOST") or env("GRADIO_SERVER_NAME") or "127.0.0.1")
    p.add_argument("--port", type=int, default=int(env("M2M_PORT") or env("GRADIO_SERVER_PORT") or 7860))
    p.add_argument("--share", action="store_true", default=env("M2M_SHARE", "").lower() in ("1", "true", "yes"))
    p.add_argument("--checkpoint-dir", default=env("M2M_CHECKPOINT_DIR") or str(ROOT / "checkpoints"))
    p.add_argument("--device", default=env("M2M_DEVICE") or "cpu")
    a = p.parse_args(argv)
    return Settings(a.host, a.port, a.share, Path(a.checkpoint_dir), a.device)


class Models:
    """The pipelines of each (variant, task), loaded once on first use and shared read-only by all sessions."""

    def __init__(self, checkpoint_dir: Path, device: str = "cpu"):
        self.checkpoint_dir, self.device = Path(checkpoint_dir), device
        self._pipes: dict[Path, M2MPipeline] = {}
        self._lock = threading.Lock()

    def folder(self, variant: str, task: str) -> Path:
        return task_checkpoint(self.checkpoint_dir, VARIANTS[variant], TASKS[task])

    def unavailable(self, variant: str, task: str) -> str | None:
        """Why this variant and task cannot run, or None."""
        if variant not in VARIANTS or task not in TASKS:
            return f"unknown variant {variant!r} or task {task!r}"
        folder = self.folder(variant, task)
        if not is_checkpoint(folder):
            return f"no checkpoint at {folder}"
        return None

    def get(self, variant: str, task: str) -> M2MPipeline:
        reason = self.unavailable(variant, task)
        if reason:
            raise gr.Error(f"{variant} / {task} is unavailable: {reason}")
        folder = self.folder(variant, task)
        with self._lock:
            if folder not in self._pipes:
                try:
                    pipe = load_pipeline(folder, device=self.device)
                except CheckpointError as err:
                    raise gr.Error(str(err)) from None
                pipe.set_progress_bar_config(disable=True)
                self._pipes[folder] = pipe
            return self._pipes[folder]


# --- handlers: plain functions of their inputs (and the models) --------------------------------


def file_path(f) -> str:
    return f if isinstance(f, str) else getattr(f, "path", None) or f["path"]


def load_context(files: list | None) -> list[Image.Image]:
    """The context files, checked: a clear message for the first one that cannot be used."""
    files = files or []
    if len(files) > MAX_CONTEXT_IMAGES:
        raise gr.Error(f"at most {MAX_CONTEXT_IMAGES} context images, got {len(files)}")
    images = []
    for f in files:
        try:
            images.append(load_image(file_path(f)))
        except ImageInputError as err:
            raise gr.Error(f"{Path(file_path(f)).name}: {str(err).split(': ', 1)[-1]}") from None
    return images


def move(files: list | None, index: int | None, delta: int) -> list:
    """Move the selected context image earlier (-1) or later (+1)."""
    files = list(files or [])
    if index is None or not 0 <= index < len(files):
        raise gr.Error("select a context image first")
    j = min(max(index + delta, 0), len(files) - 1)
    files.insert(j, files.pop(index))
    return [file_path(f) for f in files]


def remove(files: list | None, index: int | None) -> list:
    files = list(files or [])
    if index is None or not 0 <= index < len(files):
        raise gr.Error("select a context image first")
    files.pop(index)
    return [file_path(f) for f in files]


def selected_index(event: gr.SelectData) -> int:
    return event.index


def context_gallery(files: list | None) -> list[tuple[str, str]]:
    return [(file_path(f), f"{i + 1}") for i, f in enumerate(files or [])]


def check_params(num_images, steps, guidance, seed, window) -> tuple[int, int, float, int, int | None]:
    try:
        num_images, steps, seed, window = int(num_images), int(steps), int(seed), int(window or 0)
        guidance = float(guidance)
    except (TypeError, ValueError):
        raise gr.Error("num_images, steps, seed and the context window must be whole numbers") from None
    if not 1 <= num_images <= MAX_NEW_IMAGES:
        raise gr.Error(f"num_images must be between 1 and {MAX_NEW_IMAGES}")
    if not 1 <= steps <= 200 or seed < 0 or not 0 <= guidance <= 30 or window < 0:
        raise gr.Error("steps must be 1-200, guidance 0-30, seed and context window non-negative")
    return num_images, steps, guidance, seed, window or None


def new_session(ttl_s: float = SESSION_TTL_S) -> dict:
    """A session's own folder for its images and downloads; folders idle for `ttl_s` are removed."""
    root = Path(tempfile.gettempdir()) / "m2m-sessions"
    root.mkdir(exist_ok=True)
    for old in root.iterdir():
        if old.is_dir() and time.time() - old.stat().st_mtime > ttl_s:
            shutil.rmtree(old, ignore_errors=True)
    return {"dir": tempfile.mkdtemp(dir=root), "context": [], "generated": [], "params": {}}


def outputs(state: dict, status: str) -> tuple:
    """Gallery, downloads (zip, GIF, contact sheet), status and state, after every image."""
    gen = state["generated"]
    folder = Path(state["dir"])
    gallery = [(g["path"], f"#{g['index']} · seed {g['seed']}") for g in gen]
    if not gen:
        return gallery, None, status, state
    images = [{"file": Path(g["path"]).name, "index": g["index"], "seed": g["seed"]} for g in gen]
    manifest = {**state["params"], "context_order": [Path(c).name for c in state["context"]], "images": images}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    zip_path = write_zip(folder / "m2m-set.zip", {Path(g["path"]).name: Path(g["path"]) for g in gen}, manifest)
    context = [load_image(c) for c in state["context"]]
    made = [Image.open(g["path"]) for g in gen]
    gif = write_gif(folder / "m2m-set.gif", context + made)
    sheet = folder / "m2m-contact-sheet.png"
    contact_sheet(context, made).save(sheet)
    return gallery, [str(zip_path), str(gif), str(sheet)], status, state


def run_generation(models, state, variant, task, context_paths, keep, num_images, steps, guidance, seed, window,
                   progress):  # fmt: skip
    """Generate after `context_paths` + the first `keep` generated images, streaming each one."""
    pipe = models.get(variant, task)
    base = [load_image(p) for p in context_paths] + [Image.open(g["path"]) for g in state["generated"][:keep]]
    state["generated"] = state["generated"][:keep]
    state["params"] = {"checkpoint": str(models.folder(variant, task)), "variant": variant, "task": task,
                       "num_images": num_images, "steps": steps, "guidance": guidance, "seed": seed,
                       "context_window": window}  # fmt: skip
    stream = pipe.generate_iter(base, num_images=num_images, num_inference_steps=steps, guidance_scale=guidance,
                                seed=seed, max_context=window)  # fmt: skip
    for n, result in enumerate(stream, start=1):
        path = Path(state["dir"]) / f"image_{result.index:03d}_seed{result.seed}.png"
        result.image.save(path)
        state["generated"].append({"path": str(path), "index": result.index, "seed": result.seed})
        progress(n / num_images, desc=f"image {n} of {num_images}")
        yield outputs(state, f"{n} of {num_images} image(s) done")


def generate(models, context_images, variant, task, num_images, steps, guidance, seed, context_window=0,
             state=None, progress=gr.Progress()):  # noqa: B008  # fmt: skip
    """A new set after the given context images: the `generate` endpoint of the UI and the API."""
    num_images, steps, guidance, seed, window = check_params(num_images, steps, guidance, seed, context_window)
    load_context(context_images)  # every file checked before any work
    state = new_session() if not state else {**state}
    state["context"] = [file_path(f) for f in context_images or []]
    yield from run_generation(models, state, variant, task, state["context"], 0, num_images, steps, guidance, seed,
                              window, progress)  # fmt: skip


def continue_set(models, state, num_images, progress=gr.Progress()):  # noqa: B008
    """Append more images to the same set, with the same settings."""
    if not state or not state.get("generated"):
        raise gr.Error("generate a set first")
    p = state["params"]
    num_images = check_params(num_images, p["steps"], p["guidance"], p["seed"], p["context_window"])[0]
    keep = len(state["generated"])
    yield from run_generation(models, {**state}, p["variant"], p["task"], state["context"], keep, num_images,
                              p["steps"], p["guidance"], p["seed"], p["context_window"], progress)  # fmt: skip


def regenerate(models, state, k, and_after, progress=gr.Progress()):  # noqa: B008
    """Redo generated image k (1-based) with a new seed, and optionally the ones after it."""
    if not state or not state.get("generated"):
        raise gr.Error("generate a set first")
    gen, p = state["generated"], state["params"]
    k = int(k or 0)
    if not 1 <= k <= len(gen):
        raise gr.Error(f"choose an image between 1 and {len(gen)}")
    later = gen[k:]
    seed = random.randint(0, 2**31 - 1)
    state = {**state, "generated": list(gen)}
    n = len(gen) - k + 1 if and_after else 1
    yield from run_generation(models, state, p["variant"], p["task"], state["context"], k - 1, n, p["steps"],
                              p["guidance"], seed, p["context_window"], progress)  # fmt: skip
    if not and_after:  # put the later images back after the new one
        state["generated"] += later
        yield outputs(state, f"image {k} regenerated with seed {seed}")


def pick_seed(seed, randomize: bool) -> int:
    return random.randint(0, 2**31 - 1) if randomize else int(seed)


def availability(models: Models) -> str:
    lines = []
    for variant in VARIANTS:
        for task in TASKS:
            reason = models.unavailable(variant, task)
            lines.append(f"- {variant} / {task}: " + ("ready" if reason is None else f"unavailable ({reason})"))
    return "\n".join(lines)


def examples_list() -> list[list]:
    """One example per folder of examples/: its PNGs as the context, with the default settings."""
    folder = ROOT / "examples"
    sets = sorted(d for d in folder.iterdir() if d.is_dir() and any(d.glob("*.png"))) if folder.is_dir() else []
    return [[sorted(str(p) for p in d.glob("*.png")), "M2M-Self", example_task(d.name), 4, 25, 3.0, 0, 0]
            for d in sets]  # fmt: skip


def example_task(name: str) -> str:
    """nvs-* and procedure-* example folders run in their task mode, the others in General."""
    by_prefix = {key: label for label, key in TASKS.items()}
    return by_prefix.get(name.split("-", 1)[0], "General")


# --- layout -------------------------------------------------------------------------------------


def build_demo(models: Models) -> gr.Blocks:
    with gr.Blocks(title="M2M: many-to-many image generation", delete_cache=(3600, 3600)) as demo:
        state = gr.State(None)
        selected = gr.State(None)
        gr.Markdown("# M2M: many-to-many image generation\nDrag in preceding images; M2M continues the set.")
        with gr.Row():
            with gr.Column():
                files = gr.File(label="Context images", file_count="multiple", type="filepath")
                shown = gr.Gallery(
                    label="Context order (select one to move or remove)", columns=6, height=180, elem_id="context"
                )
                with gr.Row():
                    earlier, later, drop = gr.Button("◀ Earlier"), gr.Button("Later ▶"), gr.Button("Remove")
                variant = gr.Radio(list(VARIANTS), value="M2M-Self", label="Variant")
                task = gr.Radio(list(TASKS), value="General", label="Task")
                gr.Markdown(availability(models))
                num_images = gr.Slider(1, MAX_NEW_IMAGES, value=4, step=1, label="Num images", elem_id="num-images")
                steps = gr.Slider(1, 100, value=25, step=1, label="Steps", elem_id="steps")
                guidance = gr.Slider(0.0, 10.0, value=3.0, step=0.5, label="Guidance")
                with gr.Row():
                    seed = gr.Number(0, precision=0, label="Seed", minimum=0)
                    randomize = gr.Checkbox(False, label="Randomize seed")
                window = gr.Slider(0, MAX_CONTEXT_IMAGES, value=0, step=1, label="Context window (0 = all)")
            with gr.Column():
                with gr.Row():
                    go, stop, more = gr.Button("Generate", variant="primary"), gr.Button("Stop"), gr.Button("Continue")
                status = gr.Markdown("")
                gallery = gr.Gallery(label="Generated", columns=4, height=360, elem_id="generated")
                downloads = gr.File(label="Downloads: zip (PNGs + manifest), GIF, contact sheet", elem_id="downloads",
                                    file_count="multiple")  # fmt: skip
                with gr.Row():
                    k = gr.Number(1, precision=0, label="Regenerate image k", minimum=1)
                    and_after = gr.Checkbox(False, label="and the ones after it")
                    redo = gr.Button("Regenerate")

        files.change(context_gallery, files, shown, api_name=False)
        shown.select(selected_index, None, selected, api_name=False)
        earlier.click(functools.partial(move, delta=-1), [files, selected], files, api_name=False)
        later.click(functools.partial(move, delta=1), [files, selected], files, api_name=False)
        drop.click(remove, [files, selected], files, api_name=False)
        outs = [gallery, downloads, status, state]
        inputs = [files, variant, task, num_images, steps, guidance, seed, window, state]
        run = go.click(pick_seed, [seed, randomize], seed, api_name=False).then(
            functools.partial(generate, models), inputs, outs, api_name="generate", concurrency_limit=2
        )
        gr.Examples(examples_list(), inputs=inputs[:-1], outputs=outs, fn=functools.partial(generate, models),
                    run_on_click=True, cache_examples=False, label="Example sets: a click runs one")  # fmt: skip
        cont = more.click(functools.partial(continue_set, models), [state, num_images], outs, api_name="continue")
        again = redo.click(functools.partial(regenerate, models), [state, k, and_after], outs, api_name="regenerate")
        stop.click(None, None, None, cancels=[run, cont, again], api_name=False)
    return demo


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    models = Models(settings.checkpoint_dir, settings.device)
    demo = build_demo(models)
    demo.queue(default_concurrency_limit=2).launch(
        server_name=settings.host, server_port=settings.port, share=settings.share
    )


if __name__ == "__main__":
    main()
