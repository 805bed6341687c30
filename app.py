"""M2M demo: drop in preceding images, pick a variant and a task, watch the set grow, download it.

    python app.py                      # http://127.0.0.1:7860, the embedded checkpoints, GPU if there is one
    python app.py --host 0.0.0.0 --port 8000 --checkpoint-dir /models --device cpu --share

Flags fall back on environment variables (M2M_HOST, M2M_PORT, M2M_SHARE, M2M_CHECKPOINT_DIR,
M2M_DEVICE, and Gradio's GRADIO_SERVER_NAME / GRADIO_SERVER_PORT as Hugging Face Spaces set them).
Models load once, on first use; every handler is given them (demo/handlers.py), and a session's set
lives in its own state, so users never share anything but read-only weights.
"""

from __future__ import annotations

import argparse
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from demo.cards import models_table
from demo.examples import Example, find_examples, thumbnail_strip
from demo.handlers import (
    MAX_CONTEXT_IMAGES,
    MAX_NEW_IMAGES,
    continue_set,
    generate,
    move_selected,
    paths,
    pick_seed,
    regenerate,
    selected_index,
)
from demo.models import TASKS, VARIANTS, Models
from m2m.loading import checkpoint_dir
from m2m.sampling import SamplingParams

ROOT = Path(__file__).resolve().parent
DEFAULTS = SamplingParams()  # the pipeline's and the command line's defaults too
INTRO = """# M2M: many-to-many image generation
Give it the first images of a set; it makes the next ones, one after another, each new image joining
the context of the next (Shen et al. 2024). Click an example set to run it, or drop your own images.
The embedded models are tiny, trained on a CPU with no GPU: they carry a set's palette
and style, not yet its shapes; a procedure model keeps the scene and marks where the next step goes."""


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
    p.add_argument("--checkpoint-dir", default=str(checkpoint_dir()))  # $M2M_CHECKPOINT_DIR, else checkpoints/
    p.add_argument("--device", default=env("M2M_DEVICE") or "auto",
                   help="auto (CUDA in fp16 when a GPU is present, else the CPU), cpu, cuda, cuda:1, ...")  # fmt: skip
    a = p.parse_args(argv)
    return Settings(a.host, a.port, a.share, Path(a.checkpoint_dir), a.device)


def example_cards(examples: list[Example], per_row: int = 5) -> list[tuple[Example, gr.Image, gr.Button]]:
    """Each example set as its thumbnail strip, labelled with its task, and a button with its caption."""
    cards = []
    with gr.Column(elem_id="examples"):
        gr.Markdown("### Example sets: a click runs one")
        for row in range(0, len(examples), per_row):
            with gr.Row(equal_height=True):
                for e in examples[row : row + per_row]:
                    with gr.Column(min_width=200, variant="panel", elem_classes="example"):
                        image = gr.Image(thumbnail_strip(e.images), label=e.task, interactive=False, height=80,
                                         format="png", buttons=[])  # fmt: skip
                        cards.append((e, image, gr.Button(e.label, size="sm")))
                        if e.expect:
                            gr.Markdown(f"Expected: {e.expect}.", elem_classes="expect")
    return cards


def load_example(e: Example) -> list:
    """An example's images (for the generate call and the context gallery) and its settings."""
    return [list(e.images), list(e.images), *e.settings()]


@dataclass(frozen=True)
class Form:
    """The context and the settings of a generation."""

    context: gr.Gallery
    earlier: gr.Button
    later: gr.Button
    randomize: gr.Checkbox
    settings: tuple  # variant, task, num images, steps, guidance, seed, window: `generate`'s parameters in order


@dataclass(frozen=True)
class SetView:
    """The buttons, the set strip, the downloads and Regenerate."""

    go: gr.Button
    stop: gr.Button
    more: gr.Button
    status: gr.Markdown
    strip: gr.Gallery
    downloads: gr.File
    k: gr.Number
    and_after: gr.Checkbox
    redo: gr.Button


def set_strip() -> tuple[gr.Button, gr.Button, gr.Button, gr.Markdown, gr.Gallery]:
    """Generate, Stop, Continue, the status, and the whole set in one strip across the page."""
    with gr.Row():
        go, stop, more = gr.Button("Generate", variant="primary"), gr.Button("Stop"), gr.Button("Continue")
    status = gr.Markdown("", elem_id="status")
    strip = gr.Gallery(label="The set: the given images, then the new ones as they are made", columns=8,
                       height=200, object_fit="contain", elem_id="set")  # fmt: skip
    return go, stop, more, status, strip


