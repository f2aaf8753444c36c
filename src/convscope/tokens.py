"""How a vision transformer's token sequence maps onto the image grid."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from convscope.layout import Layout


@dataclass(frozen=True)
class TokenLayout:
    """How a transformer's token sequence (B, N, C) maps onto an image grid.

    Rule: the first ``prefix`` tokens (class, distillation, register tokens) are dropped and the
    remaining ``height * width`` patch tokens, in row-major order, become a map (B, C, H, W).
    A sequence of exactly ``height * width`` tokens (no prefix yet) is reshaped the same way.
    """

    prefix: int
    height: int
    width: int

    def layout_for(self, t: torch.Tensor) -> Layout | None:
        """The :class:`~convscope.layout.Layout` of ``t`` by this rule: (B, prefix + H*W, C) or
        (B, H*W, C) tokens; None for any other shape."""
        if t.dim() != 3:
            return None
        grid = (self.height, self.width)
        n = self.height * self.width
        if t.shape[1] == n + self.prefix:
            return Layout("tokens", grid, self.prefix)
        if t.shape[1] == n:
            return Layout("tokens", grid, 0)
        return None

    def to_map(self, t: torch.Tensor) -> torch.Tensor:
        """(B, N, C) tokens -> (B, C, height, width); other shapes are returned unchanged."""
        layout = self.layout_for(t)
        return layout.to_map(t) if layout is not None else t
