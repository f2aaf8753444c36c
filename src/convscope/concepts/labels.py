"""What a concept is about, named: each concept's colour or concept label by dissection IoU."""

from __future__ import annotations

import os

from convscope.concepts.result import ConceptSet
from convscope.dissect.result import Dissection
from convscope.subject import Subject


def concept_dataset(concept_data):
    """Concept data as a dataset :func:`~convscope.dissect.dissect` takes: a concept dataset
    (:class:`~convscope.dissect.BrodenDataset`, :class:`~convscope.dissect.ColorConcepts`, a
    synthetic Broden opened as one) as it is, a spec ``dict`` (what their ``spec`` records,
    :func:`~convscope.dissect.open_concept_data`), or the path of a Broden-format folder."""
    from convscope.dissect.broden import BrodenDataset
    from convscope.dissect.open import open_concept_data

    if isinstance(concept_data, dict):
        return open_concept_data(concept_data)
    if isinstance(concept_data, str | os.PathLike):
        return BrodenDataset(concept_data)
    return concept_data


def label_concepts(subject: Subject, concept_data, concepts: ConceptSet, **options) -> Dissection:
    """Network dissection of the concepts of ``concepts``: concept ``i`` is unit ``i`` of
    ``concepts.layer`` in the returned :class:`~convscope.dissect.result.Dissection` (its
    threshold, IoU with every concept of ``concept_data``, best label, detector or not, top
    images), through the concept set's encoder as the layer's basis. ``concept_data``: see
    :func:`concept_dataset`. ``options``: those of :func:`convscope.dissect.dissect` (quantile,
    iou_threshold, max_coverage, top, batch_size, workers, cache_bytes, accel, progress)."""
    from convscope.dissect.dissection import dissect
    from convscope.errors import UserInputError

    if "bases" in options:
        raise UserInputError("label_concepts dissects the concept set's own basis; bases cannot be given")
    basis = concepts.basis(subject.device)
    return dissect(
        subject, concept_dataset(concept_data), [concepts.layer], bases={concepts.layer: basis}, **options
    )
