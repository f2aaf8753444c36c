"""Feature visualisation of units and directions, and class models."""

from __future__ import annotations

from collections.abc import Sequence

import torch

import convscope.synthesis.objectives as O
from convscope.errors import UserInputError
from convscope.subject import Subject
from convscope.synthesis.engine import Synthesis, optimize
from convscope.synthesis.transforms import none
from convscope.units import Direction


def visualize_units(
    subject: Subject, layer: str, units: Sequence[int], *, batch: int = 32, neuron: bool = False, **options
) -> Synthesis:
    """One image per unit of ``layer`` that maximises its mean activation (``neuron=True``: the
    centre neuron), optimised ``batch`` units at a time in one run each. ``options`` go to
    :func:`~convscope.synthesis.engine.optimize` (``steps``, ``size``, ``param``, ``seed``...);
    with ``param="maco"`` a unit's image is the same whatever ``batch`` (seeded by its label)."""
    info = subject.layer(layer)
    units = list(units)
    bad = [u for u in units if not 0 <= u < (info.units or 0)]
    if bad or not units:
        raise UserInputError(f"{info.name} has units 0..{(info.units or 1) - 1}; got {bad or units}")
    parts = []
    for s in range(0, len(units), batch):
        chunk = units[s : s + batch]
        obj = O.neuron(info.name, chunk) if neuron else O.channel(info.name, chunk)
        parts.append(
            optimize(subject, obj, batch=len(chunk), labels=[f"{info.name}:{u}" for u in chunk], **options)
        )
    return _concat(parts)


def visualize_directions(subject: Subject, directions: Sequence[Direction], **options) -> Synthesis:
    """One image per direction (all in one layer), maximising sum_c v[c] a_c."""
    if not directions:
        raise UserInputError("no directions given")
    layer = directions[0].layer
    if any(d.layer != layer for d in directions):
        raise UserInputError("visualize_directions takes directions of one layer")
    info = subject.layer(layer)
    vecs = torch.stack([d.vector for d in directions])
    if vecs.shape[1] != info.units:
        raise UserInputError(f"directions have {vecs.shape[1]} entries, {layer} has {info.units}")
    return optimize(
        subject,
        O.direction(info.name, vecs),
        batch=len(directions),
        labels=[str(d) for d in directions],
        **options,
    )


def class_model(
    subject: Subject, classes: Sequence[int | str], *, l2: float = 0.0, regularized: bool = True, **options
) -> Synthesis:
    """Class model visualisation (Simonyan et al. 2013): argmax_x S_c(x) - l2 * ||x||^2, one
    image per class in one batch. ``regularized=False`` is the paper's plain version (pixel
    parametrisation, no transforms, ``l2`` > 0 advised); the default adds the Fourier
    parametrisation, decorrelated colour and random transforms, which give recognisable images."""
    if isinstance(classes, (int, str)):
        classes = [classes]
    classes = [subject.class_index(c) for c in classes]  # indices, range-checked, or names
    if not classes:
        raise UserInputError("no classes given")
    obj = O.class_logit(classes)
    if l2:
        obj = obj - l2 * O.l2()
    if not regularized:
        options.setdefault("param", "pixel")
        options.setdefault("transform", none())
        options.setdefault("decorrelate", False)
    return optimize(subject, obj, batch=len(classes), labels=[subject.label(c) for c in classes], **options)


def _concat(parts: list[Synthesis]) -> Synthesis:
    import numpy as np

    if len(parts) == 1:
        return parts[0]
    return Synthesis(
        images=np.concatenate([p.images for p in parts]),
        scores=np.concatenate([p.scores for p in parts]),
        history=np.mean([p.history for p in parts], axis=0),
        labels=[lab for p in parts for lab in p.labels],
        frames=None,
        info=parts[0].info,
        transparency=None
        if parts[0].transparency is None
        else np.concatenate([p.transparency for p in parts]),
    )
