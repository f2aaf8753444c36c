"""Image parametrisations: what the optimiser changes, and how that becomes an RGB image.

Each builder returns ``(params, image_fn)``: the optimiser sees ``params``, objectives see
``image_fn()``, a batch (N, 3, H, W) in [0, 1].

- ``pixel``: one free value per pixel and channel, squashed by a sigmoid;
- ``fft``: the image's 2-D Fourier spectrum, each frequency scaled by 1 / f^decay so that the
  optimiser works in a whitened space where natural-image (1/f) structure is as easy to reach as
  noise (Olah et al. 2017, "Feature Visualization", the Lucid library's default);
- ``decorrelate=True``: channels live in a decorrelated colour basis (the square root of
  ImageNet's RGB covariance) and are mapped back to RGB before the sigmoid.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

# Square root of the RGB colour covariance of ImageNet images (from its eigen-decomposition),
# as used by Lucid; columns are scaled so that the largest has norm 1 below.
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOR_SQRT = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()

ImageFn = Callable[[], torch.Tensor]


def _decorrelated(t: torch.Tensor) -> torch.Tensor:
    m = _COLOR_SQRT.to(t)
    return torch.einsum("nchw,dc->ndhw", t, m)


def pixel_image(
    shape, sd: float = 0.01, decorrelate: bool = True, generator: torch.Generator | None = None, device=None
):
    """Free pixels (logits of the sigmoid), initialised near grey."""
    p = (torch.randn(shape, generator=generator) * sd).to(device).requires_grad_(True)

    def image_fn() -> torch.Tensor:
        t = _decorrelated(p) if decorrelate else p
        return torch.sigmoid(t)

    return [p], image_fn


def _freqs(h: int, w: int) -> torch.Tensor:
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


def fft_image(
    shape,
    sd: float = 0.01,
    decay: float = 1.0,
    decorrelate: bool = True,
    generator: torch.Generator | None = None,
    device=None,
):
    """Spectrum parametrisation with 1 / f^decay scaling (whitened frequencies)."""
    n, c, h, w = shape
    freqs = _freqs(h, w)
    spec = (torch.randn((n, c, *freqs.shape, 2), generator=generator) * sd).to(device)
    spec.requires_grad_(True)
    scale = (1.0 / torch.clamp(freqs, min=1.0 / max(h, w)) ** decay).to(device)
    # Unit-variance pixels for unit-variance spectrum entries (orthonormal inverse FFT).
    scale = scale * math.sqrt(h * w) / scale.square().sum().sqrt()

    def image_fn() -> torch.Tensor:
        z = torch.view_as_complex(spec) * scale
        t = torch.fft.irfft2(z, s=(h, w), norm="ortho")
        t = _decorrelated(t) if decorrelate else t
        return torch.sigmoid(t)

    return [spec], image_fn


def from_image(image: torch.Tensor, decorrelate: bool = False):
    """Pixel parametrisation that starts at ``image`` (N, 3, H, W) in [0, 1] (for inversion
    restarts from noise, pass noise)."""
    eps = 1e-4
    logits = torch.logit(image.clamp(eps, 1 - eps))
    if decorrelate:
        logits = torch.einsum("nchw,dc->ndhw", logits, torch.linalg.inv(_COLOR_SQRT).to(logits))
    p = logits.detach().clone().requires_grad_(True)

    def image_fn() -> torch.Tensor:
        return torch.sigmoid(_decorrelated(p) if decorrelate else p)

    return [p], image_fn


PARAMS = ("fft", "pixel", "maco")


def check_param(kind: str) -> str:
    """``kind`` when it names a parametrisation of :func:`make_param`, else a one-line
    :class:`~convscope.errors.UserInputError`."""
    if kind not in PARAMS:
        from convscope.errors import UserInputError

        raise UserInputError(f"unknown parametrisation {kind!r}: use 'fft', 'pixel' or 'maco'")
    return kind


def make_param(kind: str, shape, generator=None, device=None, decorrelate: bool = True, **kw):
    """``kind`` is ``"fft"``, ``"pixel"`` or ``"maco"`` (:func:`convscope.synthesis.maco.maco_image`:
    phase only, fixed natural-image magnitude, always decorrelated; takes ``keys`` and ``seed``
    instead of ``generator``)."""
    if kind == "maco":
        from convscope.synthesis.maco import maco_image

        return maco_image(shape, device=device, **kw)
    if kind == "fft":
        return fft_image(shape, decorrelate=decorrelate, generator=generator, device=device, **kw)
    if kind == "pixel":
        return pixel_image(shape, decorrelate=decorrelate, generator=generator, device=device, **kw)
    from convscope.errors import UserInputError

    raise UserInputError(f"unknown parametrisation {kind!r}: use 'fft', 'pixel' or 'maco'")
