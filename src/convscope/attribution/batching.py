"""How many images go into one forward pass of a method or metric that runs the model on many
perturbed copies (occlusion, RISE, Score-CAM, KernelSHAP, LIME, the perturbation metrics)."""

from __future__ import annotations

import math

import torch

from convscope.errors import UserInputError
from convscope.subject import Subject

# A CPU runs a batch fastest while its largest activation stays about the size of the last-level
# cache: efficientnet_lite0 at 224 px (4.6 MiB for its largest output per image) costs 1.6-3x
# more per image at batch 16-256 than at batch 1-4 on one thread (benchmarks/RESULTS.md), and the
# perturbation metrics were slower than Quantus' batch-of-images loop for that reason alone. On two
# threads occlusion took 1.3-2.1 s at batch 2-3 against 2.9 s at 16 and 4.5 s at 64, RISE (512
# masks) 4.0 s at 3 against 14.6 s at 64, Score-CAM 1.4 s at 3 against 8.1 s at 32. An
# accelerator wants big batches instead.
_CPU_BYTES = 16 * 2**20
_DEVICE_BYTES = 2**30
_MAX_BATCH = 256


def auto_batch(subject: Subject, x: torch.Tensor, batch: int | None = None) -> int:
    """The number of images per forward pass for perturbed copies of inputs like ``x`` (N, 3, H, W):
    ``batch`` when given; else as many as keep the model's largest single layer output (from
    the subject's layer table, scaled to ``x``'s size) within 16 MiB on the CPU, 1 GiB on an
    accelerator; between 1 and 256."""
    if batch is not None:
        if int(batch) < 1:
            raise UserInputError(f"batch must be >= 1, not {batch}")
        return int(batch)
    from convscope.errors import RecordingError

    h, w = x.shape[-2:]
    try:
        sizes = [math.prod(i.shape) for i in subject.layers if i.shape is not None and i.per_image]
        ih, iw = subject.input_size
        peak = max(sizes) * (h * w) / (ih * iw) if sizes else 0
    except (RecordingError, UserInputError):  # no hooks (TorchScript) or no layers: no table
        peak = 0
    peak = (peak or 32 * x[0].numel()) * x.element_size()  # 32 x the input: a wide CNN's widest
    budget = _CPU_BYTES if x.device.type == "cpu" else _DEVICE_BYTES
    return int(max(1, min(_MAX_BATCH, budget // peak)))


__all__ = ["auto_batch"]
