"""The exact preprocessing a model was trained with: resize, crop, normalise, and its inverse."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERP = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


@dataclass(frozen=True)
class Preprocess:
    """PIL image -> normalised float tensor (3, H, W).

    ``mode="center_crop"`` resizes the shorter side to ``resize`` px and crops ``size`` from the
    centre (torchvision/timm evaluation); ``mode="squash"`` resizes the whole image to ``size``
    without keeping the aspect ratio.
    """

    size: tuple[int, int] = (224, 224)
    resize: int | None = 256
    mode: Literal["center_crop", "squash"] = "center_crop"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if isinstance(self.size, int):
            object.__setattr__(self, "size", (self.size, self.size))
        if self.interpolation not in _INTERP:
            raise ValueError(f"interpolation must be one of {sorted(_INTERP)}")

    @classmethod
    def from_timm(cls, config: dict) -> Preprocess:
        """From ``timm.data.resolve_data_config`` output."""
        _, h, w = config["input_size"]
        crop_pct = config.get("crop_pct", 0.875) or 1.0
        interp = config.get("interpolation", "bilinear")
        return cls(
            size=(h, w),
            resize=int(round(min(h, w) / crop_pct)),
            mode="center_crop",
            mean=tuple(config["mean"]),
            std=tuple(config["std"]),
            interpolation=interp if interp in _INTERP else "bilinear",
        )

    def resize_only(self, img: Image.Image) -> Image.Image:
        """The geometric part alone (what the model sees, before normalisation), as a PIL image."""
        interp = _INTERP[self.interpolation]
        if self.mode == "squash":
            return TF.resize(img, list(self.size), interpolation=interp, antialias=True)
        img = TF.resize(img, self.resize or min(self.size), interpolation=interp, antialias=True)
        return TF.center_crop(img, list(self.size))

    def input_to_original(self, box: tuple[float, float, float, float],
                          original_size: tuple[int, int]) -> tuple[float, float, float, float]:
        """Map a box given by pixel *edges* ``(top, left, bottom, right)`` in model-input
        coordinates to the same edges in the original image of size ``(width, height)``."""
        ow, oh = original_size
        h, w = self.size
        top, left, bottom, right = box
        if self.mode == "squash":
            sy, sx = oh / h, ow / w
            return top * sy, left * sx, bottom * sy, right * sx
        short = self.resize or min(self.size)
        if ow <= oh:  # torchvision keeps the short side exact and rounds the long one down
            rw, rh = short, int(short * oh / ow)
        else:
            rh, rw = short, int(short * ow / oh)
        oy, ox = int(round((rh - h) / 2.0)), int(round((rw - w) / 2.0))
        sy, sx = oh / rh, ow / rw
        return (top + oy) * sy, (left + ox) * sx, (bottom + oy) * sy, (right + ox) * sx

    def __call__(self, img: Image.Image | np.ndarray) -> torch.Tensor:
        if isinstance(img, np.ndarray):
            img = Image.fromarray(img)
        if img.mode != "RGB":
            img = img.convert("RGB")
        return self.normalize(TF.pil_to_tensor(self.resize_only(img)).float() / 255.0)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] RGB tensor (..., 3, H, W) -> model input."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Model input (..., 3, H, W) -> [0, 1] RGB (not clipped)."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return x * std + mean
