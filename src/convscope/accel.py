"""How a pass over data runs on its device: numeric precision, memory layout, decoding, workers.

One :class:`Accel` is handed to every data-parallel pass (scan, dissection, feature extraction,
synthesis); the same code runs on a CPU and on a GPU, only the settings change.

- ``precision``: ``"fp32"`` (default; results equal across devices up to float rounding),
  ``"bf16"`` or ``"fp16"``: the forward pass under :func:`torch.autocast`. Measured on
  efficientnet_lite0 (docs/scale.md): fp16 moves units by ~0.2% and keeps 95-99% of each top-16
  list; bf16 (8-bit mantissa) moves them by ~1-4% and keeps 75-88%. fp16 can overflow (a scan
  or feature extraction that does stops with an error, see :func:`check_finite`).
- ``channels_last``: model and inputs in NHWC layout, which tensor cores and oneDNN prefer.
  Values are unchanged up to float rounding. ``None`` picks it on CUDA for models loaded by
  name or file (see :meth:`Accel.of`).
- ``decode``: ``"cpu"`` decodes and resizes with PIL in the DataLoader workers (bit-equal to
  ``subject.transform``); ``"device"`` has the workers only read the files' bytes and decodes
  JPEGs *on the model's device* (:mod:`convscope.inputs.decode`: TorchCodec or torchvision, nvJPEG on
  a GPU), then resizes there. It pays where decoding, not the model, limits the speed (small models, large
  JPEGs, few CPU cores per GPU); pixels differ from PIL's by at most one grey level (tested).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from convscope.errors import UserInputError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DECODERS = ("cpu", "device")


@dataclass(frozen=True)
class Accel:
    """Speed settings of a pass; see the module docstring for what each does to results."""

    precision: str = "fp32"
    channels_last: bool | None = None
    decode: str = "cpu"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UserInputError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.decode not in DECODERS:
            raise UserInputError(f"decode must be one of {', '.join(DECODERS)}, not {self.decode!r}")

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype (None for fp32)."""
        return PRECISIONS[self.precision]

    def layout(self, device: torch.device) -> bool:
        """Whether to use channels_last on ``device``."""
        return device.type == "cuda" if self.channels_last is None else bool(self.channels_last)

    def autocast(self, device: torch.device):
        """The autocast context for a forward pass on ``device`` (a no-op for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    def inputs(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        """A batch (B, 3, H, W) on ``device`` in this layout; the copy does not block the host
        when ``x`` is in pinned memory."""
        x = x.to(device, non_blocking=True)
        if self.layout(device) and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def config(self) -> dict:
        """What a run records about its settings (the parts that can change results)."""
        return {k: v for k, v in asdict(self).items() if k != "channels_last"}

    @classmethod
    def of(cls, accel: Accel | None, subject=None) -> Accel:
        """``accel`` (default settings when None), with the layout decided for ``subject``:
        channels_last by default only for models loaded by name or file (torchvision and timm
        architectures, which flatten safely) on CUDA; a wrapped module may ``view`` a map that
        NHWC would break, so it keeps its layout unless asked."""
        accel = accel if accel is not None else cls()
        if subject is None or accel.channels_last is not None:
            return accel
        auto = subject.device.type == "cuda" and subject.spec is not None
        return replace(accel, channels_last=auto)


def with_default_settings(config: dict) -> dict:
    """``config`` as recorded by a run, with the speed settings of runs from before they were
    recorded (fp32, PIL decoding), so that such runs can still be resumed."""
    return {**Accel().config(), **config}


@contextlib.contextmanager
def prepared(model: nn.Module, accel: Accel, device: torch.device) -> Iterator[nn.Module]:
    """``model`` in ``accel``'s memory layout for the duration; the old layout comes back after."""
    if not accel.layout(device):
        yield model
        return
    was_last = any(
        p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
        for p in model.parameters()
    )
    model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        if not was_last:
            model.to(memory_format=torch.contiguous_format)


def check_finite(accel: Accel, sums: dict[str, torch.Tensor]) -> None:
    """Raise when a reduced-precision pass overflowed: ``sums`` per layer of everything it
    added up (one device sync at the end, instead of one per batch)."""
    if accel.dtype is None:
        return
    bad = [n for n, t in sums.items() if not bool(torch.isfinite(t).all())]
    if bad:
        from convscope.errors import ConvscopeError

        limit = "65504 (the float16 maximum)" if accel.precision == "fp16" else "the bfloat16 range"
        raise ConvscopeError(
            f"activations of {', '.join(bad)} overflowed under {accel.precision} autocast (beyond "
            f"{limit}); run again with precision bf16 or fp32"
        )


__all__ = [
    "Accel",
    "DECODERS",
    "PRECISIONS",
    "check_finite",
    "prepared",
    "with_default_settings",
]
