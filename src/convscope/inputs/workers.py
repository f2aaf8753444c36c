"""How many DataLoader worker processes a pass gets: cores (affinity and cgroup quota), the
device, and the room /dev/shm has for prefetched batches."""

from __future__ import annotations

import os

import torch

from convscope.errors import UserInputError


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
