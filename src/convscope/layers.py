"""Layer addressing: every layer by its dotted ``named_modules()`` path, with a table of facts.

An address is a module path (``"features.10"``, ``"layer4.1.conv2"``). A module that runs
several times in one forward pass (torchvision's ResNet blocks reuse one ReLU) has one address
per call, ``"layer1.0.relu#0"``, ``"layer1.0.relu#1"``; its bare path means "every call".
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from torch import nn

from convscope.errors import AmbiguousLayerError, LayerNotFoundError, UserInputError
from convscope.layout import Layout
from convscope.receptive import ReceptiveField

LayerSpec = str | Callable[["LayerInfo"], bool] | Iterable["str | LayerInfo | Callable[[LayerInfo], bool]"]
"""What every verb accepts as ``layers``: see :meth:`LayerTable.select`."""
SELECTION_WORDS = ("stages", "all-conv")


class Address(str):
    """A layer address that :meth:`LayerTable.select` returned: selecting it again gives it back
    as is (a module named like a word, timm's ``stages``, stays that module), never re-expanded
    or split at commas."""

    __slots__ = ()


_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_POOL = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d)


def parse_address(address: str) -> tuple[str, int | None]:
    """``"layer1.0.relu#1"`` -> ``("layer1.0.relu", 1)``; ``"features.3"`` -> ``("features.3", None)``."""
    module, sep, call = address.partition("#")
    if not sep:
        return module, None
    try:
        return module, int(call)
    except ValueError:
        raise UserInputError(
            f"bad layer address {address!r}: the part after '#' must be a call number"
        ) from None


@dataclass(frozen=True)
class LayerInfo:
    """One addressable layer: where it is, what it is, what it outputs for one input image.

    ``shape`` excludes the batch dimension (``(C, H, W)`` for maps) and is None for modules that
    did not run or returned no single tensor; ``units`` is the channel count (the last dimension
    for non-map outputs); ``order`` is the position in which the layer finished during forward.
    ``mutated`` says a later in-place operation overwrites this output (so recordings copy it).
    ``layout`` says where the raw output holds the image grid (NCHW, NHWC, tokens: see
    :mod:`convscope.layout`); recordings are laid out as (C, H, W) maps, which ``shape`` gives.
    ``traced`` says the facts come from a probe pass (not from stored names or an atlas).
    ``per_image`` is False for outputs whose leading axis is not the image batch (windowed
    attention folds windows into it: Swin's, MaxViT's ``attn``): they record as they are.
    """

    name: str
    module: str
    call: int | None
    type: str
    shape: tuple[int, ...] | None
    rf: ReceptiveField | None
    mutated: bool = False
    order: int = -1
    layout: Layout | None = None
    per_image: bool = True
    traced: bool = False

    @property
    def units(self) -> int | None:
        if not self.shape:
            return None
        return self.shape[0] if len(self.shape) == 3 else self.shape[-1]

    @property
    def is_map(self) -> bool:
        """Whether the output is a spatial map (C, H, W). In a traced table (``traced``) that
        needs a layout: a 3-d output whose grid is elsewhere (per-head queries (heads, N, d),
        a transposed (C, W, H) map) is not one."""
        if self.shape is None or len(self.shape) != 3:
            return False
        return self.layout is not None or not self.traced


class LayerTable(Sequence[LayerInfo]):
    """All addressable layers of a model, in module order, with aliases and glob selection."""

    def __init__(
        self,
        infos: Iterable[LayerInfo],
        module_types: dict[str, type] | None = None,
        aliases: dict[str, str] | None = None,
        what: str = "layer",
    ):
        """``aliases``: the short names to use (default: made from the layers, see
        :func:`_make_aliases`); ``what``: how errors name a layer (``"scanned layer"``)."""
        self._infos = list(infos)
        self._by_name = {i.name: i for i in self._infos}
        self._calls: dict[str, list[LayerInfo]] = {}
        for info in self._infos:
            self._calls.setdefault(info.module, []).append(info)
        self._types = module_types or {}
        self.what = what
        self.aliases = _make_aliases(self._infos, self._types) if aliases is None else dict(aliases)

    @classmethod
    def from_names(cls, names: Iterable[str], what: str = "layer") -> LayerTable:
        """A table of stored layers known by name only (a feature set's, say): it selects by
        names, globs, comma lists and callables, as the model's table does."""
        infos = [
            LayerInfo(n, parse_address(n)[0], parse_address(n)[1], "", None, None, order=i)
            for i, n in enumerate(names)
        ]
        return cls(infos, aliases={}, what=what)

    def __len__(self) -> int:
        return len(self._infos)

    def __iter__(self) -> Iterator[LayerInfo]:
        return iter(self._infos)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (
            name in self._by_name or name in self._calls or name in self.aliases
        )

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, (int, slice)):
            return self._infos[key]
        return self.get(key)

    def names(self) -> list[str]:
        return [i.name for i in self._infos]

    def calls(self, module: str) -> list[LayerInfo]:
        """One entry per call of ``module`` in a forward pass (empty if it never ran or is unknown)."""
        return list(self._calls.get(module, []))

    def get(self, name: str) -> LayerInfo:
        """The layer at ``name`` (an address or an alias such as ``conv5``)."""
        name = self.aliases.get(name, name)
        if name in self._by_name:
            return self._by_name[name]
        calls = self._calls.get(name)
        if calls:
            raise AmbiguousLayerError(
                f"{name!r} runs {len(calls)} times per forward pass; say which call: "
                + ", ".join(c.name for c in calls)
            )
        raise LayerNotFoundError(
            name, list(self._by_name) + list(self.aliases), what=self.what, layers=self._by_name
        )

    def select(self, spec: LayerSpec) -> list[str]:
        """Addresses named by ``spec``, the one layer vocabulary of every verb and reader:

        - an address (``"layer4.1.conv2"``, ``"layer1.0.relu#1"``) or an alias (``"conv5"``);
        - a glob over addresses and aliases (``"blocks.5.*"``, ``"conv*"``);
        - ``"stages"``: the last layer of each resolution stage (:meth:`stages`);
        - ``"all-conv"``: every convolution that ran (:meth:`convolutions`);
        - a callable ``LayerInfo -> bool``, keeping the layers it accepts, in forward order;
        - a comma-separated string or a list of any of those.

        The words win over a module of the same name (timm's ConvNeXt has a ``stages``
        module): address that one with a glob such as ``"stage[s]"``.

        A bare module path of a module that runs several times stays as is (it means every
        call). Order follows the spec, duplicates are dropped. Anything that matches nothing
        raises :class:`~convscope.errors.LayerNotFoundError` with the closest names, before any
        work starts.
        """
        out: list[str] = []
        for item in _split(spec):
            if isinstance(item, Address):
                if item not in self._by_name and item not in self._calls:
                    raise LayerNotFoundError(item, list(self._by_name), what=self.what, layers=self._by_name)
                found = [item]
            elif callable(item):
                found = [i.name for i in sorted(self._infos, key=lambda i: i.order) if item(i)]
                what = getattr(item, "__name__", "layer filter")
                if not found:
                    raise UserInputError(f"the layer filter {what} accepts no layer of the model")
            elif item in SELECTION_WORDS:
                infos = self.stages() if item == "stages" else self.convolutions()
                found = [i.name for i in infos]
                if not found:
                    raise UserInputError(f"the model has no layers for {item!r}")
            else:
                found = self._match(item)
            out.extend(Address(f) for f in found if f not in out)
        return out

    def resolve(self, spec: LayerSpec) -> list[str]:
        """Same as :meth:`select` (the older name)."""
        return self.select(spec)

    def _match(self, item: str) -> list[str]:
        item = self.aliases.get(item, item)
        if item in self._by_name or item in self._calls:
            return [item]
        found: list[str] = []
        if any(ch in item for ch in "*?["):
            found = [n for n in self._by_name if fnmatch.fnmatchcase(n, item)]
            found += [t for a, t in self.aliases.items() if fnmatch.fnmatchcase(a, item)]
        if not found:
            words = list(self._by_name) + list(self.aliases) + list(SELECTION_WORDS)
            raise LayerNotFoundError(item, words, what=self.what, layers=self._by_name)
        return found

    def convolutions(self) -> list[LayerInfo]:
        """Every convolution that ran, in forward order."""
        convs = [
            i
            for i in self._infos
            if i.shape is not None and issubclass(self._types.get(i.module, object), _CONV)
        ]
        return sorted(convs, key=lambda i: i.order)

    def stages(self) -> list[LayerInfo]:
        """The last shallow layer (module depth <= 1) of each resolution stage, in forward order:
        one representative map per stride (e.g. ResNet's layer1..layer4; a ViT's final norm,
        its one stage: attention makes its fields global, but its tokens keep their grid)."""
        maps = [
            i
            for i in self._infos
            if i.is_map and i.rf is not None and i.rf.has_grid and i.module.count(".") <= 1 and i.shape[1] > 1
        ]
        by_stride: dict = {}
        for info in sorted(maps, key=lambda i: i.order):
            by_stride[info.rf.jump] = info
        return list(by_stride.values())

    def format(self) -> str:
        """A plain-text table: name, type, output shape, units, receptive field size, stride,
        layout (where the raw output holds the grid) and, for global fields, why."""
        rows = [LAYER_COLUMNS]
        for i in self._infos:
            rows.append(layer_row(i))
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)

    def __repr__(self) -> str:
        return f"LayerTable({len(self)} layers)"


