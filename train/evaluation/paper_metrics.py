"""The paper's table: FID, IS (torchmetrics, Inception features), text-image and image-image CLIP scores.

At full scale the Inception network comes from torch-fidelity (`pip install torch-fidelity`) and CLIP
from the hub (`PaperMetrics.from_pretrained`); both need their weights, which cannot be had offline.
Any feature module and any `transformers.CLIPModel` can be plugged in, which is how the tests run
this code path with random weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore

from m2m.images import to_tensor

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_unit(images: list[Image.Image]) -> torch.Tensor:
    """PIL images of one size -> (N, 3, H, W) in [0, 1]."""
    return (to_tensor([img.convert("RGB") for img in images]) + 1) / 2


def _embeds(out) -> torch.Tensor:
    """CLIP's projected embeddings: transformers 5 returns them as the output's pooler_output."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class PaperMetrics:
    def __init__(
        self, clip, tokenizer, fid_feature: int | nn.Module = 2048, is_feature: str | nn.Module = "logits_unbiased"
    ):
        self.clip, self.tokenizer = clip.eval(), tokenizer
        self.fid_feature, self.is_feature = fid_feature, is_feature

    @classmethod
    def from_pretrained(cls, clip_id: str = "openai/clip-vit-large-patch14") -> PaperMetrics:
        from transformers import CLIPModel, CLIPTokenizer

        return cls(CLIPModel.from_pretrained(clip_id), CLIPTokenizer.from_pretrained(clip_id))

    @torch.no_grad()
    def image_embeds(self, images: list[Image.Image]) -> torch.Tensor:
        size = self.clip.config.vision_config.image_size
        x = F.interpolate(to_unit(images), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        x = (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
        return F.normalize(_embeds(self.clip.get_image_features(pixel_values=x)), dim=-1)  # (N, D)

    @torch.no_grad()
    def text_embeds(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        return F.normalize(_embeds(self.clip.get_text_features(**tokens)), dim=-1)  # (N, D)

    def __call__(self, contexts: list[list], outputs: list[list], captions: list[str], reference: list) -> dict:
        """contexts/outputs: per set, lists of PIL images; captions: per set; reference: real images."""
        fake = [img for out in outputs for img in out]
        fid = FrechetInceptionDistance(feature=self.fid_feature, normalize=True)
        fid.update(to_unit(reference), real=True)
        fid.update(to_unit(fake), real=False)
        inception = InceptionScore(feature=self.is_feature, normalize=True, splits=min(10, len(fake)))
        inception.update(to_unit(fake))
        text_scores, image_scores = [], []
        for ctx, out, caption in zip(contexts, outputs, captions, strict=True):
            g = self.image_embeds(out)
            if caption:
                text_scores.append(100 * (g @ self.text_embeds([caption]).T).mean())
            image_scores.append(100 * (g @ self.image_embeds(ctx).T).mean())
        return {
            "fid": float(fid.compute()),
            "inception_score": float(inception.compute()[0]),
            "clip_text": float(torch.stack(text_scores).mean()) if text_scores else float("nan"),
            "clip_image": float(torch.stack(image_scores).mean()),
        }
