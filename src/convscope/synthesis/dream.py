"""DeepDream (Mordvintsev et al. 2015): amplify whatever a layer already sees, by gradient
ascent on ||Phi_k(x)||^2 from a real image, over several octaves (scales), with jitter; and the
"zoom-in" sequence, where each frame dreams on a slightly zoomed crop of the previous one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from convscope.inputs.fileio import atomic_path
from convscope.recorder import Recorder
from convscope.results import Result
from convscope.subject import Subject


@dataclass
class Dream(Result):
    """The dreamed image (H, W, 3) in [0, 1], and the zoom frames (K, H, W, 3) if made."""

    image: np.ndarray
    frames: np.ndarray | None = None

    def to_image(self) -> Image.Image:
        """The dreamed image at its own size."""
        from convscope.render.grid import to_uint8

        return Image.fromarray(to_uint8(self.image))

    def headline(self) -> str:
        h, w = self.image.shape[:2]
        zoom = f", {len(self.frames)} zoom frames" if self.frames is not None else ""
        return f"dream {w}x{h}{zoom}"

    def to_gif(self, path: str | Path, ms: int = 80) -> Path:
        """The zoom frames as an animated GIF (written atomically)."""
        from convscope.render.grid import to_uint8

        if self.frames is None:
            raise ValueError("no frames: use dream_zoom")
        pics = [Image.fromarray(to_uint8(f)) for f in self.frames]
        path = Path(path)
        with atomic_path(path) as tmp:
            pics[0].save(tmp, format="GIF", save_all=True, append_images=pics[1:], duration=ms, loop=0)
        return path


def _ascent(
    subject: Subject,
    img: torch.Tensor,
    layer: str,
    steps: int,
    step_size: float,
    jitter: int,
    gen: torch.Generator,
    model_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Normalised gradient ascent on mean(Phi^2) of a [0, 1] image (1, 3, h, w); with
    ``model_size`` (a model that runs only at its input size) the model sees the image resized
    to it, and the gradient comes back through the resize at the octave's own size."""
    for _ in range(steps):
        dy, dx = (int(v) - jitter for v in torch.randint(2 * jitter + 1, (2,), generator=gen))
        shifted = torch.roll(img, (dy, dx), dims=(2, 3)).detach().requires_grad_(True)
        with torch.enable_grad(), Recorder(subject, [layer], detach=False, stop=True) as rec:
            x = shifted
            if model_size is not None and tuple(x.shape[2:]) != tuple(model_size):
                x = F.interpolate(x, size=model_size, mode="bilinear", align_corners=False, antialias=True)
            subject(subject.preprocess.normalize(x))
            (g,) = torch.autograd.grad(rec[layer].pow(2).mean(), shifted)
        g = torch.roll(g, (-dy, -dx), dims=(2, 3))
        img = (img + step_size * g / g.abs().mean().clamp_min(1e-12)).clamp(0, 1).detach()
    return img


def dream(
    subject: Subject,
    image,
    layer: str,
    *,
    octaves: int = 4,
    octave_scale: float = 1.4,
    steps: int = 10,
    step_size: float = 0.01,
    jitter: int = 16,
    seed: int = 0,
) -> Dream:
    """Dream on ``image`` (path, PIL, array or a [0, 1] tensor (1, 3, H, W)) at ``layer``:
    from the coarsest octave to the full size, the detail added at each scale is carried up.
    For a model that runs only at its input size (``subject.fixed_input_size``) each octave is
    resized to that size for the forward pass (the jitter is a roll, which keeps the size), so
    a coarse octave is seen as a blurred full-size image and gains coarser detail, as on a
    convnet."""
    name = subject.layer(layer).name
    # read before the Recorder in _ascent is on: the size probe is a forward pass
    model_size = tuple(subject.input_size) if subject.fixed_input_size else None
    gen = torch.Generator().manual_seed(seed)
    base = _as_unit_image(subject, image)
    h, w = base.shape[2:]
    sizes = [
        (max(8, round(h / octave_scale**o)), max(8, round(w / octave_scale**o))) for o in range(octaves)
    ][::-1]
    detail = torch.zeros_like(F.interpolate(base, size=sizes[0], mode="bilinear", align_corners=False))
    for size in sizes:
        scaled = F.interpolate(base, size=size, mode="bilinear", align_corners=False)
        detail = F.interpolate(detail, size=size, mode="bilinear", align_corners=False)
        dreamed = _ascent(
            subject, (scaled + detail).clamp(0, 1), name, steps, step_size, jitter, gen, model_size
        )
        detail = dreamed - scaled
    out = (base + F.interpolate(detail, size=(h, w), mode="bilinear", align_corners=False)).clamp(0, 1)
    return Dream(out[0].permute(1, 2, 0).cpu().numpy())


def dream_zoom(
    subject: Subject, image, layer: str, *, frames: int = 30, zoom: float = 1.05, **options
) -> Dream:
    """The zoom-in sequence: dream, crop the centre 1/zoom, scale back up, dream again..."""
    img = _as_unit_image(subject, image)
    h, w = img.shape[2:]
    out = []
    for k in range(frames):
        d = dream(subject, img, layer, seed=options.pop("seed", 0) + k, **options)
        out.append(d.image)
        t = torch.as_tensor(d.image).permute(2, 0, 1)[None]
        ch, cw = round(h / zoom), round(w / zoom)
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        img = F.interpolate(
            t[:, :, y0 : y0 + ch, x0 : x0 + cw], size=(h, w), mode="bilinear", align_corners=False
        ).to(subject.device)
    return Dream(out[-1], np.stack(out))


def _as_unit_image(subject: Subject, image) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        return image.to(subject.device)
    return subject.load_pixels([image])
