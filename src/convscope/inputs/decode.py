"""Decoding on the model's device: DataLoader workers read bytes, the device decodes and resizes.

JPEGs go through one batched ``decode_jpeg`` call (nvJPEG on CUDA, libjpeg-turbo on a CPU):
TorchCodec's when it is installed and loads (``pip install 'convscope[gpu]'``; it supersedes
torchvision's image decoders, deprecated since 0.29, and applies EXIF orientation itself),
torchvision's otherwise (its CUDA decoder ignores orientation, so convscope reads the EXIF tag
and turns or mirrors the decoded image on the device). Other formats (PNG, GIF) and JPEGs the
batch decoder refuses (broken ones, kinds it does not support) are decoded by PIL exactly as
:func:`convscope.inputs.read_image` does, so transparency, palettes and 16-bit, float and
L*a*b* images are converted by the same rules (CMYK JPEGs: the batch decoder's colours are
PIL's).
Files neither can decode are skipped with their reason. Resizing and cropping use the subject's
:class:`~convscope.preprocess.Preprocess` on uint8 tensors (antialiased, like PIL), grouped by
size so that a dataset of equal-sized images is resized in one call per batch.
"""

from __future__ import annotations

import contextlib
import io

import torch

from convscope.errors import UserInputError
from convscope.imageops import read_image
from convscope.inputs.sources import ImageSource
from convscope.preprocess import Preprocess

_JPEG_MAGIC = b"\xff\xd8\xff"


class RawImages(torch.utils.data.Dataset):
    """Items ``(payload | None, i, error | None)``: the file's bytes as a uint8 tensor, or for
    sources that yield pictures rather than files (the bundled samples) the RGB pixels (3, H, W)."""

    def __init__(self, source: ImageSource):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        from convscope.inputs.images import skip_reason

        try:
            blob = self.source.read_bytes(i)
            if isinstance(blob, (bytes, bytearray)):
                return torch.frombuffer(bytearray(blob), dtype=torch.uint8), i, None
            return _pil_pixels(read_image(blob)), i, None
        except Exception as e:  # a bad file must never end a run
            return None, i, skip_reason(e)


