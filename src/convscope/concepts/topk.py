"""What a concept is about: its top-K images and patches, scanned like a unit's."""

from __future__ import annotations

from convscope.concepts.activations import Progress, as_source
from convscope.concepts.result import ConceptSet
from convscope.scan.result import ScanResult
from convscope.subject import Subject


def scan_concepts(
    subject: Subject,
    data,
    concepts: ConceptSet,
    *,
    k: int = 16,
    progress: Progress | None = None,
    **options,
) -> ScanResult:
    """The top-``k`` images (and the position of each one's best patch) of every concept of
    ``concepts`` over the images of ``data``: the dataset scan with the concept set's encoder as
    the layer's units (:meth:`ConceptSet.basis`), so concept ``i`` is unit ``i`` of
    ``concepts.layer`` in the returned :class:`~convscope.scan.result.ScanResult`, under every
    criterion (max, mean, area) and with per-concept statistics. ``options``: those of
    :func:`convscope.scan.scanner.scan` (criteria, directions, seed, batch_size, checkpoint,
    resume, accel...); random ``directions`` stay directions of the layer's channels."""
    from convscope.scan.scanner import scan

    source = as_source(subject, data)
    basis = concepts.basis(subject.device)
    return scan(
        subject, source, [concepts.layer], k=k, bases={concepts.layer: basis}, progress=progress, **options
    )
