"""The demo's handlers: plain functions of their inputs and the models (app.py gives them with functools.partial).

Each generating handler yields (set strip, downloads, status, state): first the set as it stands,
then once more after every new image.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import gradio as gr
from PIL import Image

from demo.models import Models
from demo.sets import ImageSet, NewImage, Recipe, downloads, save_new, session_folder, start_set, strip, with_new
from m2m.images import ImageInputError, load_image
from m2m.pipeline import M2MPipeline
from m2m.sampling import SamplingParams

MAX_CONTEXT_IMAGES = 32
MAX_NEW_IMAGES = 24
MAX_SEED = 2**31 - 1


def file_path(f) -> str:
    """A path from what Gradio passes: a path, a FileData, a {"path": ...} dict or a gallery's (path, caption)."""
    if isinstance(f, (tuple, list)):
        f = f[0]
    return f if isinstance(f, str) else getattr(f, "path", None) or f["path"]


def paths(items: list | None) -> list[str]:
    return [file_path(f) for f in items or []]


def load_context(files: list | None) -> list[Image.Image]:
    """The context files, checked: a clear message for the first one that cannot be used."""
    files = paths(files)
    if len(files) > MAX_CONTEXT_IMAGES:
        raise gr.Error(f"at most {MAX_CONTEXT_IMAGES} context images, got {len(files)}")
    images = []
    for f in files:
        try:
            images.append(load_image(f))
        except ImageInputError as err:
            raise gr.Error(f"{Path(f).name}: {str(err).split(': ', 1)[-1]}") from None
    return images


def move(items: list | None, index: int | None, delta: int) -> tuple[list[str], int]:
    """Move the selected context image earlier (-1) or later (+1); it stays selected."""
    items = paths(items)
    if index is None or not 0 <= index < len(items):
        raise gr.Error("select a context image first")
    j = min(max(index + delta, 0), len(items) - 1)
    items.insert(j, items.pop(index))
    return items, j


def move_selected(items: list | None, index: int | None, delta: int) -> tuple[gr.Gallery, int]:
    """`move` for the context gallery: shown with nothing selected (Gradio hides its upload buttons while an
    image is), the moved image's index kept, so that the same button moves it on."""
    items, j = move(items, index, delta)
    return gr.Gallery(value=items, selected_index=None), j


def selected_index(event: gr.SelectData) -> int:
    return event.index


def check_count(num_images) -> int:
    try:
        num_images = int(num_images)
    except (TypeError, ValueError):
        raise gr.Error("num_images must be a whole number") from None
    if not 1 <= num_images <= MAX_NEW_IMAGES:
        raise gr.Error(f"num_images must be between 1 and {MAX_NEW_IMAGES}")
    return num_images


def check_params(steps, guidance, seed, window) -> SamplingParams:
    """The form's settings as SamplingParams (a context window of 0 is all), within the form's ranges."""
    try:
        steps, seed, window, guidance = int(steps), int(seed), int(window or 0), float(guidance)
    except (TypeError, ValueError):
        raise gr.Error("steps, seed and the context window must be whole numbers") from None
    if not 1 <= steps <= 200 or not 0 <= seed <= MAX_SEED or not 0 <= guidance <= 30 or window < 0:
        raise gr.Error(f"steps must be 1-200, guidance 0-30, seed 0-{MAX_SEED}, the context window non-negative")
    return SamplingParams(steps=steps, guidance=guidance, seed=seed, max_context=window or None)


def pick_seed(seed, randomize: bool) -> int:
    return random.randint(0, MAX_SEED) if randomize else int(seed)


def fresh_seed(other: int) -> int:
    """A random Seed other than `other`, so that a regenerated image is a new one."""
    seed = random.randint(0, MAX_SEED - 1)
    return seed + 1 if seed >= other else seed


def outputs(s: ImageSet, status: str) -> tuple:
    """The set strip, the downloads, the status and the state."""
    return strip(s), downloads(s), status, s


def step_progress(progress, n: int, steps: int) -> Callable[[], None]:
    """A denoising-step callback that shows which image and step are being made."""
    done = itertools.count(1)

    def tick() -> None:
        k = next(done)
        image, step = divmod(k - 1, steps)
        progress(k / (n * steps), desc=f"image {image + 1} of {n}: step {step + 1} of {steps}")

    return tick


def extend(pipe: M2MPipeline, s: ImageSet, keep: int, n: int, seed: int, progress,
           tail: tuple[NewImage, ...] = ()) -> Iterator[tuple]:  # fmt: skip
    """Make `n` images after the given ones and the first `keep` new ones (then `tail`), yielding after each."""
    made = list(s.new[:keep])
    context = [load_image(p) for p in s.given] + [load_image(x.path) for x in made]
    params = s.recipe.params.replace(seed=seed)
    stream = pipe.generate_iter(context, num_images=n, params=params, on_step=step_progress(progress, n, params.steps))
    for k, result in enumerate(stream, start=1):
        path = save_new(s.folder, result.image, result.index, seed)
        made.append(NewImage(path, result.index, seed, tuple(x.name for x in made)))
        s = with_new(s, (*made, *tail))
        yield outputs(s, f"{k} of {n} image(s) done")


def generate(models: Models, context_images, variant, task, num_images, steps, guidance, seed, context_window=0,
             state=None, progress=gr.Progress()):  # noqa: B008  # fmt: skip
    """A new set after the given context images: the `generate` endpoint of the UI and the API."""
    num_images, params = check_count(num_images), check_params(steps, guidance, seed, context_window)
    images = load_context(context_images)  # every file checked before any work
    pipe = models.get(variant, task)
    folder = state.folder if isinstance(state, ImageSet) else session_folder()
    recipe = Recipe(str(models.folder(variant, task)), variant, task, params)
    s = start_set(folder, paths(context_images), images, recipe)
    yield outputs(s, f"making {num_images} image(s)")  # the given images at once, marked as given
    yield from extend(pipe, s, 0, num_images, params.seed, progress)


def current_set(state) -> ImageSet:
    if not isinstance(state, ImageSet) or not state.new:
        raise gr.Error("generate a set first")
    return state


def continue_set(models: Models, state, num_images, progress=gr.Progress()):  # noqa: B008
    """Append more images to the same set, with the same settings and Seed."""
    s = current_set(state)
    r = s.recipe
    yield from extend(models.get(r.variant, r.task), s, len(s.new), check_count(num_images), r.params.seed, progress)


def regenerate(models: Models, state, k, and_after, progress=gr.Progress()):  # noqa: B008
    """Make new image k (1-based) again with a fresh Seed, and optionally the ones after it too."""
    s = current_set(state)
    k = int(k or 0)
    if not 1 <= k <= len(s.new):
        raise gr.Error(f"choose an image between 1 and {len(s.new)}")
    old = s.new[k - 1]
    seed = fresh_seed(old.seed)
    tail = () if and_after else s.new[k:]
    s = replace(s, earlier=(*s.earlier, old))  # kept while a later image was made after it
    n = len(s.new) - k + 1 if and_after else 1
    yield from extend(models.get(s.recipe.variant, s.recipe.task), s, k - 1, n, seed, progress, tail)
