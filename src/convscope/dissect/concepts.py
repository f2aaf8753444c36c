"""What concept data hands to a dissection: concepts and one image's segmentations."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Concept:
    number: int
    name: str
    category: str


@dataclass
class ConceptItem:
    """One image of a concept dataset: ``x`` (3, H, W) model input (None if unreadable, with
    ``error``), ``planes`` (L, sh, sw) int64 pixel labels (0 = none), ``image_level`` labels
    covering the whole image, and the ``annotated`` categories of this image."""

    index: int
    x: torch.Tensor | None
    planes: torch.Tensor
    image_level: list[int]
    annotated: list[str]
    error: str | None = None
