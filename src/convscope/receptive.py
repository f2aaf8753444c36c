"""Theoretical receptive fields: size, stride (jump) and offset of every layer of any model.

The numbers come from one probe forward pass (see :mod:`convscope.trace`) during which a
``TorchFunctionMode`` follows every tensor operation and carries, for each tensor with a
spatial layout (N, C, H, W), the receptive field of its unit (0, 0) in input pixels. This works
on any ``nn.Module`` - ResNets with their skip additions, EfficientNets, timm models, code with
Python control flow - because it reads the operations that actually ran, not the module tree.

Conventions (per axis, input pixel ``i`` has its centre at coordinate ``i``):

- ``size``: number of input pixels a unit sees, ``r_out = r_in + (k - 1) * dilation * jump_in``;
- ``jump``: distance in input pixels between neighbouring units, ``j_out = j_in * stride``;
- ``start``: centre of unit (0, 0), ``s_out = s_in + ((k - 1) / 2 * dilation - pad) * j_in``.

Where several tensors meet (addition, concatenation) the field is the union of theirs. A branch
through global pooling (squeeze-excitation) that is broadcast back onto a map makes every unit
depend on the whole image; the local field is kept and ``global_context`` is set. Layers with no
spatial layout (after flatten, linear layers, transformer tokens) are ``is_global``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode


@dataclass(frozen=True)
class Box:
    """An inclusive pixel box ``[y0, y1] x [x0, x1]``; may extend past the image before clipping."""

    y0: int
    x0: int
    y1: int
    x1: int

    def clip(self, height: int, width: int) -> Box:
        """The part of the box inside a ``height x width`` image."""
        return Box(max(self.y0, 0), max(self.x0, 0), min(self.y1, height - 1), min(self.x1, width - 1))

    @property
    def height(self) -> int:
        return self.y1 - self.y0 + 1

    @property
    def width(self) -> int:
        return self.x1 - self.x0 + 1


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of a layer's units, in input pixels, as (height, width) pairs."""

    size: tuple[float, float]
    jump: tuple[float, float]
    start: tuple[float, float]
    global_context: bool = False
    is_global: bool = False

    @classmethod
    def pixel(cls) -> ReceptiveField:
        """The input itself: each unit is one pixel."""
        return cls((1.0, 1.0), (1.0, 1.0), (0.0, 0.0))

    @classmethod
    def whole(cls) -> ReceptiveField:
        """A layer without spatial layout: every unit sees the whole image."""
        return cls((math.inf, math.inf), (math.inf, math.inf), (0.0, 0.0), is_global=True)

    def box(self, y: int, x: int) -> Box:
        """Input-pixel box seen by the unit at map position ``(y, x)`` (unclipped, inclusive)."""
        if self.is_global:
            raise ValueError("a global layer has no spatial receptive field box")
        cy = self.start[0] + y * self.jump[0]
        cx = self.start[1] + x * self.jump[1]
        hy = (self.size[0] - 1) / 2
        hx = (self.size[1] - 1) / 2
        return Box(math.floor(cy - hy), math.floor(cx - hx), math.ceil(cy + hy), math.ceil(cx + hx))

    def center(self, y: int, x: int) -> tuple[float, float]:
        """Input-pixel coordinates of the centre of the unit at ``(y, x)``."""
        return self.start[0] + y * self.jump[0], self.start[1] + x * self.jump[1]

    def __str__(self) -> str:
        if self.is_global:
            return "global"
        s = _fmt_pair(self.size)
        extra = " +global" if self.global_context else ""
        return f"{s} px / stride {_fmt_pair(self.jump)}{extra}"


def _fmt_pair(p: tuple[float, float]) -> str:
    a, b = (int(v) if float(v).is_integer() else round(v, 2) for v in p)
    return f"{a}" if a == b else f"{a}x{b}"


# --- propagation -----------------------------------------------------------------------------

_UNKNOWN = None  # a tensor whose layout we could not follow (cropping, pixel shuffle...)


def _pair(v, default=None) -> tuple[int, int]:
    if v is None:
        return default
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[-1])) if len(v) else default
    return (int(v), int(v))


