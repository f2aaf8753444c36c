"""MaCo (Fel et al. 2023, "Unlocking Feature Visualization for Deeper Networks with MAgnitude
Constrained Optimization"): the optimiser changes only the *phase* of the image's Fourier
spectrum; its magnitude is fixed to that of natural images. The image cannot drift into the
high-frequency patterns that deep layers and ViTs reward under Lucid's free spectrum, since its
energy per frequency is always a photo's. The attribution of the objective to the image,
accumulated over the optimisation (sum over steps of |d loss / d image|), is returned as a
transparency map: where the visualisation matters.

The maths follow the reference implementation, the ``horama`` package (``maco_fv``):

    image = sigmoid(M . std(irfft2(|F| * exp(i * std(phase)))))

with ``std`` standardising each image to zero mean and unit variance over all its values and
``M`` the square root of ImageNet's colour covariance (the same matrix as Lucid's). Differences
(the docs list them): the magnitude ``|F|`` is derived from the photos bundled with
scikit-image (horama downloads an ImageNet spectrum), the image is in [0, 1] and normalised by
the model's own preprocessing (horama: sigmoid scaled to (-2.5, 2.5)), and a batch of images
optimises many units at once, with one crop draw per step shared by the batch.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

# horama's colour matrix (common.get_color_correlation_svd_sqrt); its transpose is Lucid's square
# root of the colour covariance with columns scaled to max norm 1 (synthesis.param), to 1e-6.
HORAMA_COLOR = torch.tensor(
    [
        [0.56282854, 0.58447580, 0.58447580],
        [0.19482528, 0.00000000, -0.19482528],
        [0.04329450, -0.10823626, 0.06494176],
    ]
)

# Colour photos of natural scenes shipped inside scikit-image (no download).
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def _standardize(t: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(1, t.dim()))
    t = t - t.mean(dim=dims, keepdim=True)
    return t / (t.std(dim=dims, keepdim=True) + 1e-4)


@lru_cache(maxsize=8)
def _spectrum(h: int, w: int) -> torch.Tensor:
    from skimage import data
    from skimage.transform import resize

    inv = torch.linalg.inv(HORAMA_COLOR).double()
    mags = []
    for name in PHOTOS:
        img = getattr(data, name)()[..., :3].astype(np.float64) / 255.0
        ih, iw = img.shape[:2]
        # largest centred crop with the canvas's aspect ratio, resized to the canvas
        ch, cw = min(ih, round(iw * h / w)), min(iw, round(ih * w / h))
        y0, x0 = (ih - ch) // 2, (iw - cw) // 2
        img = resize(img[y0 : y0 + ch, x0 : x0 + cw], (h, w), anti_aliasing=True)
        t = torch.from_numpy(img - 0.5)  # grey-centred, as the sigmoid's 0 is grey
        # into the decorrelated colour space the phase lives in (pixels @ M = rgb)
        t = (t.reshape(-1, 3) @ inv).reshape(h, w, 3).permute(2, 0, 1)
        for v in (t, t.flip(-1)):
            mags.append(torch.fft.rfft2(v).abs())
    return torch.stack(mags).mean(0).float()


def natural_spectrum(h: int, w: int) -> torch.Tensor:
    """The fixed MaCo magnitude (3, h, w // 2 + 1): the mean |rfft2| of the scikit-image colour
    photos (:data:`PHOTOS`, and their mirror images), grey-centred and in the decorrelated
    colour basis, each centre-cropped and resized to (h, w). Only its shape matters: the image
    is standardised after the inverse FFT, so any positive scale gives the same image."""
    return _spectrum(int(h), int(w)).clone()


def image_from_phase(
    phase: torch.Tensor, magnitude: torch.Tensor, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """RGB images (N, 3, H, W) in [0, 1] from phases (N, 3, H, W // 2 + 1) and a magnitude of
    the same spectral shape (broadcast over N); ``size`` (H, W) (default: W even)."""
    p = _standardize(phase)
    spec = torch.complex(torch.cos(p) * magnitude, torch.sin(p) * magnitude)
    t = _standardize(torch.fft.irfft2(spec, s=size))
    t = torch.einsum("nchw,cd->ndhw", t, HORAMA_COLOR.to(t))
    return torch.sigmoid(t)


def phase_seed(seed: int, key: str) -> int:
    """The seed of one image's initial phase: a stable hash of the run's seed and the image's
    key (its label), so a unit gets the same start in whatever batch it is optimised."""
    return zlib.crc32(f"{seed}:{key}".encode())


def maco_image(
    shape,
    *,
    phase: torch.Tensor | None = None,
    magnitude: torch.Tensor | None = None,
    keys: Sequence[str] | None = None,
    seed: int = 0,
    sd: float = 1.0,
    device=None,
):
    """MaCo parametrisation of ``shape`` (N, 3, H, W): ``(params, image_fn)`` with ``params``
    the phase (N, 3, H, W // 2 + 1), initialised N(0, ``sd``) from :func:`phase_seed` of
    ``seed`` and ``keys[i]`` (default: the image index), or given as ``phase``; the magnitude is
    ``magnitude`` or :func:`natural_spectrum` and never changes. ``image_fn.magnitude`` holds it."""
    n, c, h, w = shape
    if c != 3:
        from convscope.errors import UserInputError

        raise UserInputError(f"MaCo makes RGB images; got {c} channels")
    spec_shape = (3, h, w // 2 + 1)
    if phase is None:
        keys = [str(i) for i in range(n)] if keys is None else list(keys)
        phase = torch.stack(
            [
                torch.randn(spec_shape, generator=torch.Generator().manual_seed(phase_seed(seed, k))) * sd
                for k in keys
            ]
        )
    mag = natural_spectrum(h, w) if magnitude is None else magnitude.detach()
    mag = mag.to(device)
    p = phase.detach().clone().to(device).requires_grad_(True)

    def image_fn() -> torch.Tensor:
        return image_from_phase(p, mag, (h, w))

    image_fn.magnitude = mag
    image_fn.phase = p
    return [p], image_fn


def crops(
    out_size: int | tuple[int, int],
    n: int = 6,
    box: tuple[float, float] = (0.25, 0.30),
    noise: float = 0.01,
    center_sd: float = 0.15,
):
    """MaCo's transform (horama ``optimization_step``): ``n`` random square crops per image of
    side ``box`` (uniform, fraction of the canvas height) centred at 0.5 + N(0, ``center_sd``),
    cropped by ``roi_align`` at twice ``out_size`` and resized bicubically (antialiased) to
    ``out_size``, plus Gaussian and uniform noise of scale ``noise`` (in [0, 1] pixel units).
    Outside the canvas is grey. One draw per step is shared by the batch: (N, 3, H, W) ->
    (N * n, 3, h, w), image i's crops at rows i * n ... i * n + n - 1.

    horama's default ``box_size=(0.20, 0.25)`` draws sides in [0.25, 0.30] (its width is
    ``rand * (b1 - b0) + b1``); the default here is that range. Its noise 0.05 is in model
    input units on a (-2.5, 2.5) range: 0.01 here."""
    from torchvision.ops import roi_align

    oh, ow = (out_size, out_size) if isinstance(out_size, int) else out_size
    lo, hi = box

    def t(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, _, h, _ = x.shape
        x0 = 0.5 + torch.randn(n, generator=gen) * center_sd
        y0 = 0.5 + torch.randn(n, generator=gen) * center_sd
        d = torch.rand(n, generator=gen) * (hi - lo) + lo
        rough = torch.randn((n, 3, oh, ow), generator=gen)
        flat = torch.rand((n, 3, oh, ow), generator=gen)
        one = torch.stack([x0 - d / 2, y0 - d / 2, x0 + d / 2, y0 + d / 2], dim=1) * h
        idx = torch.arange(b, dtype=one.dtype).repeat_interleave(n)[:, None]
        boxes = torch.cat([idx, one.repeat(b, 1)], dim=1).to(x)
        out = roi_align(x - 0.5, boxes, output_size=(2 * oh, 2 * ow))
        out = F.interpolate(out, size=(oh, ow), mode="bicubic", align_corners=True, antialias=True)
        jitter = (rough + (flat - 0.5)) * noise
        return out + 0.5 + jitter.to(x).repeat(b, 1, 1, 1)

    t.out_size = (oh, ow)
    t.crops = n
    return t


# MaCo's accumulated gradient is heavy-tailed: a few pixels hold most of it, so scaled by its
# maximum nearly the whole picture would vanish. horama's plot_maco clips at the 80th
# percentile: the most attributed fifth of the pixels is opaque and the rest fades in proportion.
ALPHA_PERCENTILE = 80.0


def normalize_transparency(alpha: np.ndarray, percentile: float = ALPHA_PERCENTILE) -> np.ndarray:
    """MaCo transparency maps (..., H, W) (accumulated |gradient|, any scale) as alphas in
    [0, 1], float32: each map divided by its own ``percentile`` and clipped at 1 (a map that is
    zero at that percentile: divided by its maximum; an all-zero map stays 0)."""
    a = np.asarray(alpha, np.float64)
    flat = a.reshape(-1, a.shape[-2] * a.shape[-1]) if a.ndim >= 2 else a.reshape(1, -1)
    high = np.percentile(flat, percentile, axis=1)
    # mostly zero (the crops never reached most of the canvas): the largest value sets the scale
    high = np.where(high > 0, high, flat.max(axis=1))
    out = flat / np.maximum(high, 1e-30)[:, None]
    return np.clip(out, 0.0, 1.0).reshape(a.shape).astype(np.float32)


def transparency_picture(
    image: np.ndarray, alpha: np.ndarray, percentile: float = ALPHA_PERCENTILE
) -> np.ndarray:
    """``image`` (H, W, 3) in [0, 1] shown through its transparency ``alpha`` (H, W), on white,
    as horama's ``plot_maco``: alpha clipped at its ``percentile`` and scaled to max 1."""
    a = normalize_transparency(alpha, percentile)[..., None]
    return image * a + (1.0 - a)
