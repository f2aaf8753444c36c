"""Where a layer's output holds the image grid, and how to turn it into a (B, C, H, W) map.

Convolutions give channels-first maps (B, C, H, W). ConvNeXt's blocks, Swin and MaxViT compute in
channels-last (B, H, W, C); vision transformers hold a token sequence (B, N, C) whose first
tokens (class, distillation, register tokens) have no position and whose remaining tokens are
the patch grid in row-major order. The probe pass of :mod:`convscope.trace` follows the grid's
axes through every operation and gives each layer a :class:`Layout`; the recorder turns every
output with a layout into a (B, C, H, W) map, so that every verb sees maps.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from convscope.errors import UserInputError

KINDS = ("channels_first", "channels_last", "tokens")


@dataclass(frozen=True)
class Layout:
    """How a (batched) tensor holds a ``grid`` (H, W) of positions.

    ``kind``: ``"channels_first"`` (B, C, H, W), ``"channels_last"`` (B, H, W, C) or ``"tokens"``
    (B, N, C) with ``prefix`` position-less tokens first and ``H * W`` patch tokens after them.
    """

    kind: str
    grid: tuple[int, int]
    prefix: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise UserInputError(f"unknown layout {self.kind!r}; use one of {', '.join(KINDS)}")

    @property
    def ndim(self) -> int:
        """Dimensions of a batched tensor in this layout."""
        return 3 if self.kind == "tokens" else 4

    def __str__(self) -> str:
        if self.kind == "tokens":
            h, w = self.grid
            return f"tokens {h}x{w}" + (f" +{self.prefix}" if self.prefix else "")
        return {"channels_first": "NCHW", "channels_last": "NHWC"}[self.kind]

    def fits(self, t: torch.Tensor) -> bool:
        """Whether ``t`` has this layout's shape (any batch size and channel count)."""
        if t.dim() != self.ndim:
            return False
        h, w = self.grid
        if self.kind == "channels_first":
            return tuple(t.shape[2:]) == (h, w)
        if self.kind == "channels_last":
            return tuple(t.shape[1:3]) == (h, w)
        return t.shape[1] == self.prefix + h * w

    def adapt(self, t: torch.Tensor, image_hw: tuple[int, int] | None = None) -> Layout | None:
        """This layout for ``t`` at another input size (ConvNeXt at 128 px after a 224 px
        probe): the same kind and prefix, the grid read from ``t`` (tokens: the factorisation of
        the patch count closest to the aspect ratio of ``image_hw``, the model input, else of
        this grid); None if ``t`` cannot have it."""
        if self.fits(t):
            return self
        if t.dim() != self.ndim:
            return None
        if self.kind == "channels_first":
            return Layout(self.kind, tuple(t.shape[2:]), 0)
        if self.kind == "channels_last":
            return Layout(self.kind, tuple(t.shape[1:3]), 0)
        n = t.shape[1] - self.prefix
        if n <= 0:
            return None
        h0, w0 = image_hw if image_hw is not None else self.grid
        h = max(1, round((n * h0 / w0) ** 0.5))
        for cand in sorted(range(1, n + 1), key=lambda c: abs(c - h)):
            if n % cand == 0:
                return Layout("tokens", (cand, n // cand), self.prefix)
        return None

    def to_map(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` in this layout -> a (B, C, H, W) view or copy (position-less tokens dropped)."""
        if self.kind == "channels_first":
            return t
        if self.kind == "channels_last":
            return t.permute(0, 3, 1, 2)
        h, w = self.grid
        patches = t[:, self.prefix :]
        return patches.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)

    def from_map(self, m: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A (B, C, H, W) map back in this layout; position-less tokens are taken from ``like``
        (the original output), so that an edit of the map leaves them as they were."""
        if self.kind == "channels_first":
            return m
        if self.kind == "channels_last":
            return m.permute(0, 2, 3, 1)
        patches = m.flatten(2).transpose(1, 2)
        return torch.cat([like[:, : self.prefix], patches.to(like.dtype)], dim=1) if self.prefix else patches


def parse_layout(value, grid: tuple[int, int] | None = None) -> Layout | None:
    """A layout from what a user writes: a :class:`Layout`, ``"NCHW"``/``"channels_first"``,
    ``"NHWC"``/``"channels_last"``, ``"tokens"`` or ``"tokens+N"`` (N prefix tokens), or
    ``None``/``"none"`` (no grid: the output is recorded as it is). ``grid`` (H, W) is needed by
    the string forms; :meth:`Layout.adapt` fits it to a tensor afterwards."""
    if value is None or isinstance(value, Layout):
        return value
    text = str(value).strip().lower()
    if text in ("none", "raw"):
        return None
    prefix = 0
    if text.startswith("tokens+"):
        text, _, n = text.partition("+")
        if not n.isdigit():
            raise UserInputError(f"bad layout {value!r}: write tokens+N with N the prefix tokens")
        prefix = int(n)
    kind = {"nchw": "channels_first", "nhwc": "channels_last"}.get(text, text)
    if kind not in KINDS:
        raise UserInputError(f"unknown layout {value!r}; use NCHW, NHWC, tokens, tokens+N or none")
    if grid is None:
        raise UserInputError(f"layout {value!r}: the layer has no grid to lay out; give a Layout")
    return Layout(kind, tuple(grid), prefix)


def override(layouts: Mapping[str, object] | None, module: str):
    """The user's layout for ``module`` from ``{glob: layout}`` (the first glob that matches,
    in order), or the string ``"detect"`` when none does."""
    for pattern, value in (layouts or {}).items():
        if fnmatch.fnmatchcase(module, pattern):
            return value
    return "detect"
