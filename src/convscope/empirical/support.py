"""Theoretical receptive fields checked against gradient support.

The theoretical receptive field of a unit (:mod:`convscope.receptive`) is a claim: pixels outside
its box cannot change the unit. The gradient tests it. ``d unit / d pixel`` is exactly zero for
every pixel outside the true field (no path of the graph reaches it, so the backward pass only
ever adds ``0 * w`` there), so a pixel with a nonzero gradient outside the box proves the claim
wrong. Inside the box a pixel may still get no gradient on one image (a ReLU that is off, a
max-pooling window that routes the gradient to its argmax only), so the support is the union over
a few random inputs.

:func:`gradient_support` measures one unit (one channel, or a random combination of all of
them, at one map position; the centre by default) and returns a :class:`SupportCheck`: the support mask, the
theoretical box clipped to the image, whether the support lies inside it (the hard check), and
how much of the box the support's bounding box covers (1.0 on a plain convnet, less where
max-pooling or dead units leave pixels out). For layers whose claim is global (a token layer,
attention, or a squeeze-excitation branch that broadcasts the whole image onto the map) there is
no box to leave; the check reports what the support covers, and whether the global claim is backed.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from convscope.errors import UserInputError
from convscope.layers import Address
from convscope.recorder import Recorder
from convscope.results import Result
from convscope.subject import Subject

# A global claim is backed when the support's bounding box covers this share of the image.
GLOBAL_BACKED = 0.9
# In float32 the backward pass may use transform-based convolutions (Winograd) whose rounding puts
# ~1e-7-relative noise on pixels with a structurally zero gradient; below this share of the largest
# gradient a pixel is not counted there. In float64 on the reference kernels zero stays exactly zero.
FLOAT32_THRESHOLD = 1e-6


@dataclass
class SupportCheck(Result):
    """Gradient support of one unit against its theoretical receptive field, in input pixels.

    ``magnitude`` (H, W): sum over the random inputs and colour channels of |d unit / d pixel|;
    ``support`` (H, W) bool: where it is nonzero (above ``threshold`` x its maximum); ``claim``:
    ``"local"``, ``"global_context"`` (local box plus a broadcast whole-image branch) or
    ``"global"``; ``box``: the theoretical box clipped to the image, inclusive (y0, x0, y1, x1),
    None for global layers; ``support_box``: the support's bounding box (None when empty);
    ``outside``: support pixels outside ``box``; ``coverage``: area of ``support_box`` inside the
    reference region (``box``, or the whole image for global claims) over the region's area;
    ``filled``: share of the region's pixels in the support; ``channel`` None: a fixed random
    combination of every channel."""

    layer: str
    channel: int | None
    position: tuple[int, int] | None
    claim: str
    rf: str
    box: tuple[int, int, int, int] | None
    support_box: tuple[int, int, int, int] | None
    outside: int
    coverage: float
    filled: float
    magnitude: np.ndarray
    support: np.ndarray
    samples: int
    dtype: str
    threshold: float

    @property
    def inside(self) -> bool:
        """The hard check: no support outside the theoretical box (True for global claims)."""
        return self.outside == 0

    @property
    def backed(self) -> bool | None:
        """For a global claim: whether the support covers (nearly) the whole image; else None."""
        if self.claim == "local":
            return None
        return self.coverage >= GLOBAL_BACKED

    @property
    def ok(self) -> bool:
        """The claim holds: the support is inside the box (local) or the global claim is backed."""
        return self.inside if self.claim == "local" else bool(self.backed)

    def headline(self) -> str:
        unit = f"{self.layer}:{'all' if self.channel is None else self.channel}"
        at = f" at {self.position}" if self.position is not None else ""
        sup = _fmt_box(self.support_box)
        if self.claim == "local":
            box = f"the theoretical box {_fmt_box(self.box)} ({self.rf})"
            if self.inside:
                covering = f"covering {self.coverage:.0%} of it"
                return f"gradient support of {unit}{at}: {sup}, inside {box}, {covering}"
            return f"gradient support of {unit}{at}: {sup}, LEAVES {box}: {self.outside} px outside"
        verdict = "backed" if self.backed else "NOT backed"
        return (
            f"gradient support of {unit}{at}: {sup}, covers {self.coverage:.0%} of the image; "
            f"{self.claim.replace('_', ' ')} claim ({self.rf}) {verdict}"
        )

    def to_image(self, cell: int = 224):
        """The support (log |gradient|, inferno; support outside the box in red) with the
        theoretical box (green) and the support's bounding box (cyan dashed), ``cell`` px wide."""
        from convscope.render.receptive import support_figure

        return support_figure(self, cell)