def form_columns() -> Form:
    """Two columns: where the context is dropped and ordered, and the settings."""
    with gr.Column():
        context = gr.Gallery(label="Context: drop images here; ◀ ▶ move the one clicked",
                             interactive=True, type="filepath", columns=3, height=300, allow_preview=False,
                             elem_id="context")  # fmt: skip
        with gr.Row():
            earlier, later = gr.Button("◀ Earlier", size="sm"), gr.Button("Later ▶", size="sm")
        variant = gr.Radio(list(VARIANTS), value="M2M-Self", label="Variant")
    with gr.Column():
        task = gr.Radio(list(TASKS), value="General", label="Task")
        num_images = gr.Slider(1, MAX_NEW_IMAGES, value=4, step=1, label="Num images", elem_id="num-images")
        steps = gr.Slider(1, 100, value=DEFAULTS.steps, step=1, label="Steps", elem_id="steps")
        guidance = gr.Slider(0.0, 10.0, value=DEFAULTS.guidance, step=0.5, label="Guidance")
        with gr.Row():
            seed = gr.Number(DEFAULTS.seed, precision=0, label="Seed", minimum=0)
            randomize = gr.Checkbox(False, label="Randomize seed")
        window = gr.Slider(0, MAX_CONTEXT_IMAGES, value=0, step=1, label="Context window (0 = all)")
    return Form(context, earlier, later, randomize, (variant, task, num_images, steps, guidance, seed, window))


def results_column() -> tuple[gr.File, gr.Number, gr.Checkbox, gr.Button]:
    """The downloads and Regenerate."""
    with gr.Column():
        downloads = gr.File(label="Downloads: zip (given files, PNGs, manifest), GIF, contact sheet",
                            elem_id="downloads", file_count="multiple")  # fmt: skip
        k = gr.Number(1, precision=0, label="Regenerate new image k", minimum=1)
        and_after = gr.Checkbox(False, label="and the ones after it")
        redo = gr.Button("Regenerate")
    return downloads, k, and_after, redo


def wire(models: Models, form: Form, view: SetView, cards: list) -> None:
    """The events; Generate, Continue and Regenerate are also the API's `generate`, `continue`, `regenerate`."""
    state, selected = gr.State(None), gr.State(None)
    files = gr.File(file_count="multiple", visible=False)  # the `generate` API's context_images
    form.context.select(selected_index, None, selected, api_name=False)
    for event in (form.context.upload, form.context.delete):  # the selected image may have moved
        event(lambda: None, None, selected, api_name=False)
    for button, delta in ((form.earlier, -1), (form.later, 1)):
        button.click(functools.partial(move_selected, delta=delta), [form.context, selected], [form.context, selected],
                     api_name=False)  # fmt: skip
    seed = form.settings[5]
    shown = dict(outputs=[view.strip, view.downloads, view.status, state], show_progress_on=view.status)
    run = dict(fn=functools.partial(generate, models), inputs=[files, *form.settings, state], **shown)
    start = view.go.click(pick_seed, [seed, form.randomize], seed, api_name=False)
    runs = [start.success(paths, form.context, files, api_name=False).success(**run, api_name="generate")]
    for e, image, button in cards:  # a click on an example's pictures or caption loads it and runs it
        for trigger in (button.click, image.select):
            loaded = trigger(functools.partial(load_example, e), None, [files, form.context, *form.settings],
                             api_name=False)  # fmt: skip
            runs.append(loaded.success(**run, api_name=False))
    runs.append(view.more.click(functools.partial(continue_set, models), [state, form.settings[2]], **shown,
                                api_name="continue"))  # fmt: skip
    runs.append(view.redo.click(functools.partial(regenerate, models), [state, view.k, view.and_after], **shown,
                                api_name="regenerate"))  # fmt: skip
    view.stop.click(None, None, None, cancels=runs, api_name=False)


def build_demo(models: Models, examples_dir: Path = ROOT / "examples") -> gr.Blocks:
    with gr.Blocks(title="M2M: many-to-many image generation", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(INTRO)
        cards = example_cards(find_examples(examples_dir))
        top = set_strip()
        with gr.Row():
            form = form_columns()
            view = SetView(*top, *results_column())
        with gr.Accordion("Models", open=False, elem_id="models"):
            gr.Markdown(models_table(models))
        wire(models, form, view, cards)
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
