"""What a study is about: a unit (channel, optionally at one position) or a direction in a layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from convscope.errors import UserInputError


@dataclass(frozen=True)
class Unit:
    """Channel ``channel`` of layer ``layer``; with ``y, x`` set, the single neuron at that map position."""

    layer: str
    channel: int
    y: int | None = None
    x: int | None = None

    @classmethod
    def parse(cls, text: str | Unit) -> Unit:
        """Parse ``"layer:channel"`` or ``"layer:channel@y,x"`` (e.g. ``"blocks.5.2:17@3,4"``)."""
        if isinstance(text, Unit):
            return text
        layer, sep, rest = str(text).rpartition(":")
        if not sep or not layer:
            raise UserInputError(f"unit {text!r} is not of the form 'layer:channel[@y,x]'")
        chan, _, pos = rest.partition("@")
        try:
            channel = int(chan)
            y, x = (int(v) for v in pos.split(",")) if pos else (None, None)
        except ValueError:
            raise UserInputError(f"unit {text!r} is not of the form 'layer:channel[@y,x]'") from None
        return cls(layer, channel, y, x)

    def __str__(self) -> str:
        pos = f"@{self.y},{self.x}" if self.y is not None else ""
        return f"{self.layer}:{self.channel}{pos}"


@dataclass(frozen=True, eq=False)
class Direction:
    """A direction in a layer's channel space: activation score = sum_c vector[c] * act[c]."""

    layer: str
    vector: torch.Tensor  # (C,)
    name: str = ""

    @classmethod
    def random(cls, layer: str, channels: int, n: int, seed: int = 0) -> list[Direction]:
        """``n`` random unit-norm directions (Gaussian, normalised), reproducible from ``seed``."""
        gen = torch.Generator().manual_seed(seed)
        vecs = torch.randn(n, channels, generator=gen)
        vecs = vecs / vecs.norm(dim=1, keepdim=True)
        return [cls(layer, v, name=f"random{i}") for i, v in enumerate(vecs)]

    def __str__(self) -> str:
        return f"{self.layer}:{self.name or 'direction'}"


@runtime_checkable
class Basis(Protocol):
    """Units that are not channels: maps (B, C, H, W) float32 -> codes (B, n, H, W) of a layer's
    ``channels`` C, like a concept set's encoder (:meth:`ConceptSet.basis`). Scans and dissections
    take ``bases={layer: basis}`` and treat the ``n`` codes as the layer's units; ``fingerprint``
    tells two bases apart (a resumed or merged scan must use the same one)."""

    n: int
    channels: int
    fingerprint: str

    def __call__(self, maps: torch.Tensor) -> torch.Tensor: ...

    def to(self, device) -> Basis: ...


def resolve_bases(table, names, bases, verb: str = "scanned") -> dict:
    """``bases`` keyed by the exact layer names among ``names`` (the layers a run covers; a key
    may be any name or selector of one layer of the :class:`~convscope.layers.LayerTable`
    ``table``). A key naming several layers, a basis for a layer the run does not cover, or one
    of another width than the layer's channels is a one-line error, before anything runs."""
    out = {}
    for key, basis in (bases or {}).items():
        if key in names:
            name = key
        else:
            found = [str(a) for a in table.select(key)]
            if len(found) != 1:
                raise UserInputError(f"a basis is given for {key!r}, which names {len(found)} layers")
            name = found[0]
        if name not in names:
            raise UserInputError(f"a basis is given for {name}, which is not {verb}")
        units = table.get(name).units
        if getattr(basis, "channels", units) != units:
            raise UserInputError(
                f"the basis of {name} encodes {basis.channels} channels; the layer has {units}"
            )
        out[name] = basis
    return out