def _arg(args, kwargs, i, name, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[i] if len(args) > i else default


def _window(rf: ReceptiveField, k, s, p, d) -> ReceptiveField:
    size = tuple(rf.size[i] + (k[i] - 1) * d[i] * rf.jump[i] for i in range(2))
    start = tuple(rf.start[i] + ((k[i] - 1) / 2 * d[i] - p[i]) * rf.jump[i] for i in range(2))
    jump = tuple(rf.jump[i] * s[i] for i in range(2))
    return ReceptiveField(size, jump, start, rf.global_context)


def _union(fields: list[ReceptiveField]) -> ReceptiveField:
    if len(fields) == 1:
        return fields[0]
    size, start = [], []
    for i in range(2):
        lo = min(f.start[i] - (f.size[i] - 1) / 2 for f in fields)
        hi = max(f.start[i] + (f.size[i] - 1) / 2 for f in fields)
        size.append(hi - lo + 1)
        start.append((lo + hi) / 2)
    jump = tuple(max(f.jump[i] for f in fields) for i in range(2))
    return ReceptiveField(tuple(size), jump, tuple(start), any(f.global_context for f in fields))


def _spatial(t: torch.Tensor) -> tuple[int, int] | None:
    return tuple(t.shape[-2:]) if t.dim() == 4 else None


class ReceptiveFieldMode(TorchFunctionMode):
    """Follows receptive fields through every torch operation run while the mode is active.

    ``fields[id(t)]`` holds ``(t, ReceptiveField | None)`` for each tensor derived from the
    marked input; tensors are kept alive so that their ids stay unique during the pass.
    """

    def __init__(self, x: torch.Tensor):
        super().__init__()
        self.fields: dict[int, tuple[torch.Tensor, ReceptiveField | None]] = {
            id(x): (x, ReceptiveField.pixel())
        }

    def field_of(self, t: torch.Tensor) -> ReceptiveField | None:
        """Receptive field of tensor ``t`` (None if unknown or not derived from the input)."""
        entry = self.fields.get(id(t))
        return entry[1] if entry is not None and entry[0] is t else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(o, torch.Tensor)]
        if not outs:
            return out
        inputs = [
            (t, self.fields[id(t)][1])
            for t in _tensors(args, kwargs)
            if id(t) in self.fields and self.fields[id(t)][0] is t
        ]
        if not inputs:
            return out
        name = getattr(func, "__name__", "")
        for o in outs:
            try:
                rf = self._propagate(name, args, kwargs, inputs, o)
            except Exception:  # an op we misread must never break the model's forward pass
                rf = _UNKNOWN
            self.fields[id(o)] = (o, rf)
        return out

    def _propagate(self, name, args, kwargs, inputs, out) -> ReceptiveField | None:
        out_hw = _spatial(out)
        if out_hw is None:
            return ReceptiveField.whole()
        x = args[0] if args and isinstance(args[0], torch.Tensor) else inputs[0][0]
        rf_in = self.field_of(x) if id(x) in self.fields else inputs[0][1]
        if name in ("conv2d", "conv_transpose2d") and rf_in is not None and not rf_in.is_global:
            weight = _arg(args, kwargs, 1, "weight")
            k = tuple(weight.shape[-2:])
            s = _pair(_arg(args, kwargs, 3, "stride", 1))
            d = _pair(_arg(args, kwargs, 5 if name == "conv2d" else 7, "dilation", 1))
            pad = _arg(args, kwargs, 4, "padding", 0)
            if name == "conv_transpose2d":
                return _transposed(rf_in, k, s, _pair(pad), d)
            if pad == "valid":
                p = (0, 0)
            elif pad == "same":
                p = tuple(d[i] * (k[i] - 1) // 2 for i in range(2))
            else:
                p = _pair(pad)
            return _window(rf_in, k, s, p, d)
        if name in ("max_pool2d", "avg_pool2d", "lp_pool2d", "max_pool2d_with_indices"):
            if rf_in is None or rf_in.is_global:
                return rf_in
            if name == "lp_pool2d":
                k = _pair(_arg(args, kwargs, 2, "kernel_size"))
                s = _pair(_arg(args, kwargs, 3, "stride"), k)
                return _window(rf_in, k, s, (0, 0), (1, 1))
            k = _pair(_arg(args, kwargs, 1, "kernel_size"))
            s = _pair(_arg(args, kwargs, 2, "stride"), k)
            p = _pair(_arg(args, kwargs, 3, "padding", 0))
            d = _pair(_arg(args, kwargs, 4, "dilation", 1)) if "max" in name else (1, 1)
            return _window(rf_in, k, s, p, d)
        if name.startswith("adaptive_") and name.endswith("pool2d"):
            if rf_in is None or rf_in.is_global:
                return rf_in
            in_hw = x.shape[-2:]
            k = tuple(math.ceil(in_hw[i] / out_hw[i]) for i in range(2))
            s = tuple(max(in_hw[i] // out_hw[i], 1) for i in range(2))
            return _window(rf_in, k, s, (0, 0), (1, 1))
        if name == "pad" and rf_in is not None and not rf_in.is_global:
            pad = list(_arg(args, kwargs, 1, "pad")) + [0, 0, 0, 0]
            start = (rf_in.start[0] - pad[2] * rf_in.jump[0], rf_in.start[1] - pad[0] * rf_in.jump[1])
            return ReceptiveField(rf_in.size, rf_in.jump, start, rf_in.global_context)
        if name in ("interpolate", "upsample", "upsample_bilinear", "upsample_nearest"):
            if rf_in is None or rf_in.is_global:
                return rf_in
            mode = _arg(args, kwargs, 3, "mode", "nearest")
            return _resample(rf_in, x.shape[-2:], out_hw, mode)
        return self._elementwise(inputs, out_hw)

    @staticmethod
    def _elementwise(inputs, out_hw) -> ReceptiveField | None:
        same, global_context = [], False
        for t, rf in inputs:
            hw = _spatial(t)
            if hw == out_hw:
                if rf is _UNKNOWN:
                    return _UNKNOWN
                same.append(rf)
            else:
                global_context = True  # broadcast branch (e.g. squeeze-excitation gate)
        if not same:
            # A reduction of a map to another shape (spatial mean with keepdim...).
            t, rf = inputs[0]
            hw = _spatial(t)
            if rf is _UNKNOWN or hw is None or rf.is_global:
                return rf if rf is not None else _UNKNOWN
            if out_hw == (1, 1):
                return _window(rf, hw, hw, (0, 0), (1, 1))
            return _UNKNOWN
        if any(f.is_global for f in same):
            return ReceptiveField.whole()
        rf = _union(same)
        if global_context and not rf.global_context:
            rf = ReceptiveField(rf.size, rf.jump, rf.start, True)
        return rf


def _transposed(rf, k, s, p, d) -> ReceptiveField:
    # Output o of a transposed convolution reads inputs i with i * s = o + p - t * d, t < k.
    size = tuple(rf.size[i] + math.ceil((k[i] - 1) * d[i] / s[i]) * rf.jump[i] for i in range(2))
    jump = tuple(rf.jump[i] / s[i] for i in range(2))
    start = tuple(rf.start[i] + (p[i] - (k[i] - 1) * d[i] / 2) * jump[i] for i in range(2))
    return ReceptiveField(size, jump, start, rf.global_context)


def _resample(rf, in_hw, out_hw, mode) -> ReceptiveField:
    scale = tuple(out_hw[i] / in_hw[i] for i in range(2))
    jump = tuple(rf.jump[i] / scale[i] for i in range(2))
    # Output pixel i samples input coordinate (i + 0.5) / scale - 0.5 (align_corners=False).
    start = tuple(rf.start[i] + (0.5 / scale[i] - 0.5) * rf.jump[i] for i in range(2))
    extra = 0.0 if mode == "nearest" else 1.0  # linear modes read two neighbours
    size = tuple(rf.size[i] + extra * rf.jump[i] for i in range(2))
    return ReceptiveField(size, jump, start, rf.global_context)


def _tensors(args, kwargs):
    stack = list(args) + list(kwargs.values())
    while stack:
        a = stack.pop()
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            stack.extend(a)
