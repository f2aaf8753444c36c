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
depend on the whole image; the local field is kept and ``global_context`` is set (also for
normalisations over positions: GroupNorm, InstanceNorm, LayerNorm over (C, H, W)).

The mode follows *where the grid is* (a :class:`~convscope.layout.Layout`), not only what each
unit sees: through permutes and transposes (channels-last blocks), views that flatten the grid
into tokens or split tokens back into a grid, concatenation of class and register tokens, space-
to-depth reshapes (Swin's patch merging: a k x k window), crops by slicing, and linear layers and
reductions over channels. Operations that mix positions - attention (``scaled_dot_product_attention``,
``multi_head_attention_forward``, a matmul or einsum between two position-indexed tensors), a
linear layer, softmax or cumulative sum over positions, a cyclic shift (``roll``) - make the
field global, and ``reason`` says which; the positions keep their grid. Outputs whose positions
cannot be followed (flattened to a vector, regrouped into windows, pixel shuffle) are global
too - a sound upper bound - with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode

from convscope.layout import Layout


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
    reason: str = ""

    @classmethod
    def pixel(cls) -> ReceptiveField:
        """The input itself: each unit is one pixel."""
        return cls((1.0, 1.0), (1.0, 1.0), (0.0, 0.0))

    @classmethod
    def whole(cls, reason: str = "", jump=(math.inf, math.inf), start=(0.0, 0.0)) -> ReceptiveField:
        """Every unit sees the whole image, because of ``reason`` (attention, no spatial layout).
        A layer that still has a grid of positions (a transformer's tokens) keeps the grid's
        ``jump`` and ``start`` (where its positions are), so that strides still group layers."""
        return cls((math.inf, math.inf), tuple(jump), tuple(start), is_global=True, reason=reason)

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

    @property
    def has_grid(self) -> bool:
        """Whether units sit on a grid of input positions (finite ``jump``), global or not."""
        return all(math.isfinite(j) for j in self.jump)


def _fmt_pair(p: tuple[float, float]) -> str:
    a, b = (int(v) if float(v).is_integer() else round(v, 2) for v in p)
    return f"{a}" if a == b else f"{a}x{b}"


# --- propagation -----------------------------------------------------------------------------

_UNKNOWN = None  # an operation we misread (it raised while we followed it): no field

ATTENTION = "self-attention mixes every token"
WINDOWED = "windowed self-attention (positions regrouped into windows, then mixed)"
REGROUPED = "positions regrouped (windows, batch) by a view that is not followed further"
NO_GRID = "no spatial positions (flattened or pooled to a vector)"


@dataclass(frozen=True)
class _Grid:
    """Where a tensor's positions are: ``"map"``: axes (h, w); ``"tokens"``: axis (n,) holding
    ``prefix`` position-less tokens, then the grid's tokens in row-major order."""

    kind: str
    axes: tuple[int, ...]
    grid: tuple[int, int]
    prefix: int = 0

    def moved(self, axes) -> _Grid:
        return _Grid(self.kind, tuple(axes), self.grid, self.prefix)

    def sizes(self) -> tuple[int, ...]:
        if self.kind == "map":
            return self.grid
        return (self.prefix + self.grid[0] * self.grid[1],)

    def fits(self, t: torch.Tensor) -> bool:
        return (
            all(-t.dim() <= a < t.dim() for a in self.axes)
            and tuple(t.shape[a] for a in self.axes) == self.sizes()
        )

    def layout(self, ndim: int) -> Layout | None:
        """The public layout of a batched tensor of ``ndim`` dimensions (None: not a standard one)."""
        if self.kind == "map" and ndim == 4 and self.axes in ((2, 3), (1, 2)):
            return Layout("channels_first" if self.axes == (2, 3) else "channels_last", self.grid)
        if self.kind == "tokens" and ndim == 3 and self.axes == (1,):
            return Layout("tokens", self.grid, self.prefix)
        return None


def _norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def _as_global(rf: ReceptiveField | None, reason: str) -> ReceptiveField:
    """``rf`` made global (kept as it is if it already is, with its first reason)."""
    if rf is not None and rf.is_global:
        return rf
    if rf is None or not rf.has_grid:
        return ReceptiveField.whole(reason)
    return ReceptiveField.whole(reason, rf.jump, rf.start)


def _on_grid(rf: ReceptiveField, fn) -> ReceptiveField:
    """``fn`` (a window, resample, ...) applied to ``rf``; for a global field only its grid moves."""
    if not rf.is_global:
        return fn(rf)
    if not rf.has_grid:
        return rf
    moved = fn(ReceptiveField((1.0, 1.0), rf.jump, rf.start))
    return ReceptiveField.whole(rf.reason, moved.jump, moved.start)


def _dims(value, ndim: int) -> set[int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return {_norm_dim(value, ndim)}
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
        return {_norm_dim(v, ndim) for v in value}
    raise TypeError("not a dim")


class ReceptiveFieldMode(TorchFunctionMode):
    """Follows receptive fields and the grid's axes through every torch operation run while the
    mode is active.

    ``fields[id(t)]`` holds ``(t, ReceptiveField | None, _Grid | None)`` for each tensor derived
    from the marked input; tensors are kept alive so that their ids stay unique during the pass.
    """

    def __init__(self, x: torch.Tensor):
        super().__init__()
        grid = _Grid("map", (x.dim() - 2, x.dim() - 1), tuple(x.shape[-2:]))
        self.batch, self.image_hw = x.shape[0], tuple(x.shape[-2:])
        self.grids: set[tuple[int, int]] = {self.image_hw}  # map sizes seen, for re-anchoring
        self.fields: dict[int, tuple[torch.Tensor, ReceptiveField | None, _Grid | None]] = {
            id(x): (x, ReceptiveField.pixel(), grid)
        }

    def _entry(self, t):
        e = self.fields.get(id(t))
        return e if e is not None and e[0] is t else None

    def field_of(self, t: torch.Tensor) -> ReceptiveField | None:
        """Receptive field of tensor ``t`` (None if unknown or not derived from the input)."""
        e = self._entry(t)
        return e[1] if e is not None else None

    def layout_of(self, t: torch.Tensor) -> Layout | None:
        """Where ``t`` holds the image grid (None: no standard layout, or not from the input)."""
        e = self._entry(t)
        if e is None or e[2] is None or not e[2].fits(t):
            return None
        return e[2].layout(t.dim())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if getattr(func, "__name__", "") == "__setitem__":
            self._written(args)
        outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(o, torch.Tensor)]
        if not outs:
            return out
        inputs = [(t, e[1], e[2]) for t in _tensors(args, kwargs) if (e := self._entry(t)) is not None]
        if not inputs:
            return out
        name = getattr(func, "__name__", "")
        if name == "__get__":  # a property: Tensor.T, .mT
            name = getattr(getattr(func, "__self__", None), "__name__", name)
        for k, o in enumerate(outs):
            try:
                rf, grid = self._propagate(name, args, kwargs, inputs, o, k)
                if grid is not None and not grid.fits(o):
                    rf, grid = _as_global(rf, REGROUPED), None
                if grid is None and rf is not None and (not rf.is_global or rf.has_grid):
                    rf = ReceptiveField.whole(rf.reason or NO_GRID)
            except Exception:  # an op we misread must never break the model's forward pass
                rf, grid = _UNKNOWN, None
            self.fields[id(o)] = (o, rf, grid)
            if grid is not None and grid.kind == "map":
                self.grids.add(grid.grid)
        return out

    def _written(self, args) -> None:
        """``x[index] = value``: a tracked value written into ``x`` lets its pixels in somewhere
        the index decides; the field of ``x`` gets global context (a sound bound)."""
        if len(args) < 3 or not isinstance(args[0], torch.Tensor) or not isinstance(args[2], torch.Tensor):
            return
        value = self._entry(args[2])
        if value is None:
            return
        target = self._entry(args[0])
        rf, grid = (target[1], target[2]) if target is not None else (None, None)
        if rf is None or rf.is_global:
            rf = _as_global(rf, "an in-place write (x[...] = y) of image-derived values")
        else:
            rf = ReceptiveField(rf.size, rf.jump, rf.start, True)
        self.fields[id(args[0])] = (args[0], rf, grid)

    # -- one operation ------------------------------------------------------------------------
    def _propagate(self, name, args, kwargs, inputs, out, k):
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        entry = self._entry(first) if first is not None else None
        x, rf, g = (first, entry[1], entry[2]) if entry is not None else inputs[0]
        if name in _SPATIAL:
            return self._spatial_op(name, args, kwargs, x, rf, g, out)
        if name in _ATTENTION_OPS:
            qe = self._entry(args[0] if args else kwargs.get("query"))
            qrf, qg = (qe[1], qe[2]) if qe is not None else (None, None)
            windowed = qg is None or (qrf is not None and qrf.reason == REGROUPED)
            reason = WINDOWED if windowed else ATTENTION
            if k > 0 or qg is None:  # attention weights; or queries whose positions are unknown
                return ReceptiveField.whole(reason), None
            return _as_global(qrf, reason), qg
        if name in _MATMULS:
            return self._matmul(name, args, kwargs, rf, g, x, out)
        if name in ("cat", "concat", "concatenate", "stack"):
            return self._concat(name, args, kwargs, out)
        if g is None:
            return _elementwise(name, inputs, out)
        if name in _PERMUTES:
            perm = _permutation(name, args, kwargs, x.dim())
            return rf, g.moved(perm.index(a) for a in g.axes)
        if name in _RESHAPES:
            return _regroup(rf, g, tuple(x.shape), tuple(out.shape))
        if name in ("__getitem__", "narrow", "select", "index_select", "unbind"):
            return _index(name, args, kwargs, rf, g, x, out, k)
        if name in ("split", "chunk", "tensor_split", "split_with_sizes", "unsafe_split"):
            dim = _norm_dim(kwargs.get("dim", args[2] if len(args) > 2 else 0), x.dim())
            return (rf, g) if dim not in g.axes else (_as_global(rf, REGROUPED), None)
        binary = (len(args) > 1 and isinstance(args[1], torch.Tensor)) or "other" in kwargs
        if name in _REDUCTIONS and not binary:
            return _reduce(name, args, kwargs, rf, g, x, out)
        if name in _ALONG_DIM:
            return _along_dim(name, args, kwargs, rf, g, x)
        if name in ("layer_norm", "rms_norm", "group_norm", "instance_norm"):
            rf, g = _elementwise(name, inputs, out)
            if name in ("layer_norm", "rms_norm"):
                shape = _arg(args, kwargs, 1, "normalized_shape")
                n = len(shape) if isinstance(shape, (list, tuple, torch.Size)) else 1
                over_positions = g is not None and any(a >= x.dim() - n for a in g.axes)
            else:
                over_positions = g is not None
            if over_positions and rf is not None and not rf.is_global:
                rf = ReceptiveField(rf.size, rf.jump, rf.start, True)
            return rf, g
        if name.rstrip("_") in _POINTWISE or name in _POINTWISE or (binary and name in ("max", "min")):
            return _elementwise(name, inputs, out)
        # an operation not known to act position by position (conv1d over tokens, grid_sample,
        # gather, rot90...): its positions may mix, so the field is global (a sound bound)
        rf, g = _elementwise(name, inputs, out)
        return _as_global(rf, f"{name} (not followed position by position)"), g

    def _spatial_op(self, name, args, kwargs, x, rf, g, out):
        ndim = x.dim()
        if name == "pad":
            if g is None or g.kind != "map" or rf is None:
                return _as_global(rf, REGROUPED), None
            if _arg(args, kwargs, 2, "mode", "constant") == "circular":
                pads = list(_arg(args, kwargs, 1, "pad"))
                grid = _Grid("map", g.axes, tuple(out.shape[a] for a in g.axes))
                if any(pads):
                    return _as_global(rf, "circular padding wraps the image around"), grid
                return rf, grid
            pad = list(_arg(args, kwargs, 1, "pad"))
            shift = []
            for a in g.axes:
                j = 2 * (ndim - 1 - a)
                shift.append(pad[j] if len(pad) > j + 1 else 0)
            start = tuple(rf.start[i] - shift[i] * rf.jump[i] for i in range(2))
            moved = ReceptiveField(rf.size, rf.jump, start, rf.global_context, rf.is_global, rf.reason)
            return moved, _Grid("map", g.axes, tuple(out.shape[a] for a in g.axes))
        if (
            g is None
            and ndim == 4
            and rf is not None
            and rf.is_global
            and x.shape[0] == self.batch
            and tuple(x.shape[2:]) in self.grids
        ):
            # a map rebuilt by views the mode did not follow (MobileViT's fold, torchvision
            # MaxViT's window departition): global already; anchor its grid evenly on the image
            # so that its layout and stride are known again
            jump = tuple(self.image_hw[i] / x.shape[2 + i] for i in range(2))
            rf = ReceptiveField.whole(rf.reason, jump, tuple((j - 1) / 2 for j in jump))
            g = _Grid("map", (2, 3), tuple(x.shape[2:]))
        if g is None or g.kind != "map" or g.axes != (ndim - 2, ndim - 1) or rf is None:
            return _as_global(rf, f"{name} on a tensor whose grid is not in its last two axes"), None
        out_hw = tuple(out.shape[-2:])
        grid = _Grid("map", (out.dim() - 2, out.dim() - 1), out_hw)
        if name in ("pixel_shuffle", "pixel_unshuffle"):
            r = int(
                _arg(args, kwargs, 1, "upscale_factor" if name == "pixel_shuffle" else "downscale_factor")
            )
            if name == "pixel_shuffle":
                return _on_grid(rf, lambda f: _depth_to_space(f, (r, r))), grid
            return _on_grid(rf, lambda f: _window(f, (r, r), (r, r), (0, 0), (1, 1))), grid
        if name in ("conv2d", "conv_transpose2d"):
            weight = _arg(args, kwargs, 1, "weight")
            if self._entry(weight) is not None and not rf.is_global:
                # weights computed from the image (CondConv, dynamic convolution)
                rf = ReceptiveField(rf.size, rf.jump, rf.start, True)
            kk = tuple(weight.shape[-2:])
            s = _pair(_arg(args, kwargs, 3, "stride", 1))
            d = _pair(_arg(args, kwargs, 5 if name == "conv2d" else 7, "dilation", 1))
            pad = _arg(args, kwargs, 4, "padding", 0)
            if name == "conv_transpose2d":
                return _on_grid(rf, lambda r: _transposed(r, kk, s, _pair(pad), d)), grid
            if pad == "valid":
                p = (0, 0)
            elif pad == "same":
                p = tuple(d[i] * (kk[i] - 1) // 2 for i in range(2))
            else:
                p = _pair(pad)
            return _on_grid(rf, lambda r: _window(r, kk, s, p, d)), grid
        if name == "lp_pool2d":
            kk = _pair(_arg(args, kwargs, 2, "kernel_size"))
            s = _pair(_arg(args, kwargs, 3, "stride"), kk)
            return _on_grid(rf, lambda r: _window(r, kk, s, (0, 0), (1, 1))), grid
        if name in ("max_pool2d", "avg_pool2d", "max_pool2d_with_indices"):
            kk = _pair(_arg(args, kwargs, 1, "kernel_size"))
            s = _pair(_arg(args, kwargs, 2, "stride"), kk)
            p = _pair(_arg(args, kwargs, 3, "padding", 0))
            d = _pair(_arg(args, kwargs, 4, "dilation", 1)) if "max" in name else (1, 1)
            return _on_grid(rf, lambda r: _window(r, kk, s, p, d)), grid
        if name.startswith("adaptive_"):
            return _on_grid(rf, lambda r: _adaptive(r, tuple(x.shape[-2:]), out_hw)), grid
        if name == "upsample_bilinear":
            mode, corners = "bilinear", True
        elif name == "upsample_nearest":
            mode, corners = "nearest", False
        else:  # interpolate, upsample
            mode = _arg(args, kwargs, 3, "mode", "nearest")
            corners = bool(_arg(args, kwargs, 4, "align_corners", False))
        if mode == "area":
            return _on_grid(rf, lambda r: _adaptive(r, tuple(x.shape[-2:]), out_hw)), grid
        return _on_grid(rf, lambda r: _resample(r, x.shape[-2:], out_hw, mode, corners)), grid

    def _concat(self, name, args, kwargs, out):
        tensors = list(_arg(args, kwargs, 0, "tensors"))
        dim = _norm_dim(_arg(args, kwargs, 1, "dim", 0), out.dim())
        tracked = [(i, e) for i, t in enumerate(tensors) if (e := self._entry(t)) is not None]
        grids = {e[2] for _, e in tracked}
        rf = _union_fields([e[1] for _, e in tracked])
        if name == "stack":
            if len(grids) != 1 or None in grids:
                return _as_global(rf, REGROUPED), None
            (g,) = grids
            return rf, g.moved(a + (a >= dim) for a in g.axes)
        if len(grids) == 1 and None not in grids and dim not in next(iter(grids)).axes:
            return rf, next(iter(grids))  # channels (DenseNet, Inception)
        i, last = len(tensors) - 1, self._entry(tensors[-1])
        tokens = last is not None and last[2] is not None and last[2].kind == "tokens"
        if tokens and last[2].axes == (dim,) and all(e[2] is None for j, e in tracked if j != i):
            # class, distillation and register tokens in front of the patch tokens (ViT, DeiT,
            # DINOv2), parameters or computed from the image (CaiT's class attention): the
            # laid-out map holds the patch tokens only, so their field is the map's
            g = last[2]
            before = sum(tensors[j].shape[dim] for j in range(i))
            return last[1], _Grid("tokens", g.axes, g.grid, g.prefix + before)
        return _as_global(rf, REGROUPED), None

    def _matmul(self, name, args, kwargs, rf, g, x, out):
        if name == "linear":
            if g is None or x.dim() - 1 not in g.axes:
                return rf, g
            mixed = _as_global(rf, "a linear layer across positions (token mixing)")
            return mixed, (g if out.shape[-1] == x.shape[-1] else None)
        if name == "einsum":
            return self._einsum(args, out)
        if name in ("addmm", "baddbmm", "addbmm", "addmv"):
            a, b = args[1], args[2]
        else:
            a, b = args[0], args[1]
        ea, eb = self._entry(a), self._entry(b)
        if a.dim() < 2 or b.dim() < 2:
            return _as_global(rf, REGROUPED), None
        grid, mixes, fields = None, False, []
        for t, e, contracted in ((a, ea, a.dim() - 1), (b, eb, b.dim() - 2)):
            if e is None:
                continue
            fields.append(e[1])
            tg = e[2]
            if tg is None:
                mixes = mixes or (e[1] is not None and e[1].is_global)
            elif contracted in tg.axes:
                mixes = True  # a product over positions mixes them (attention times values)
            elif grid is not None:
                mixes = True  # two position-indexed operands: attention scores pair positions
            else:  # batch axes broadcast from the right; rows of a and columns of b stay put
                grid = tg.moved(out.dim() - t.dim() + ax for ax in tg.axes)
        field = _union_fields(fields)
        if mixes:
            reason = WINDOWED if any(f is not None and f.reason == REGROUPED for f in fields) else ATTENTION
            return _as_global(field, reason), grid
        return field, grid

    def _einsum(self, args, out):
        eq = args[0].replace(" ", "")
        ops = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
        if "->" not in eq or "." in eq:
            raise ValueError("einsum without an explicit output")
        ins, res = eq.split("->")
        grid, mixes, fields = None, False, []
        for letters, t in zip(ins.split(","), ops):
            e = self._entry(t) if isinstance(t, torch.Tensor) else None
            if e is None:
                continue
            fields.append(e[1])
            if e[2] is None:
                mixes = mixes or (e[1] is not None and e[1].is_global)
                continue
            pos = [letters[a] for a in e[2].axes]
            if any(p not in res for p in pos) or grid is not None:
                mixes = True
            else:
                grid = e[2].moved(res.index(p) for p in pos)
        field = _union_fields(fields)
        if mixes:
            return _as_global(field, ATTENTION), grid
        return field, grid


_SPATIAL = {
    "conv2d",
    "conv_transpose2d",
    "max_pool2d",
    "avg_pool2d",
    "lp_pool2d",
    "max_pool2d_with_indices",
    "adaptive_avg_pool2d",
    "adaptive_max_pool2d",
    "adaptive_max_pool2d_with_indices",
    "pad",
    "interpolate",
    "upsample",
    "pixel_shuffle",
    "pixel_unshuffle",
    "upsample_bilinear",
    "upsample_nearest",
}
_ATTENTION_OPS = {
    "scaled_dot_product_attention",
    "multi_head_attention_forward",
    "_native_multi_head_attention",
}
_PERMUTES = {"permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "t", "T", "mT"}
_RESHAPES = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}
_REDUCTIONS = {
    "mean", "sum", "nansum", "nanmean", "amax", "amin", "max", "min", "std", "var", "norm",
    "logsumexp", "prod", "median", "std_mean", "var_mean", "argmax", "argmin",
}  # fmt: skip
_ALONG_DIM = {
    "softmax", "log_softmax", "softmin", "_softmax", "cumsum", "cumprod", "cummax", "cummin",
    "logcumsumexp", "normalize", "sort", "argsort", "flip", "roll", "topk",
}  # fmt: skip
_POINTWISE = {
    "add", "sub", "mul", "div", "true_divide", "floor_divide", "rsub", "neg", "negative", "pow",
    "float_power", "abs", "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sqrt", "rsqrt",
    "square", "reciprocal", "sign", "sgn", "erf", "erfc", "erfinv", "sin", "cos", "tan", "tanh",
    "sinh", "cosh", "asin", "acos", "atan", "atan2", "sigmoid", "logit", "relu", "relu6", "elu",
    "selu", "celu", "gelu", "silu", "mish", "hardtanh", "hardsigmoid", "hardswish", "hardshrink",
    "softshrink", "tanhshrink", "leaky_relu", "prelu", "rrelu", "threshold", "softplus",
    "softsign", "logsigmoid", "glu", "dropout", "dropout1d", "dropout2d", "dropout3d",
    "alpha_dropout", "feature_alpha_dropout", "native_dropout", "batch_norm", "clamp", "clip",
    "clamp_min", "clamp_max", "maximum", "minimum", "fmax", "fmin", "where", "masked_fill",
    "lerp", "addcmul", "addcdiv", "floor", "ceil", "round", "trunc", "frac", "nan_to_num",
    "clone", "contiguous", "detach", "to", "float", "half", "double", "bfloat16", "type",
    "type_as", "cpu", "cuda", "requires_grad", "expand", "expand_as", "copy", "fill", "zero",
    "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "bernoulli",
    "eq", "ne", "gt", "lt", "ge", "le", "logical_and", "logical_or", "logical_not", "isnan",
    "isfinite", "data", "real", "numpy", "new_zeros", "new_ones", "new_empty", "new_full",
    "__add__", "__radd__", "__iadd__", "__sub__", "__rsub__", "__isub__", "__mul__", "__rmul__",
    "__imul__", "__truediv__", "__rtruediv__", "__itruediv__", "__div__", "__idiv__", "__neg__",
    "__pow__", "__rpow__", "__ipow__", "__abs__", "__and__", "__or__", "__xor__", "__invert__",
    "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__floordiv__", "__mod__",
    "remainder", "fmod", "stochastic_depth", "drop_path", "__getattribute__",
}  # fmt: skip
_MATMULS = {"linear", "matmul", "mm", "bmm", "baddbmm", "addmm", "addbmm", "einsum", "__matmul__"}


def _permutation(name, args, kwargs, ndim) -> list[int]:
    """``perm`` with output axis ``i`` = input axis ``perm[i]``."""
    order = list(range(ndim))
    if name == "permute":
        dims = args[1:] if len(args) > 2 or (len(args) == 2 and isinstance(args[1], int)) else args[1]
        dims = kwargs.get("dims", dims)
        return [_norm_dim(d, ndim) for d in dims]
    if name in ("transpose", "swapaxes", "swapdims"):
        d0 = _norm_dim(_arg(args, kwargs, 1, "dim0"), ndim)
        d1 = _norm_dim(_arg(args, kwargs, 2, "dim1"), ndim)
        order[d0], order[d1] = order[d1], order[d0]
        return order
    if name in ("t", "mT"):
        order[-1], order[-2] = order[-2], order[-1]
        return order
    if name == "T":
        return order[::-1]
    src = _arg(args, kwargs, 1, "source")
    dst = _arg(args, kwargs, 2, "destination")
    src = [src] if isinstance(src, int) else list(src)
    dst = [dst] if isinstance(dst, int) else list(dst)
    src = [_norm_dim(s, ndim) for s in src]
    dst = [_norm_dim(d, ndim) for d in dst]
    rest = [a for a in order if a not in src]
    perm = [None] * ndim
    for s, d in zip(src, dst):
        perm[d] = s
    it = iter(rest)
    return [p if p is not None else next(it) for p in perm]


def _groups(a: tuple[int, ...], b: tuple[int, ...]):
    """The axes of shapes ``a`` and ``b`` paired into the smallest groups of equal product
    (axes of size 1 left out), or None."""
    ia = [i for i, s in enumerate(a) if s != 1]
    ib = [i for i, s in enumerate(b) if s != 1]
    groups, i, j = [], 0, 0
    while i < len(ia) and j < len(ib):
        ga, gb, pa, pb = [ia[i]], [ib[j]], a[ia[i]], b[ib[j]]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb:
                if i >= len(ia):
                    return None
                ga.append(ia[i])
                pa, i = pa * a[ia[i]], i + 1
            else:
                if j >= len(ib):
                    return None
                gb.append(ib[j])
                pb, j = pb * b[ib[j]], j + 1
        groups.append((ga, gb))
    return groups if i == len(ia) and j == len(ib) else None


def _regroup(rf, g: _Grid, a: tuple[int, ...], b: tuple[int, ...]):
    """The grid after a view/reshape from shape ``a`` to ``b``: axes moved, a (H, W) pair flattened
    into tokens, tokens split back into (H, W), or each position axis split into (blocks, k) - a
    space-to-depth (Swin's patch merging), whose blocks see a k-pixel window."""
    if a == b:
        return rf, g
    groups = _groups(a, b)
    if groups is None:
        return _as_global(rf, REGROUPED), None
    of = {ax: (ga, gb) for ga, gb in groups for ax in ga}
    if any(ax not in of for ax in g.axes):  # a 1 x 1 grid dropped: a vector
        return _as_global(rf, NO_GRID), None
    # positions merged into the batch axis (windows) or flattened into channels (a vector)
    lost = _as_global(rf, REGROUPED if any(0 in of[ax][0] for ax in g.axes) else NO_GRID), None
    if g.kind == "map":
        (ga_h, gb_h), (ga_w, gb_w) = of[g.axes[0]], of[g.axes[1]]
        if ga_h == ga_w:
            if ga_h == list(g.axes) and len(gb_h) == 1:
                return rf, _Grid("tokens", (gb_h[0],), g.grid)
            return lost
        axes, cell, fine = [], [], []
        for ga, gb in ((ga_h, gb_h), (ga_w, gb_w)):
            if len(ga) == 2 and len(gb) == 1 and ga[1] not in g.axes and ga[0] in g.axes:
                # depth-to-space: (blocks, k) merged back into one axis (MobileViT's fold,
                # torchvision MaxViT's window departition)
                axes.append(gb[0])
                cell.append(1)
                fine.append(a[ga[1]])
                continue
            fine.append(1)
            if len(ga) != 1:
                return lost
            if len(gb) == 1:
                axes.append(gb[0])
                cell.append(1)
            elif len(gb) == 2:
                axes.append(gb[0])
                cell.append(b[gb[1]])
            else:
                return lost
        grid = tuple(b[ax] for ax in axes)
        if cell != [1, 1]:
            rf = _on_grid(rf, lambda r: _window(r, cell, cell, (0, 0), (1, 1)))
        if fine != [1, 1]:
            rf = _on_grid(rf, lambda r: _depth_to_space(r, fine))
        return rf, _Grid("map", tuple(axes), grid)
    ga, gb = of[g.axes[0]]
    if len(ga) != 1:
        return lost
    if len(gb) == 1:
        return rf, g.moved(gb)
    if len(gb) == 2 and g.prefix == 0 and tuple(b[ax] for ax in gb) == g.grid:
        return rf, _Grid("map", tuple(gb), g.grid)
    return lost


def _index(name, args, kwargs, rf, g, x, out, k):
    ndim = x.dim()
    lost = _as_global(rf, REGROUPED), None
    if name == "unbind":
        dim = _norm_dim(_arg(args, kwargs, 1, "dim", 0), ndim)
        return (rf, g.moved(a - (a > dim) for a in g.axes)) if dim not in g.axes else lost
    if name in ("narrow", "select", "index_select"):
        dim = _norm_dim(_arg(args, kwargs, 1, "dim"), ndim)
        if dim not in g.axes:
            drop = name == "select"
            return rf, g.moved(a - (drop and a > dim) for a in g.axes)
        if name != "narrow":
            return lost
        start = _arg(args, kwargs, 2, "start")
        length = _arg(args, kwargs, 3, "length")
        items = [slice(None)] * dim + [slice(int(start), int(start) + int(length))]
    else:
        idx = args[1]
        items = list(idx) if isinstance(idx, tuple) else [idx]
    if any(not (i is None or i is Ellipsis or isinstance(i, (int, slice))) for i in items):
        return lost
    if Ellipsis in items:
        e = items.index(Ellipsis)
        used = sum(1 for i in items if i is not None and i is not Ellipsis)
        items = items[:e] + [slice(None)] * (ndim - used) + items[e + 1 :]
    items += [slice(None)] * (ndim - sum(1 for i in items if i is not None))
    out_axis, axis, where, cuts = 0, 0, {}, {}
    for item in items:
        if item is None:
            out_axis += 1
            continue
        if isinstance(item, int):
            where[axis] = None
        else:
            where[axis] = out_axis
            cuts[axis] = item.indices(x.shape[axis])
            out_axis += 1
        axis += 1
    if any(where.get(a) is None for a in g.axes):
        return lost
    if g.kind == "tokens":
        (a,) = g.axes
        start, stop, step = cuts[a]
        n = g.prefix + g.grid[0] * g.grid[1]
        if step == 1 and stop >= n and start in (0, g.prefix):
            return rf, _Grid("tokens", (where[a],), g.grid, g.prefix - start)
        return lost
    starts, jumps, grid = [], [], []
    for a in g.axes:
        begin, stop, step = cuts[a]
        if step <= 0:
            return lost
        grid.append(len(range(begin, stop, step)))
        starts.append(begin)
        jumps.append(step)
    if starts == [0, 0] and jumps == [1, 1]:
        return rf, _Grid("map", tuple(where[a] for a in g.axes), tuple(grid))

    def crop(r):
        start = tuple(r.start[i] + starts[i] * r.jump[i] for i in range(2))
        return ReceptiveField(r.size, tuple(r.jump[i] * jumps[i] for i in range(2)), start, r.global_context)

    return _on_grid(rf, crop), _Grid("map", tuple(where[a] for a in g.axes), tuple(grid))


def _reduce(name, args, kwargs, rf, g, x, out):
    ndim = x.dim()
    value = kwargs.get("dim", kwargs.get("axis"))
    if value is None:
        pos = 2 if name == "norm" else 1
        value = args[pos] if len(args) > pos and not isinstance(args[pos], (float, bool)) else None
    keep = out.dim() == ndim
    dims = _dims(value, ndim)
    if dims is None:
        if not keep:
            dims = set(range(ndim))
        else:
            dims = {i for i in range(ndim) if out.shape[i] == 1 and x.shape[i] != 1}
    if not dims & set(g.axes):
        return rf, g.moved(a - (0 if keep else sum(d < a for d in dims)) for a in g.axes)
    if not set(g.axes) <= dims or rf is None:
        return _as_global(rf, REGROUPED), None
    hw = g.grid
    pooled = _on_grid(rf, lambda r: _window(r, hw, hw, (0, 0), (1, 1)))
    if keep and g.kind == "map":
        return pooled, _Grid("map", g.axes, (1, 1))
    return pooled, None


def _along_dim(name, args, kwargs, rf, g, x):
    ndim = x.dim()
    if name == "roll":
        value = kwargs.get("dims", args[2] if len(args) > 2 else None)
        if value is None:
            return _as_global(rf, REGROUPED), None
        dims = _dims(value, ndim)
        if not dims & set(g.axes):
            return rf, g
        return _as_global(rf, "a cyclic shift (roll) of positions"), g
    if name == "flip":
        dims = _dims(kwargs.get("dims", args[1] if len(args) > 1 else None), ndim)
        return (rf, g) if not dims & set(g.axes) else (_as_global(rf, "a flip of positions"), g)
    if name == "normalize":
        dims = _dims(kwargs.get("dim", args[2] if len(args) > 2 else 1), ndim)
    elif name == "topk":
        dims = _dims(kwargs.get("dim", args[2] if len(args) > 2 else -1), ndim)
    else:
        dims = _dims(kwargs.get("dim", args[1] if len(args) > 1 else -1), ndim)
    if not dims & set(g.axes):
        return rf, g
    if name in ("sort", "argsort", "topk"):
        return _as_global(rf, REGROUPED), None
    return _as_global(rf, f"{name} over positions"), g


def _elementwise(name, inputs, out):
    """Broadcasting operations: inputs aligned on the output's grid add their fields; an input
    broadcast over positions (a squeeze-excitation gate, a pooled vector) adds global context;
    a same-sized input whose positions are not known makes the field global."""
    grid = None
    for t, _, g in inputs:
        off = out.dim() - t.dim()
        if g is not None and off >= 0:
            moved = g.moved(a + off for a in g.axes)
            if moved.fits(out):
                grid = moved
                break
    fields, context, unknown_reason = [], False, None
    for t, rf, g in inputs:
        off = out.dim() - t.dim()
        if grid is not None and g is not None and off >= 0 and g.moved(a + off for a in g.axes) == grid:
            fields.append(rf)
            continue
        if grid is None:
            fields.append(rf)
            continue
        sizes = [t.shape[a - off] if a - off >= 0 else 1 for a in grid.axes]
        if all(s == 1 for s in sizes):
            context = True  # broadcast over positions
        else:
            unknown_reason = (rf.reason if rf is not None and rf.is_global else None) or REGROUPED
    if grid is None:
        if any(g is not None for _, _, g in inputs):
            return _as_global(_union_fields(fields), f"{name} changes the positions"), None
        return _union_fields(fields) or ReceptiveField.whole(NO_GRID), None
    rf = _union_fields(fields)
    if unknown_reason is not None:
        return _as_global(rf, unknown_reason), grid
    if rf is not None and context and not rf.is_global and not rf.global_context:
        rf = ReceptiveField(rf.size, rf.jump, rf.start, True)
    return rf, grid


def _union_fields(fields) -> ReceptiveField | None:
    if not fields or any(f is _UNKNOWN for f in fields):
        return _UNKNOWN
    glob = [f for f in fields if f.is_global]
    if glob:
        grid = [f for f in fields if f.has_grid]
        if not grid:
            return glob[0]
        jump = tuple(max(f.jump[i] for f in grid) for i in range(2))
        return ReceptiveField.whole(glob[0].reason, jump, grid[0].start)
    return _union(fields)


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


def _depth_to_space(rf: ReceptiveField, k) -> ReceptiveField:
    """Each block of ``k`` fine positions holds what one coarse unit saw: the fine grid is ``k``
    times denser, and a fine unit's field is the coarse one, whose centre is within half a
    coarse step of the fine unit's: one coarse step wider keeps the box sound."""
    jump = tuple(rf.jump[i] / k[i] for i in range(2))
    start = tuple(rf.start[i] - (k[i] - 1) / 2 * jump[i] for i in range(2))
    size = tuple(rf.size[i] + (rf.jump[i] if k[i] > 1 else 0) for i in range(2))
    return ReceptiveField(size, jump, start, rf.global_context)


def _adaptive(rf: ReceptiveField, in_hw, out_hw) -> ReceptiveField:
    """Adaptive pooling: output ``i`` pools inputs ``floor(i * n / m) .. ceil((i + 1) * n / m) - 1``.
    Where ``m`` divides ``n`` that is a window; otherwise (also when pooling up, ``m > n``) bin
    centres sit within half an input step of ``(i + 1/2) n / m - 1/2``, and the field is the
    widest bin plus that half step on each side."""
    size, jump, start = [], [], []
    for i in range(2):
        n, m = int(in_hw[i]), int(out_hw[i])
        k, stride = math.ceil(n / m), max(n // m, 1)
        bins = [(math.floor(j * n / m), math.ceil((j + 1) * n / m)) for j in range(m)]
        if all(lo == j * stride and hi - lo == k for j, (lo, hi) in enumerate(bins)):
            # the bins are a window of k with stride s (8 -> 7: k 2, s 1): exact
            size.append(rf.size[i] + (k - 1) * rf.jump[i])
            jump.append(rf.jump[i] * stride)
            start.append(rf.start[i] + (k - 1) / 2 * rf.jump[i])
            continue
        if n % m == 0:
            k = n // m
            size.append(rf.size[i] + (k - 1) * rf.jump[i])
            jump.append(rf.jump[i] * k)
            start.append(rf.start[i] + (k - 1) / 2 * rf.jump[i])
            continue
        widest = max(math.ceil((j + 1) * n / m) - math.floor(j * n / m) for j in range(m))
        size.append(rf.size[i] + widest * rf.jump[i])
        jump.append(rf.jump[i] * n / m)
        start.append(rf.start[i] + (0.5 * n / m - 0.5) * rf.jump[i])
    return ReceptiveField(tuple(size), tuple(jump), tuple(start), rf.global_context)


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


def _transposed(rf, k, s, p, d) -> ReceptiveField:
    # Output o of a transposed convolution reads inputs i with i * s = o + p - t * d, t < k.
    size = tuple(rf.size[i] + math.ceil((k[i] - 1) * d[i] / s[i]) * rf.jump[i] for i in range(2))
    jump = tuple(rf.jump[i] / s[i] for i in range(2))
    start = tuple(rf.start[i] + (p[i] - (k[i] - 1) * d[i] / 2) * jump[i] for i in range(2))
    return ReceptiveField(size, jump, start, rf.global_context)


def _resample(rf, in_hw, out_hw, mode, align_corners=False) -> ReceptiveField:
    """Interpolation: output ``i`` samples input coordinate ``c = (i + 1/2) / scale - 1/2``
    (``i (n - 1) / (m - 1)`` with ``align_corners``) and reads the pixels around it: nearest
    one within ``(r + 1) / 2`` of ``c`` (``r = n / m``; torch's legacy nearest is not centred),
    linear modes the two either side, bicubic four."""
    size, jump, start = [], [], []
    for i in range(2):
        n, m = float(in_hw[i]), float(out_hw[i])
        r = n / m
        if align_corners and m > 1:
            step = (n - 1) / (m - 1)
            jump.append(rf.jump[i] * step)
            start.append(rf.start[i])
        else:
            step = r
            jump.append(rf.jump[i] * r)
            start.append(rf.start[i] + (0.5 * r - 0.5) * rf.jump[i])
        if mode.startswith("nearest"):
            extra = r + 1.0 if mode == "nearest" else 1.0
        elif mode == "bicubic":
            extra = 4.0
        else:  # linear, bilinear, trilinear (no antialias): the neighbours either side
            extra = 2.0
        if step > 1 and not mode.startswith("nearest"):
            extra += step - 1  # antialiased downsampling reads a wider support
        size.append(rf.size[i] + extra * rf.jump[i])
    return ReceptiveField(tuple(size), tuple(jump), tuple(start), rf.global_context)


def _tensors(args, kwargs):
    stack = list(args) + list(kwargs.values())
    while stack:
        a = stack.pop()
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            stack.extend(a)
