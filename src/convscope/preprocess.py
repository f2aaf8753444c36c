"""The exact preprocessing a model was trained with: resize, crop, normalise, and its inverse."""

from __future__ import annotations

import math
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

    ``mode="center_crop"`` resizes the shorter side to ``resize`` px (``None``: to the shorter
    side of ``size``; a pair ``(h, w)``: keeping the aspect ratio, to the smallest size that
    covers it, as timm's ``ResizeKeepRatio``) and crops ``size`` from the centre
    (torchvision/timm evaluation); ``mode="squash"`` resizes the whole image to ``resize``
    (``None``: to ``size``; an int: to a square) without keeping the aspect ratio and then crops
    ``size`` from the centre (timm's ``crop_mode="squash"``).
    """

    size: tuple[int, int] = (224, 224)
    resize: int | tuple[int, int] | None = 256
    mode: Literal["center_crop", "squash"] = "center_crop"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if isinstance(self.size, int):
            object.__setattr__(self, "size", (self.size, self.size))
        if isinstance(self.resize, list):
            object.__setattr__(self, "resize", tuple(self.resize))
        if self.interpolation not in _INTERP:
            raise ValueError(f"interpolation must be one of {sorted(_INTERP)}")

    @classmethod
    def from_timm(cls, config: dict) -> Preprocess:
        """From ``timm.data.resolve_data_config`` output, as ``timm.data.create_transform``
        builds its evaluation transform (``crop_mode`` ``center`` or ``squash``; ``border``, used
        by no convolutional network, is approximated by ``center``)."""
        _, h, w = config["input_size"]
        crop_pct = config.get("crop_pct") or 0.875  # timm's DEFAULT_CROP_PCT when unset
        interp = config.get("interpolation", "bilinear")
        scale = (math.floor(h / crop_pct), math.floor(w / crop_pct))
        squash = config.get("crop_mode") == "squash"
        return cls(
            size=(h, w),
            resize=scale if squash or scale[0] != scale[1] else scale[0],
            mode="squash" if squash else "center_crop",
            mean=tuple(config["mean"]),
            std=tuple(config["std"]),
            interpolation=interp if interp in _INTERP else "bilinear",
        )

    def resized_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        """(height, width) of an image of size ``(width, height)`` after the resize, before the crop."""
        ow, oh = original_size
        h, w = self.size
        if self.mode == "squash":
            if self.resize is None:
                return h, w
            return self.resize if isinstance(self.resize, tuple) else (self.resize, self.resize)
        if isinstance(self.resize, tuple):  # timm's ResizeKeepRatio: cover (h, w), keep the ratio
            ratio = min(oh / self.resize[0], ow / self.resize[1])
            return round(oh / ratio), round(ow / ratio)
        short = self.resize or min(self.size)
        if ow <= oh:  # torchvision keeps the short side exact and rounds the long one down
            return int(short * oh / ow), short
        return short, int(short * ow / oh)

    def resize_only(self, img: Image.Image | torch.Tensor) -> Image.Image | torch.Tensor:
        """The geometric part alone (what the model sees, before normalisation), as a PIL image
        (or a uint8 tensor (..., 3, H, W) for a tensor)."""
        _, oh, ow = TF.get_dimensions(img)
        rh, rw = self.resized_size((ow, oh))
        if (rh, rw) != (oh, ow):
            img = TF.resize(img, [rh, rw], interpolation=_INTERP[self.interpolation], antialias=True)
        if (rh, rw) != tuple(self.size):
            img = TF.center_crop(img, list(self.size))
        return img

    def input_to_original(
        self, box: tuple[float, float, float, float], original_size: tuple[int, int]
    ) -> tuple[float, float, float, float]:
        """Map a box given by pixel *edges* ``(top, left, bottom, right)`` in model-input
        coordinates to the same edges in the original image of size ``(width, height)``."""
        ow, oh = original_size
        h, w = self.size
        top, left, bottom, right = box
        rh, rw = self.resized_size(original_size)
        oy, ox = int(round((rh - h) / 2.0)), int(round((rw - w) / 2.0))  # as TF.center_crop
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
