"""How a vision transformer's token sequence maps onto the image grid."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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

    def to_map(self, t: torch.Tensor) -> torch.Tensor:
        """(B, N, C) tokens -> (B, C, height, width); other shapes are returned unchanged."""
        if t.dim() != 3:
            return t
        n = self.height * self.width
        if t.shape[1] == n + self.prefix:
            t = t[:, self.prefix :]
        elif t.shape[1] != n:
            return t
        return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], self.height, self.width)