LAYER_COLUMNS = ("name", "type", "output", "units", "rf", "stride", "layout", "why")
"""The columns of :func:`layer_row`."""


def layer_row(info: LayerInfo) -> tuple[str, ...]:
    """One table row of strings for ``info``, in :data:`LAYER_COLUMNS` order. A global field
    keeps the stride of its grid (a transformer's tokens) and says why it is global."""
    shape = "x".join(str(s) for s in info.shape) if info.shape else "-"
    units = str(info.units) if info.units is not None else "-"
    rf = info.rf
    why = ""
    if rf is None:
        size = stride = "?"
    elif rf.is_global:
        size, why = "global", rf.reason
        grid = ReceptiveField((1.0, 1.0), rf.jump, rf.start)
        stride = str(grid).split("stride ")[1] if rf.has_grid else "-"
    else:
        text = str(rf)
        size = text.split(" px")[0] + ("+g" if rf.global_context else "")
        stride = text.split("stride ")[1].split(" ")[0]
    layout = str(info.layout) if info.layout is not None else ("-" if info.per_image else "windows")
    return info.name, info.type, shape, units, size, stride, layout, why


def resolve_module_names(model: nn.Module, spec: LayerSpec) -> list[str]:
    """Addresses for a bare ``nn.Module`` (no layer table): module paths, ``#call`` and globs."""
    names = [n for n, _ in model.named_modules() if n]
    known = set(names)
    out: list[str] = []
    for item in _split(spec):
        module, _ = (None, None) if callable(item) else parse_address(item)
        if module in known:  # a module named like a word (timm's ConvNeXt has `stages`) is that module
            found = [item]
        elif callable(item) or item in SELECTION_WORDS:
            what = getattr(item, "__name__", item)
            raise UserInputError(f"layer {what!r} needs a layer table: use a Subject")
        elif any(ch in item for ch in "*?["):
            found = [n for n in names if fnmatch.fnmatchcase(n, item)]
        else:
            found = []
        if not found:
            raise LayerNotFoundError(item, names)
        out.extend(f for f in found if f not in out)
    return out


