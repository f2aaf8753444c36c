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
  JPEGs *on the model's device* (:mod:`convscope.decode`: TorchCodec or torchvision, nvJPEG on
  a GPU), then resizes there. It pays where decoding, not the model, limits the speed (small models, large
  JPEGs, few CPU cores per GPU); pixels differ from PIL's by at most one grey level (tested).
"""

from __future__ import annotations

import contextlib
import os
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


def cpu_count() -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup CPU quota (Docker
    ``--cpus``, Kubernetes limits), which the mask does not show."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        n = os.cpu_count() or 1
    quota = _cgroup_cpus()
    return max(1, min(n, quota)) if quota else n


def _cgroup_cpus() -> int | None:
    """Whole CPUs of this process's cgroup quota (v2 ``cpu.max`` or v1 CFS), None if unlimited."""
    import math
    from pathlib import Path

    try:
        v2 = Path("/sys/fs/cgroup/cpu.max")
        if v2.exists():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
        q = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
        if q.exists():
            quota = int(q.read_text())
            period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            return None if quota <= 0 else max(1, math.ceil(quota / period))
    except (OSError, ValueError):
        pass
    return None


def shared_memory_bytes() -> int | None:
    """Free bytes of /dev/shm, through which DataLoader workers hand batches over (None where
    there is no such mount)."""
    import shutil

    try:
        return shutil.disk_usage("/dev/shm").free
    except OSError:
        return None


PREFETCH = 4  # batches each DataLoader worker prepares ahead


def auto_workers(device: torch.device | str, share: int = 1, batch_bytes: int | None = None) -> int:
    """DataLoader worker processes for a pass on ``device`` when this machine's cores are split
    among ``share`` such passes (one per GPU, say). On a GPU the model runs elsewhere, so all but
    one core decode (at most 12: more rarely helps and each holds prefetched batches). On a CPU
    decoding competes with the model's own threads: one worker per four cores, none below eight.
    With ``batch_bytes``, no more workers than /dev/shm can hold the prefetched batches of, with
    room to spare (containers often give it 64 MB)."""
    device = torch.device(device)
    cores = max(1, cpu_count() // max(1, share))
    n = max(0, min(cores - 1, 12)) if device.type == "cuda" else (cores // 4 if cores >= 8 else 0)
    return fit_workers(n, batch_bytes)


def fit_workers(n: int, batch_bytes: int | None) -> int:
    """At most ``n`` workers, and no more than /dev/shm can hold the prefetched batches of
    (``batch_bytes`` each) with half of it to spare."""
    shm = shared_memory_bytes() if batch_bytes else None
    if n and shm is not None:
        n = min(n, int(shm // (2 * PREFETCH * batch_bytes)))
    return max(0, n)


def batch_bytes(batch_size: int, input_size: tuple[int, int], decode: str = "cpu") -> int:
    """Bytes a DataLoader worker hands over per batch: float32 images for PIL decoding; for
    decoding on the device the files' bytes, estimated as the uint8 pixels at input size."""
    h, w = input_size
    return batch_size * 3 * h * w * (4 if decode == "cpu" else 1)


def resolve_workers(workers: int | None, device: torch.device | str, batch_bytes: int | None = None) -> int:
    """``workers``, or :func:`auto_workers` when None."""
    if workers is None:
        return auto_workers(device, batch_bytes=batch_bytes)
    if workers < 0:
        raise UserInputError("workers must be >= 0")
    return workers


__all__ = [
    "Accel",
    "DECODERS",
    "PRECISIONS",
    "auto_workers",
    "batch_bytes",
    "check_finite",
    "cpu_count",
    "fit_workers",
    "prepared",
    "resolve_workers",
    "shared_memory_bytes",
    "with_default_settings",
]
