"""Scan a dataset into an atlas, render unit pictures, reopen an atlas's model and data, and
gather the stored dissections a report is drawn from."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from convscope.atlas.store import Atlas
from convscope.errors import ConvscopeError
from convscope.inputs.fileio import save_image
from convscope.inputs.sources import ImageSource, open_spec
from convscope.scan import ScanResult, scan
from convscope.scan.patches import render_topk
from convscope.subject import Subject


def model_spec(subject: Subject) -> dict:
    """What the atlas records about the model (enough to load it again, when it came from load)."""
    return dict(subject.spec) if subject.spec else {"name": subject.name}


def scan_to_atlas(
    subject: Subject,
    source: ImageSource,
    out: str | Path,
    layers,
    *,
    resume: bool = False,
    overwrite: bool = False,
    **options,
) -> tuple[Atlas, ScanResult]:
    """Run :func:`convscope.scan.scan` with its checkpoint inside the atlas at ``out`` and store
    the result there, holding the atlas's writer lock throughout (another writer is refused
    with :class:`~convscope.atlas.store.AtlasLockedError`). ``options`` are ``scan``'s keyword
    arguments."""
    for name in subject.layers.select(layers):  # bad names fail before the atlas exists
        subject.layers.get(name)
    with Atlas(out).lock():
        atlas = Atlas.create(out, model_spec(subject), source.spec, overwrite=overwrite, resume=resume)
        started = time.time()
        result = scan(subject, source, layers, checkpoint=atlas.checkpoint_path, resume=resume, **options)
        atlas.write_scan(result, subject, started)
    return atlas, result


def stored_dissection(atlas: Atlas, dataset: str, like, order: Sequence[str] = ()):
    """What a dissection report of ``dataset`` is drawn from: every layer stored in ``atlas``
    with the settings (IoU threshold, quantile, max coverage) of the dissection ``like``, in
    ``order`` (a model's layer names; others after them, in the order they were dissected).
    Returns that :class:`~convscope.dissect.Dissection` and the names of the layers stored with
    other settings (left out: their numbers do not compare)."""
    settings = (like.iou_threshold, like.quantile, like.max_coverage)
    stored = atlas.dissection_settings(dataset)
    other = [name for name, s in stored.items() if s != settings]
    d = atlas.dissection(dataset, settings=settings)
    rank = {name: i for i, name in enumerate(order)}
    names = sorted(d.layers, key=lambda n: (rank.get(n, len(rank)), list(d.layers).index(n)))
    d.layers = {n: d.layers[n] for n in names}
    return d, other


def render_units(
    atlas: Atlas,
    subject: Subject,
    source: ImageSource,
    layer: str,
    units: Sequence[int],
    criteria: Sequence[str] | None = None,
    direction: bool = False,
) -> list[Path]:
    """Write one top-K grid PNG per unit and criterion under ``atlas/render/LAYER/``; units with
    a stored empirical receptive field use its size where the theoretical one exceeds the image."""
    criteria = criteria or atlas.run()["config"]["criteria"]
    measured = {} if direction else {r["unit"]: r["size"] for r in atlas.empirical_rfs(layer)}
    paths = []
    for unit in units:
        vec = atlas.direction(layer, unit) if direction else None
        for crit in criteria:
            top = atlas.topk(layer, unit, crit, direction=direction)
            if not len(top):
                continue
            kind = "direction" if direction else "unit"
            path = atlas.render_dir / layer / f"{kind}{unit:04d}_{crit}.png"
            paths.append(
                save_image(
                    render_topk(subject, source, top, direction=vec, empirical=measured.get(unit)), path
                )
            )
    return paths


def reopen(
    atlas: Atlas, subject: Subject | None = None, source: ImageSource | None = None
) -> tuple[Subject, ImageSource]:
    """The subject and image source an atlas was made from (loaded again from its specs)."""
    if subject is None:
        from convscope.zoo import load_spec

        subject = load_spec(atlas.model_spec)
    if source is None:
        spec = atlas.source_spec
        if (spec.get("source") or spec.get("files")) is None:
            raise ConvscopeError("the atlas does not say where its images are; pass the source")
        source = open_spec(spec, transform=subject.transform)
        if len(source) != spec.get("images", len(source)):
            raise ConvscopeError(
                f"{spec['description']} now has {len(source)} images, the atlas was made from "
                f"{spec['images']}; rescan it"
            )
    return subject, source