def exif_orientation(blob: bytes) -> int:
    """The EXIF orientation (1-8) of an encoded image, 1 when it has none (reads the header)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(blob)) as img:
            code = int(img.getexif().get(0x0112, 1))
    except Exception:  # the decoders will say what is wrong with it
        return 1
    return code if 1 <= code <= 8 else 1


def orient(img: torch.Tensor, code: int) -> torch.Tensor:
    """``img`` (C, H, W) shown upright for EXIF orientation ``code``, as PIL's exif_transpose
    does (2-4: mirror / 180 degrees / flip, 5 and 7: transposes, 6 and 8: quarter turns)."""
    h, w = -2, -1
    if code == 2:
        return img.flip(w)
    if code == 3:
        return img.flip(h).flip(w)
    if code == 4:
        return img.flip(h)
    if code == 5:
        return img.transpose(h, w)
    if code == 6:
        return torch.rot90(img, k=-1, dims=(h, w))
    if code == 7:
        return img.transpose(h, w).flip(h).flip(w)
    if code == 8:
        return torch.rot90(img, k=1, dims=(h, w))
    return img


def _pil_pixels(img) -> torch.Tensor:
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(img)


def device_transform(source: ImageSource) -> Preprocess:
    """The source's transform, which device decoding must reproduce: only a
    :class:`Preprocess` says what it does."""
    if not isinstance(source.transform, Preprocess):
        raise UserInputError(
            "decoding on the device needs the subject's preprocessing as a Preprocess; this "
            "subject has a custom transform (use --decode cpu, decode='cpu' in Python)"
        )
    return source.transform


_DECODERS: dict[str, tuple] = {}


def jpeg_decoder(backend: str | None = None):
    """``(decode, orients)``: ``decode(list of byte tensors, device)`` gives uint8 RGB tensors
    (3, H, W); ``orients`` says whether it applied their EXIF orientation itself. ``backend``:
    ``"torchcodec"``, ``"torchvision"``, or None for TorchCodec when it is installed and loads,
    else torchvision (whose CUDA decoder ignores orientation, so convscope applies it, on every
    device alike)."""
    key = backend or "auto"
    if key in _DECODERS:
        return _DECODERS[key]
    found = None
    if backend in (None, "torchcodec"):
        try:
            from torchcodec.decoders import decode_jpeg as codec_jpeg

            found = (lambda data, device: codec_jpeg(list(data), mode="RGB", device=device), True)
        except Exception as e:  # not installed, or its libraries do not load with this torch
            if backend == "torchcodec":
                raise UserInputError(
                    f"TorchCodec cannot be used ({e}); pip install 'convscope[gpu]' matching your torch"
                ) from None
            if not isinstance(e, ImportError):
                import warnings

                warnings.warn(
                    f"TorchCodec does not load ({e}); decoding JPEGs with torchvision", stacklevel=2
                )
    if found is None:
        import warnings

        from torchvision.io import ImageReadMode, decode_jpeg

        def decode(data, device):
            with warnings.catch_warnings():  # deprecated in favour of TorchCodec, still correct
                warnings.simplefilter("ignore", DeprecationWarning)
                return decode_jpeg(list(data), mode=ImageReadMode.RGB, device=device)

        found = (decode, False)
    _DECODERS[key] = found
    return found


def decode_batch(
    items: list[tuple[torch.Tensor, int]],
    preprocess: Preprocess,
    device: torch.device,
    backend: str | None = None,
) -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
    """Decode and preprocess ``items`` (payload, index) on ``device``: the batch (B, 3, H, W),
    the indices that made it, and ``(index, reason)`` for the files that could not be decoded."""
    decode_jpeg, orients = jpeg_decoder(backend)
    pixels: dict[int, torch.Tensor] = {}
    bad: list[tuple[int, str]] = []
    jpegs = [(t, i) for t, i in items if t.dim() == 1 and bytes(t[:3].tolist()) == _JPEG_MAGIC]
    if jpegs:
        try:
            out = decode_jpeg([t for t, _ in jpegs], device)
            pixels.update({i: img for (_, i), img in zip(jpegs, out)})
        except Exception:  # one bad file fails the whole call: decode them one by one
            for t, i in jpegs:
                with contextlib.suppress(Exception):  # PIL tries again below, with a reason
                    pixels[i] = decode_jpeg([t], device)[0]
        if not orients:
            for t, i in jpegs:
                # the EXIF block (APP1) sits at the start and holds at most 64 KB
                code = exif_orientation(t[: 1 << 17].numpy().tobytes()) if i in pixels else 1
                if code != 1:
                    pixels[i] = orient(pixels[i], code)
    for t, i in items:
        if i in pixels:
            continue
        if t.dim() == 3:
            pixels[i] = t.to(device, non_blocking=True)
            continue
        try:
            pixels[i] = _pil_pixels(read_image(t.numpy().tobytes())).to(device)
        except Exception as e:
            from convscope.inputs.images import skip_reason

            bad.append((i, skip_reason(e)))
    order = [i for _, i in items if i in pixels]
    h, w = preprocess.size
    batch = torch.empty((len(order), 3, h, w), device=device)
    groups: dict[tuple[int, int], list[int]] = {}
    for pos, i in enumerate(order):
        groups.setdefault(tuple(pixels[i].shape[1:]), []).append(pos)
    for positions in groups.values():
        imgs = torch.stack([pixels[order[p]] for p in positions])
        geo = preprocess.resize_only(imgs)  # uint8 in, uint8 out: rounded like PIL's
        batch[positions] = preprocess.normalize(geo.float() / 255.0)
    return batch, order, bad


__all__ = ["RawImages", "decode_batch", "device_transform", "exif_orientation", "jpeg_decoder", "orient"]