def _fmt_box(b) -> str:
    if b is None:
        return "empty"
    y0, x0, y1, x1 = b
    return f"rows {y0}..{y1}, cols {x0}..{x1}"


def gradient_support(
    subject: Subject,
    layer: str,
    position: tuple[int, int] | None = None,
    *,
    channel: int | None = None,
    samples: int = 4,
    seed: int = 0,
) -> SupportCheck:
    """Gradient support of the unit ``channel`` (None: a fixed random combination of every
    channel) of ``layer`` at map ``position`` (y, x) (default: the centre of the map) over
    ``samples`` random inputs at the subject's input size, checked against the layer's
    theoretical receptive field."""
    return gradient_supports(subject, [layer], [position], channel=channel, samples=samples, seed=seed)[0]


def gradient_supports(
    subject: Subject,
    layers: Sequence[str],
    positions: Sequence[tuple[int, int] | None] | None = None,
    *,
    channel: int | None = None,
    samples: int = 4,
    seed: int = 0,
) -> list[SupportCheck]:
    """:func:`gradient_support` of several layers from one forward pass (one backward each)."""
    if samples < 1:
        raise UserInputError("samples must be at least 1")
    infos = [subject.layer(n) for n in layers]  # unknown layers fail here, before any work
    positions = list(positions) if positions is not None else [None] * len(infos)
    if len(positions) != len(infos):
        raise UserInputError(f"{len(positions)} positions for {len(infos)} layers")
    where = []
    for info, pos in zip(infos, positions):
        if info.shape is None:
            raise UserInputError(f"{info.name} did not run in the probe pass: it has no units")
        if info.rf is None:
            raise UserInputError(f"{info.name} has no receptive field (neither finite nor global)")
        if channel is not None and not 0 <= channel < (info.units or 0):
            raise UserInputError(f"{info.name} has no unit {channel} (it has {info.units})")
        if info.is_map:
            _, mh, mw = info.shape
            pos = (mh // 2, mw // 2) if pos is None else (int(pos[0]), int(pos[1]))
            if not (0 <= pos[0] < mh and 0 <= pos[1] < mw):
                raise UserInputError(f"{info.name}: position {pos} is outside its {mh} x {mw} map")
        elif pos is not None:
            raise UserInputError(f"{info.name} is not a spatial map: it takes no position")
        where.append(pos)
    # exact addresses: a module named like a selection word (timm's `stages`) stays that module
    grads, dtype = _input_gradients(subject, [Address(i.name) for i in infos], where, channel, samples, seed)
    H, W = subject.input_size
    out = []
    for info, pos, g in zip(infos, where, grads):
        top = float(g.max())
        threshold = FLOAT32_THRESHOLD if dtype != torch.float64 else 0.0
        support = g > threshold * top if top > 0 else np.zeros(g.shape, dtype=bool)
        out.append(_compare(info, pos, channel, g, support, samples, str(dtype), threshold, (H, W)))
    return out


def _input_gradients(subject, names, positions, channel, samples, seed):
    """Per layer (H, W): sum over the inputs and colour channels of |d unit / d input|.

    Float64 where the model runs in it (on a copy, so the user's model is untouched): its
    reference kernels keep a structural zero exactly zero. Models that make float32 tensors of
    their own in forward fail in float64; they run in float32 and a small relative threshold
    (:data:`FLOAT32_THRESHOLD`) stands in."""
    H, W = subject.input_size
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, 3, H, W, generator=gen, dtype=torch.float64)
    device = subject.device
    try:
        double = copy.copy(subject)
        double.model = copy.deepcopy(subject.model).double()
        return _gradients(double, names, positions, channel, x.to(device), seed), torch.float64
    except (RuntimeError, TypeError):
        pass
    dtype = next((p.dtype for p in subject.model.parameters() if p.is_floating_point()), torch.float32)
    return _gradients(subject, names, positions, channel, x.to(device, dtype), seed), dtype


