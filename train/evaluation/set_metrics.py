"""Set metrics that need no labels: which set does each generated image belong to? (issue 13, point 2)

- **colour**: own-set retrieval by colour histogram among `group` sets (16): a generated image
  counts when its histogram is closer to its own context's mean histogram than to any other
  set's context. Chance is 1 / group.
- **shape**: the same with the set embedder's colour-free embedding (`train/evaluation/set_embedder.py`).
- **similarity**: mean cosine of the embedding of a generated image to its own context's images.

The same scores of the true next images are the ceiling; of images made with no context, the floor.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from m2m.images import to_model_size, to_tensor
from train.evaluation.set_embedder import SetEmbedder

BINS = 8  # per channel: 512 colour bins
DEFAULT_EMBEDDER = Path("checkpoints/set-embedder")


def colour_histograms(pixels: Tensor) -> Tensor:
    """Images (N, 3, H, W) in [-1, 1] -> unit-norm square roots of their joint RGB histograms (N, BINS³).

    Soft (trilinear) binning: each pixel is shared between the 8 bin centres around its colour, so a
    colour that moves a little moves its mass a little, instead of jumping to another bin.
    """
    n = pixels.shape[0]
    x = ((pixels.detach().float().cpu().clamp(-1, 1) + 1) / 2 * (BINS - 1)).flatten(2)  # (N, 3, P) in bin units
    lo = x.floor().clamp(max=BINS - 2).long()
    frac = x - lo  # (N, 3, P)
    hist = torch.zeros(n, BINS**3)
    for corner in range(8):  # the 8 corners of the colour's bin cell
        bits = [(corner >> c) & 1 for c in range(3)]
        weight = torch.ones_like(frac[:, 0])
        for c, bit in enumerate(bits):
            weight = weight * (frac[:, c] if bit else 1 - frac[:, c])
        idx = ((lo[:, 0] + bits[0]) * BINS + lo[:, 1] + bits[1]) * BINS + lo[:, 2] + bits[2]  # (N, P)
        hist.scatter_add_(1, idx, weight)
    return F.normalize(hist.sqrt(), dim=1)  # Hellinger: cosine of square roots


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
        """Per set and image: colour histograms (S, n, BINS³) and embeddings (S, n, D)."""
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
