"""Make the ready context sets of examples/ (deterministic; rerun to remake them).

    python examples/make_examples.py       # needs scikit-image for the real photographs

- shapes/          three drawn images sharing content and style
- mis-synth-*/     held-out MIS-synth sets (class-style combinations never seen in training)
- nvs-*/           the first three views (45° apart) of held-out synthetic objects: Novel View Synthesis
- procedure-*/     the first three steps of held-out synthetic procedures: Visual Procedure Generation
- real-photos/     photographs bundled with scikit-image (public domain), for zero-shot continuation
- zero-shot/<photo>/  four crops of each of eight scikit-image photographs: the context sets of
                   train/evaluation/zero_shot.py (palette and style consistency on real photos)
"""

import random
import shutil
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
SIZE = 128


def shapes(index: int) -> Image.Image:
    """A warm palette, round shapes on a dark background."""
    img = Image.new("RGB", (SIZE, SIZE), (24, 20, 48))
    draw = ImageDraw.Draw(img)
    for j in range(2 + index):
        x, y = (23 + 37 * j + 19 * index) % 96, (61 + 29 * j * (index + 1)) % 96
        r = 14 + 5 * ((index + j) % 3)
        draw.ellipse((x, y, x + 2 * r, y + 2 * r), fill=(240, 120 + 30 * j % 90, 40), outline=(255, 230, 160))
    return img


def write_set(name: str, images: list[Image.Image]) -> None:
    folder = HERE / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i, img in enumerate(images):
        ImageOps.fit(img.convert("RGB"), (SIZE, SIZE), Image.Resampling.LANCZOS).save(folder / f"{i}.png")


def main() -> None:
    from train.data import synth

    write_set("shapes", [shapes(i) for i in range(3)])
    seen = set()
    for index in range(100):  # the first held-out sets of three different classes
        record = synth.set_record("heldout", index, 4)
        if record["meta"]["labels"]["content"] in seen or len(seen) == 3:
            continue
        seen.add(record["meta"]["labels"]["content"])
        name = record["meta"]["caption"].replace(", ", "-").replace(" ", "")
        write_set(f"mis-synth-{name}", record["images"])
    task_examples()
    try:
        from skimage import data
    except ImportError:
        print("scikit-image is not installed: real-photos/ left as it is")
        return
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    write_set("real-photos", [Image.fromarray(p) for p in photos])
    shutil.rmtree(HERE / "zero-shot", ignore_errors=True)
    for name in ZERO_SHOT:
        write_set(f"zero-shot/{name}", crops(Image.fromarray(getattr(data, name)()).convert("RGB"), 4, seed=len(name)))


def task_examples() -> None:
    """Held-out objects and procedures of two families each, cut to their first three images."""
    from train.data import nvs, procedures

    for old in [*HERE.glob("nvs-*"), *HERE.glob("procedure-*")]:
        shutil.rmtree(old)
    for module, prefix, indices in ((nvs, "nvs", (0, 1)), (procedures, "procedure", (0, 1))):
        for index in indices:
            record = module.set_record("heldout", index)
            write_set(f"{prefix}-{record['meta']['caption'].removeprefix('a ')}", record["images"][:3])


ZERO_SHOT = (
    "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "camera",
)  # fmt: skip


def crops(photo: Image.Image, n: int, seed: int) -> list[Image.Image]:
    """n square crops of 50-80 % of the short side at random places: one photo's content and style, varied."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        side = int(min(photo.size) * rng.uniform(0.5, 0.8))
        x, y = rng.randint(0, photo.width - side), rng.randint(0, photo.height - side)
        out.append(photo.crop((x, y, x + side, y + side)))
    return out


if __name__ == "__main__":
    main()
