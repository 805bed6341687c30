"""Set metrics that need no labels: which set does each generated image belong to? (issue 13, point 2)

- **colour**: own-set retrieval by chroma histogram (colour without lightness) among `group` sets
  (16): a generated image counts when its histogram is closer to its own context's mean histogram
  than to any other set's context. Chance is 1 / group.
- **shape**: the same with the set embedder's colour-free embedding (`train/evaluation/set_embedder.py`).
- **similarity**: mean cosine of the embedding of a generated image to its own context's images.

The same scores of the true next images are the ceiling; of images made with no context, the floor.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from m2m.autoencoder import COLOUR_BASIS
from m2m.images import to_model_size, to_tensor
from train.evaluation.set_embedder import SetEmbedder

BINS = 32  # per opponent axis: 1,024 chroma bins. 16 left near-grey sets in one or two bins, so the truth
# scored 0.969 and its JPEG q95 copy 0.949 on open:heldout; 32 gives 0.992 / 0.984 and is stricter on every
# change anyone sees (hue +15 or +30 degrees, saturation halved or doubled): docs/open-sets.md section 8
DEFAULT_EMBEDDER = Path("checkpoints/set-embedder")
OPPONENT = COLOUR_BASIS[1:]  # red-green and yellow-blue: orthogonal to grey, so adding lightness moves neither


def colour_histograms(pixels: Tensor, bins: int = BINS) -> Tensor:
    """Images (N, 3, H, W) in [-1, 1] -> unit-norm square roots of their chroma histograms (N, bins²).

    Chroma is the colour without its lightness: the two opponent coordinates (red-green, yellow-blue)
    of each pixel. A grey image puts all its mass in the central bins whatever its lightness, so grey
    outputs score at chance; a joint RGB histogram gave them half the truth's score, by matching the
    context's lightness. Soft (bilinear) binning: a colour that moves a little moves its mass a little.
    """
    rgb = (pixels.detach().float().cpu().clamp(-1, 1) + 1) / 2  # (N, 3, H, W) in [0, 1]
    ab = torch.einsum("kc,nchw->nkhw", torch.tensor(OPPONENT), rgb).flatten(2)  # (N, 2, P)
    reach = torch.tensor(OPPONENT).clamp(min=0).sum(1)[None, :, None]  # (1, 2, 1): max |coordinate|
    u = (ab / reach + 1) / 2 * (bins - 1)  # (N, 2, P) in bin units
    lo = u.floor().clamp(0, bins - 2).long()
    frac = (u - lo).clamp(0, 1)
    hist = torch.zeros(rgb.shape[0], bins**2)
    for i in (0, 1):  # the 4 corners of the chroma's bin cell
        for j in (0, 1):
            weight = (frac[:, 0] if i else 1 - frac[:, 0]) * (frac[:, 1] if j else 1 - frac[:, 1])  # (N, P)
            hist.scatter_add_(1, (lo[:, 0] + i) * bins + lo[:, 1] + j, weight)
    return F.normalize(hist.sqrt(), dim=1)  # Hellinger: cosine of square roots


def recoloured(pixels: Tensor, degrees: float = 0.0, saturation: float = 1.0) -> Tensor:
    """Images (..., 3, H, W) in [-1, 1] with their chroma turned by `degrees` and scaled by `saturation`,
    their lightness kept (up to the clamp to [-1, 1]): a change of colour anyone sees, which the colour
    metric must catch."""
    basis, turn = torch.tensor(COLOUR_BASIS), torch.tensor(degrees).deg2rad()
    c, s = float(turn.cos()), float(turn.sin())
    change = torch.tensor([[1.0, 0, 0], [0, c, -s], [0, s, c]]) * torch.tensor([1.0, saturation, saturation])[:, None]
    rgb = basis.T @ change @ basis  # (3, 3): to (lightness, red-green, yellow-blue), turn and scale the chroma, back
    return torch.einsum("dc,...chw->...dhw", rgb, pixels).clamp(-1, 1)


def as_jpeg(image: Image.Image, quality: int = 95) -> Image.Image:
    """The image saved as a JPEG of this quality and read back: a change no one sees, the metrics' noise floor."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(buffer).convert("RGB")


def own_set_retrieval(generated: Tensor, context: Tensor, group: int = 16) -> float:
    """Share of generated images (S, G, D) nearest to their own set's context mean (S, C, D), `group` sets at a time."""
    s = generated.shape[0]
    if s % group:
        raise ValueError(f"own-set retrieval scores sets {group} at a time: got {s} sets, not a multiple of {group}")
    hits = []
    for start in range(0, s - group + 1, group):
        gen, ctx = generated[start : start + group], context[start : start + group]
        protos = F.normalize(ctx.mean(1), dim=1)  # (group, D)
        nearest = (gen @ protos.T).argmax(-1)  # (group, G)
        hits.append((nearest == torch.arange(group, device=gen.device)[:, None]).float().cpu())
    if not hits:
        raise ValueError(f"own-set retrieval needs at least {group} sets, got {s}")
    return float(torch.cat(hits).mean())


class SetMetrics:
    """Colour and shape retrieval, and similarity, of generated images against their sets' contexts."""

    def __init__(self, embedder: SetEmbedder, group: int = 16):
        self.embedder, self.group = embedder, group

    @classmethod
    def load(cls, path: str | Path = DEFAULT_EMBEDDER, group: int = 16) -> SetMetrics:
        if not Path(path).exists():
            raise FileNotFoundError(
                f"no set embedder at {path}: train one with python -m train.training.set_embedder --out {path}"
            )
        return cls(SetEmbedder.from_pretrained(str(path)).eval(), group)

    def features(self, images: list[list[Image.Image]]) -> tuple[Tensor, Tensor]:
        """Per set and image: colour histograms (S, n, BINS²) and embeddings (S, n, D)."""
        s, n = len(images), len(images[0])
        pixels = to_tensor([to_model_size(img, 128) for row in images for img in row])  # (S*n, 3, H, W)
        return colour_histograms(pixels).unflatten(0, (s, n)), self.embedder.embed(pixels).unflatten(0, (s, n))

    def __call__(self, contexts: list[list[Image.Image]], outputs: list[list[Image.Image]]) -> dict:
        """Retrievals and similarity over all outputs, and both retrievals at each output position (drift)."""
        (ch, ce), (gh, ge) = self.features(contexts), self.features(outputs)
        positions = range(gh.shape[1])
        return {
            "colour_retrieval": own_set_retrieval(gh, ch, self.group),
            "shape_retrieval": own_set_retrieval(ge, ce, self.group),
            "similarity": float(torch.einsum("sgd,scd->sgc", ge, ce).mean()),
            "drift_colour": [round(own_set_retrieval(gh[:, i : i + 1], ch, self.group), 4) for i in positions],
            "drift_shape": [round(own_set_retrieval(ge[:, i : i + 1], ce, self.group), 4) for i in positions],
        }