def _split(spec: LayerSpec) -> list:
    """The items of a spec: strings stripped and split at commas, LayerInfos as their names,
    callables kept."""
    parts = [spec] if isinstance(spec, str) or callable(spec) or isinstance(spec, LayerInfo) else list(spec)
    items: list = []
    for part in parts:
        if isinstance(part, LayerInfo):
            items.append(Address(part.name))
        elif isinstance(part, Address) or callable(part):
            items.append(part)
        else:
            items.extend(s.strip() for s in str(part).split(","))
    items = [s for s in items if callable(s) or s]
    if not items:
        raise UserInputError("no layer given")
    return items


def _make_aliases(infos: list[LayerInfo], types: dict[str, type]) -> dict[str, str]:
    """Caffe-style short names: ``conv{n}``/``fc{n}`` number convolutions then linear layers in
    execution order (AlexNet: conv1..conv5, fc6..fc8); ``pool{n}`` is the pooling after ``conv{n}``."""
    aliases: dict[str, str] = {}
    n, last_conv = 0, None
    for info in sorted((i for i in infos if i.shape is not None), key=lambda i: i.order):
        cls = types.get(info.module)
        if cls is None:
            continue
        if issubclass(cls, _CONV):
            n += 1
            aliases[f"conv{n}"] = info.name
            last_conv = n
        elif issubclass(cls, nn.Linear):
            n += 1
            aliases[f"fc{n}"] = info.name
        elif issubclass(cls, _POOL) and last_conv is not None and f"pool{last_conv}" not in aliases:
            aliases[f"pool{last_conv}"] = info.name
    return {a: t for a, t in aliases.items() if a not in {i.name for i in infos}}
