"""Draw the small example context sets shipped in examples/ (deterministic; rerun to remake them)."""

from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).parent


def shapes(index: int) -> Image.Image:
    """A warm palette, round shapes on a dark background: a set that shares content and style."""
    img = Image.new("RGB", (128, 128), (24, 20, 48))
    draw = ImageDraw.Draw(img)
    for j in range(2 + index):
        x, y = (23 + 37 * j + 19 * index) % 96, (61 + 29 * j * (index + 1)) % 96
        r = 14 + 5 * ((index + j) % 3)
        draw.ellipse((x, y, x + 2 * r, y + 2 * r), fill=(240, 120 + 30 * j % 90, 40), outline=(255, 230, 160))
    return img


if __name__ == "__main__":
    (HERE / "shapes").mkdir(exist_ok=True)
    for i in range(3):
        shapes(i).save(HERE / "shapes" / f"{i}.png")