def _gradients(subject, names, positions, channel, x, seed):
    x = x.clone().requires_grad_(True)
    # cuDNN may pick FFT or Winograd algorithms, whose rounding is not zero where the true
    # gradient is; the plain kernels are slower but exact about zeros.
    flags = torch.backends.cudnn.flags(enabled=False) if x.is_cuda else contextlib.nullcontext()
    with flags, torch.enable_grad():
        with Recorder(subject, names, stop=True, detach=False) as rec:
            subject.model(x)
        units = []
        for name, pos in zip(names, positions):
            a = rec[name]
            if pos is not None:
                a = a[:, :, pos[0], pos[1]]
            elif a.dim() > 2:  # a non-map output with extra axes: all of them form the unit
                a = a.flatten(2).sum(2)
            if channel is not None:
                a = a[:, channel]
            else:
                # Random weights, not a plain sum: the channel sum of a LayerNorm output is a
                # constant (its gradient is zero everywhere); a random combination cancels nowhere.
                gen = torch.Generator().manual_seed(seed)
                w = torch.randn(a.shape[1], generator=gen, dtype=torch.float64)
                a = a @ w.to(a)
            # Each image's unit depends on that image only (eval mode), so the gradient of the
            # batch sum holds every image's own gradient.
            units.append(a.sum())
        grads = []
        for i, u in enumerate(units):
            (g,) = torch.autograd.grad(u, x, retain_graph=i < len(units) - 1, allow_unused=True)
            if g is None:
                grads.append(np.zeros(tuple(x.shape[2:])))
            else:
                grads.append(g.detach().abs().sum(dim=(0, 1)).double().cpu().numpy())
    return grads


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return None
    return int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max())


def _compare(info, pos, channel, g, support, samples, dtype, threshold, size) -> SupportCheck:
    H, W = size
    rf = info.rf
    if rf.is_global or not info.is_map:
        claim = "global"
    else:
        claim = "global_context" if rf.global_context else "local"
    box = None
    if claim != "global":
        b = rf.box(*pos).clip(H, W)
        box = (b.y0, b.x0, b.y1, b.x1)
    sbox = _bbox(support)
    region = box if claim == "local" else (0, 0, H - 1, W - 1)
    y0, x0, y1, x1 = region
    inside_mask = np.zeros((H, W), dtype=bool)
    if y1 >= y0 and x1 >= x0:
        inside_mask[y0 : y1 + 1, x0 : x1 + 1] = True
    area = max(int(inside_mask.sum()), 1)
    outside = int((support & ~inside_mask).sum()) if claim == "local" else 0
    if sbox is None:
        coverage = 0.0
    else:
        cy0, cx0, cy1, cx1 = max(sbox[0], y0), max(sbox[1], x0), min(sbox[2], y1), min(sbox[3], x1)
        coverage = max(cy1 - cy0 + 1, 0) * max(cx1 - cx0 + 1, 0) / area
    filled = float((support & inside_mask).sum()) / area
    return SupportCheck(
        info.name,
        channel,
        tuple(pos) if pos is not None else None,
        claim,
        str(rf),
        box,
        sbox,
        outside,
        float(coverage),
        filled,
        g.astype(np.float32),
        support,
        samples,
        dtype.replace("torch.", ""),
        threshold,
    )
