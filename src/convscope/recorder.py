"""Recorder: the one place in convscope that puts hooks on a model.

Hooks are global state on the modules: a hook left behind silently changes every later
forward pass. A Recorder adds its hooks on ``__enter__`` and removes them all on ``__exit__``,
also when the body raises. Recorders nest; each sees its own layers.

    with subject.record(["features.3", "features.8"]) as rec:
        subject(x)
    rec["features.3"]            # Tensor (N, C, H, W), detached, safe from in-place ops

Recorded values are copies where needed: a later in-place operation (``ReLU(inplace=True)``,
``out += identity``) would otherwise change what was recorded. A module that runs several
times per forward pass is recorded per call (``rec["layer1.0.relu#1"]``), never mixed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch
from torch import nn

from convscope.errors import AmbiguousLayerError, LayerNotFoundError, RecordingError
from convscope.layers import LayerSpec, LayerTable, parse_address, resolve_module_names

if TYPE_CHECKING:
    from convscope.tokens import TokenLayout

Selector = int | str | Callable[[Any], torch.Tensor]
Edit = Callable[[torch.Tensor], torch.Tensor]


class StopForward(Exception):
    """Raised inside a forward pass once every requested layer is recorded (``stop=True``)."""


def ablate(channels: int | Sequence[int] | None = None) -> Edit:
    """An edit that zeroes the given channels (dim 1) of a layer's output, or all of it."""

    def edit(t: torch.Tensor) -> torch.Tensor:
        if channels is None:
            return torch.zeros_like(t)
        out = t.clone()
        out[:, list(channels) if not isinstance(channels, int) else [channels]] = 0
        return out

    return edit


class Recordable(Protocol):
    """What a :class:`Recorder` needs of a subject: its model, layer table and token layout
    (:class:`~convscope.Subject` has them)."""

    model: nn.Module
    layers: LayerTable
    token_layout: TokenLayout | None


