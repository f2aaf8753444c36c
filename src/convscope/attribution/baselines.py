"""Baseline "methods" that ignore the model: the yardsticks an evaluation compares real
attribution methods with. ``edge`` is the image's Sobel gradient magnitude (the edge detector
of Adebayo et al.'s sanity checks, 2018), ``random`` seeded uniform noise. A faithful method
should beat both on the faithfulness metrics, and unlike them fail to stay the same when the
model's weights are randomised."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from convscope.attribution.base import Method, register

# scikit-image's Sobel kernels: smoothing [1, 2, 1] / 4 across, derivative [1, 0, -1] along
_SMOOTH = torch.tensor([1.0, 2.0, 1.0]) / 4
_DERIV = torch.tensor([1.0, 0.0, -1.0])


def sobel(pixels: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of images (N, C, H, W) per channel, as
    ``skimage.filters.sobel`` of each channel: ``sqrt((gy**2 + gx**2) / 2)`` with its kernels
    and its "reflect" border (for a 3 x 3 kernel the edge pixel repeated)."""
    n, c, h, w = pixels.shape
    p = pixels.double().reshape(n * c, 1, h, w)
    p = F.pad(p, (1, 1, 1, 1), mode="replicate")
    ky = (_DERIV[:, None] * _SMOOTH[None, :]).to(p).view(1, 1, 3, 3)
    kx = (_SMOOTH[:, None] * _DERIV[None, :]).to(p).view(1, 1, 3, 3)
    gy = F.conv2d(p, ky)
    gx = F.conv2d(p, kx)
    return ((gy**2 + gx**2) / 2).sqrt().view(n, c, h, w)


@register
class Edge(Method):
    """Sobel edge magnitude of the image as the model saw it (the input denormalised to
    [0, 1] pixels, see :func:`sobel`), the maximum over colour channels. Ignores the model and
    the target: a map that passes for an explanation but cannot be one."""

    name = "edge"
    reads_model = False

    def attribute(self, x, target):
        pixels = self.subject.preprocess.denormalize(x.detach()).clamp(0, 1)
        return sobel(pixels).amax(dim=1).to(x.dtype), None


@register
class Random(Method):
    """Uniform noise in [0, 1) per pixel from a generator seeded with ``seed=0`` (drawn on the
    CPU, so the same seed gives the same maps on every device). Ignores the model."""

    name = "random"
    takes = ("seed",)
    reads_model = False

    def attribute(self, x, target):
        g = torch.Generator().manual_seed(int(self.options.get("seed", 0)))
        n, _, h, w = x.shape
        return torch.rand((n, h, w), generator=g).to(x.device, x.dtype), None


__all__ = ["Edge", "Random", "sobel"]
