"""Decoding on the model's device: DataLoader workers read bytes, the device decodes and resizes.

JPEGs go through one batched ``decode_jpeg`` call (nvJPEG on CUDA, libjpeg-turbo on a CPU):
TorchCodec's when it is installed (``pip install 'convscope[gpu]'``; it supersedes
torchvision's image decoders, deprecated since 0.29), torchvision's otherwise. JPEGs whose EXIF
orientation asks for a rotation or mirror (phone photos), other formats (PNG, GIF) and JPEGs the
batch decoder refuses (CMYK, broken ones) are decoded by PIL exactly as
:func:`convscope.data.read_image` does, so orientation, transparency and palettes are handled
the same way. Files neither can decode are skipped with their reason. Resizing and cropping use
the subject's :class:`~convscope.preprocess.Preprocess` on uint8 tensors (antialiased, like
PIL), grouped by size so that a dataset of equal-sized images is resized in one call per batch.
"""

from __future__ import annotations

import contextlib
import io

import torch

from convscope.data import ImageSource, read_image
from convscope.errors import UserInputError
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
        from convscope.data import _reason

        try:
            blob = self.source._reader(self.source.records[i].name)
            if isinstance(blob, (bytes, bytearray)) and not _rotated_jpeg(blob):
                return torch.frombuffer(bytearray(blob), dtype=torch.uint8), i, None
            # pictures, and JPEGs whose EXIF says to rotate or mirror them, are decoded here by
            # PIL: not every batch decoder applies the orientation (torchvision's CUDA one does not)
            return _pil_pixels(read_image(blob)), i, None
        except Exception as e:  # a bad file must never end a run
            return None, i, _reason(e)


def _rotated_jpeg(blob: bytes) -> bool:
    """Whether ``blob`` is a JPEG with an EXIF orientation other than "as stored" (reads the
    header only)."""
    if not blob.startswith(_JPEG_MAGIC):
        return False
    from PIL import Image

    try:
        with Image.open(io.BytesIO(blob)) as img:
            return img.getexif().get(0x0112, 1) not in (0, 1)
    except Exception:  # let the decoders find out what is wrong with it
        return False


def _pil_pixels(img) -> torch.Tensor:
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(img)


def device_transform(source: ImageSource) -> Preprocess:
    """The source's transform, which device decoding must reproduce: only a
    :class:`Preprocess` says what it does."""
    if not isinstance(source.transform, Preprocess):
        raise UserInputError(
            "decoding on the device needs the subject's preprocessing as a Preprocess; this "
            "subject has a custom transform (use decode='cpu')"
        )
    return source.transform


def jpeg_decoder(backend: str | None = None):
    """``decode(list of byte tensors, device) -> list of uint8 (3, H, W)``, EXIF-oriented RGB,
    from ``backend`` (``"torchcodec"`` or ``"torchvision"``; default: the first installed)."""
    if backend in (None, "torchcodec"):
        try:
            from torchcodec.decoders import decode_jpeg as codec_jpeg

            return lambda data, device: codec_jpeg(list(data), mode="RGB", device=device)
        except ImportError:
            if backend == "torchcodec":
                raise UserInputError("TorchCodec is not installed: pip install 'convscope[gpu]'") from None
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(data, device):
        with warnings.catch_warnings():  # deprecated in favour of TorchCodec, still correct
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(list(data), mode=ImageReadMode.RGB, device=device,
                               apply_exif_orientation=True)

    return decode


def decode_batch(items: list[tuple[torch.Tensor, int]], preprocess: Preprocess,
                 device: torch.device, backend: str | None = None,
                 ) -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
    """Decode and preprocess ``items`` (payload, index) on ``device``: the batch (B, 3, H, W),
    the indices that made it, and ``(index, reason)`` for the files that could not be decoded."""
    decode_jpeg = jpeg_decoder(backend)
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
    for t, i in items:
        if i in pixels:
            continue
        if t.dim() == 3:
            pixels[i] = t.to(device, non_blocking=True)
            continue
        try:
            pixels[i] = _pil_pixels(read_image(t.numpy().tobytes())).to(device)
        except Exception as e:
            from convscope.data import _reason

            bad.append((i, _reason(e)))
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


__all__ = ["RawImages", "decode_batch", "device_transform", "jpeg_decoder"]