class Recorder:
    """Capture (and optionally edit) the outputs of named layers during forward passes.

    Args:
        target: a :class:`~convscope.Subject` (layer names may be aliases, globs) or any ``nn.Module``.
        layers: addresses to record (``"features.3"``, ``"layer1.0.relu#1"``, ``"blocks.5.*"``).
        stop: end the forward pass (raise :class:`StopForward`) once all layers are recorded;
            ``Subject.__call__`` turns that into a ``None`` result, and the ``with`` block too.
        detach: store detached tensors. False keeps the autograd graph (gradient methods): an
            output that a later in-place op would overwrite is then stored as is and a copy
            flows onward, so ``autograd.grad(score, rec[layer])`` is the gradient of that layer.
        clone: ``"auto"`` copies outputs that a later in-place operation would overwrite (known
            from the subject's layer table; always for bare modules), True/False forces it.
        edits: ``{address: fn}``; ``fn(output) -> new output`` replaces what flows onward (and
            what is recorded). :func:`ablate` builds the common one.
        select: ``{address: int | str | fn}`` picks the tensor from tuple, dict or
            ``ModelOutput`` outputs; a single tensor inside a container is picked automatically.
        tokens: lay out every output with a grid as a (B, C, H, W) map, by its layer's
            :class:`~convscope.layout.Layout` (channels-last blocks, transformer tokens); edits
            then see and return that map too. False records raw outputs.
        keep: store values (False with ``callback`` to stream them instead).
        callback: ``fn(address, call_index, raw_output)`` called for every recorded call.

    Values come from the most recent forward pass of the model.
    """

    def __init__(
        self,
        target: Recordable | nn.Module,
        layers: LayerSpec,
        *,
        stop: bool = False,
        detach: bool = True,
        clone: bool | Literal["auto"] = "auto",
        edits: Mapping[str, Edit] | None = None,
        select: Mapping[str, Selector] | None = None,
        tokens: bool = True,
        keep: bool = True,
        callback: Callable[[str, int, Any], None] | None = None,
    ):
        if not isinstance(target, nn.Module) and all(
            hasattr(target, a) for a in ("model", "layers", "token_layout")
        ):
            self.model = target.model
            self._table = target.layers
            self._maps = tokens
            self.addresses = self._table.resolve(layers)
            resolve = self._table.resolve
        elif isinstance(target, nn.Module):
            self.model = target
            self._table = None
            self._maps = False
            self.addresses = resolve_module_names(target, layers)
            resolve = lambda spec: resolve_module_names(target, spec)  # noqa: E731
        else:
            raise TypeError(f"Recorder needs a Subject or nn.Module, not {type(target).__name__}")
        if isinstance(self.model, torch.jit.ScriptModule):
            raise RecordingError(
                "TorchScript models cannot take Python hooks, so their layers cannot be recorded; "
                "load the checkpoint with its architecture (--arch ARCH, arch=... in Python) instead"
            )
        self.stop, self.detach, self.clone, self.keep = stop, detach, clone, keep
        self.callback = callback
        self._edits = {a: fn for spec, fn in (edits or {}).items() for a in resolve(spec)}
        self._select = {a: s for spec, s in (select or {}).items() for a in resolve(spec)}
        # module path -> requested call indices (None = every call)
        self._wanted: dict[str, set[int] | None] = {}
        for address in self.addresses:
            module, call = parse_address(address)
            if call is None:
                self._wanted[module] = None
            elif self._wanted.get(module, set()) is not None:
                self._wanted.setdefault(module, set()).add(call)
        for address in self._edits:
            self._wanted.setdefault(parse_address(address)[0], None)
        modules = dict(self.model.named_modules())
        self._modules = {name: modules[name] for name in self._wanted}
        self._handles: list[Any] = []
        self._counts: dict[str, int] = defaultdict(int)
        self._values: dict[str, dict[int, torch.Tensor]] = defaultdict(dict)
        self._pending: set[tuple[str, int]] = set()
        self._image_hw: tuple[int, int] | None = None  # the latest model input (H, W)
        # per module, the layout of each call, looked up once rather than in every hook call
        self._layouts = (
            {m: [i.layout for i in self._table.calls(m)] for m in self._wanted} if self._maps else {}
        )

    # -- context -----------------------------------------------------------------------------
    def __enter__(self) -> Recorder:
        self._pending = self._required_calls()
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._reset))
            for name, module in self._modules.items():
                self._handles.append(module.register_forward_hook(self._make_hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.remove()
        return exc_type is not None and issubclass(exc_type, StopForward)

    def remove(self) -> None:
        """Remove every hook this recorder added (idempotent)."""
        while self._handles:
            self._handles.pop().remove()

    # -- hooks -------------------------------------------------------------------------------
    def _reset(self, module, args) -> None:
        x = args[0] if args else None
        self._image_hw = tuple(x.shape[-2:]) if isinstance(x, torch.Tensor) and x.dim() == 4 else None
        self._counts.clear()
        self._values.clear()
        self._pending = self._required_calls()

    def _required_calls(self) -> set[tuple[str, int]]:
        needed = set()
        for module, calls in self._wanted.items():
            if calls is None:
                n = len(self._table.calls(module)) if self._table is not None else 1
                calls = range(max(n, 1))
            needed.update((module, c) for c in calls)
        return needed

    def _make_hook(self, name: str):
        def hook(module, inputs, output):
            call = self._counts[name]
            self._counts[name] += 1
            wanted = self._wanted[name]
            if wanted is not None and call not in wanted:
                return None
            address = name if wanted is None else f"{name}#{call}"
            replaced = None
            edit = self._edits.get(address) or self._edits.get(name)
            if edit is not None:
                raw = self._pick(address, name, output)
                layout = self._layout(name, call, raw)
                new = edit(layout.to_map(raw) if layout else raw)
                replaced = _replace(output, layout.from_map(new, raw) if layout else new)
                output = replaced
            if self.callback is not None:
                self.callback(address, call, output)
            if self.keep:
                value = self._pick(address, name, output)
                if (
                    not self.detach
                    and replaced is None
                    and isinstance(output, torch.Tensor)
                    and self.clone is not False
                    and self._overwritten_later(address, name)
                ):
                    # Keep the graph node itself and send a copy onward: the later in-place op
                    # then changes the copy, and gradients with respect to `value` stay those
                    # of this layer's output.
                    replaced = output.clone()
                    layout = self._layout(name, call, value)
                    self._values[name][call] = layout.to_map(value) if layout else value
                else:
                    self._values[name][call] = self._store(address, name, call, value)
            self._pending.discard((name, call))
            if self.stop and not self._pending:
                raise StopForward
            return replaced

        return hook

    def extract(self, address: str, output: Any) -> torch.Tensor:
        """The recorded form of a raw layer output (as a ``callback`` receives it): the selected
        tensor, token outputs turned into maps; not detached or copied."""
        module, call = parse_address(address)
        t = self._pick(address, module, output)
        layout = self._layout(module, call or 0, t)
        return layout.to_map(t) if layout is not None else t

    def _layout(self, module: str, call: int, t: torch.Tensor):
        """The layout to record call ``call`` of ``module`` with (None: as it is): the layer
        table's, its grid fitted to this output (another input size gives another grid)."""
        if not self._maps or not isinstance(t, torch.Tensor):
            return None
        layouts = self._layouts.get(module, ())
        layout = layouts[call] if call < len(layouts) else None
        if layout is None or layout.kind == "channels_first":
            return None
        # the grid of this input size, which may not be the probe's
        return layout.adapt(t, self._image_hw)

    def _pick(self, address: str, name: str, output) -> torch.Tensor:
        sel = self._select.get(address, self._select.get(name))
        return select_tensor(output, sel, name)

    def _store(self, address: str, name: str, call: int, t: torch.Tensor) -> torch.Tensor:
        if self.detach:
            t = t.detach()
        if self.clone is True or (self.clone == "auto" and self._overwritten_later(address, name)):
            t = t.clone()
        layout = self._layout(name, call, t)
        return layout.to_map(t) if layout is not None else t

    def _overwritten_later(self, address: str, name: str) -> bool:
        if self._table is None:
            return True
        try:
            infos = [self._table.get(address)] if "#" in address else self._table.calls(name)
        except (KeyError, LayerNotFoundError):
            return True
        return not infos or any(i.mutated for i in infos)

    # -- access ------------------------------------------------------------------------------
    def __getitem__(self, address: str) -> torch.Tensor:
        """The recorded output at ``address`` from the latest forward pass."""
        if self._table is not None and address in self._table.aliases:
            address = self._table.aliases[address]
        module, call = parse_address(address)
        calls = self._values.get(module)
        if not calls:
            if module not in self._wanted:
                raise LayerNotFoundError(address, self.addresses, what="recorded layer")
            raise KeyError(f"{address!r} has not run since recording started")
        if call is None:
            if len(calls) > 1:
                raise AmbiguousLayerError(
                    f"{module!r} ran {len(calls)} times in one forward pass; use one of "
                    + ", ".join(f"{module}#{c}" for c in sorted(calls))
                )
            return next(iter(calls.values()))
        if call not in calls:
            raise KeyError(f"{address!r} was not recorded (recorded calls: {sorted(calls)})")
        return calls[call]

    def calls(self, module: str) -> list[torch.Tensor]:
        """Every recorded call of ``module`` in the latest forward pass, in call order."""
        return [v for _, v in sorted(self._values.get(module, {}).items())]

    def keys(self) -> list[str]:
        out = []
        for module, calls in self._values.items():
            if self._wanted.get(module) is None and len(calls) == 1:
                out.append(module)
            else:
                out.extend(f"{module}#{c}" for c in sorted(calls))
        return out

    def items(self):
        return [(k, self[k]) for k in self.keys()]

    def __contains__(self, address: str) -> bool:
        return address in self.keys()

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in self.items())
        return f"Recorder({inner or ', '.join(self.addresses)})"


def select_tensor(output: Any, selector: Selector | None, name: str = "layer") -> torch.Tensor:
    """The tensor within a layer output: itself, ``output[selector]``, or the only tensor inside."""
    if callable(selector) and not isinstance(selector, (int, str)):
        return selector(output)
    if selector is not None:
        return output[selector]
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        tensors = {k: v for k, v in output.items() if isinstance(v, torch.Tensor)}
    elif isinstance(output, (tuple, list)):
        tensors = {i: v for i, v in enumerate(output) if isinstance(v, torch.Tensor)}
    else:
        raise RecordingError(f"output of {name!r} is a {type(output).__name__}, not a tensor")
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    raise RecordingError(
        f"output of {name!r} is a {type(output).__name__} holding {len(tensors)} tensors "
        f"({', '.join(map(str, tensors))}); pick one with select={{{name!r}: KEY}}"
    )


def _replace(output: Any, new: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return new
    raise RecordingError("edits are supported on layers whose output is a single tensor")
