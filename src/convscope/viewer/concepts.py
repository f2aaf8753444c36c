"""What the pages of learned concept sets show, read from the atlas's reader: shared by the
server (:mod:`convscope.viewer.app`) and the static export (:mod:`convscope.viewer.export`)."""

from __future__ import annotations

import numpy as np


def concept_cells(reader, info: dict) -> list[dict]:
    """Per concept of the dictionary ``info`` (a row of ``reader.dictionaries()``), what its
    cell on the set's page shows: ``concept``, ``picture`` (stored or not), and when stored
    ``max``, ``image`` (the atlas image of its best hit, or None), ``label``, ``detector``,
    ``iou``, ``top_class`` (the class it matters most for)."""
    name, n = info["name"], info["n"]
    stats = {s["concept"]: s for s in reader.dictionary_stats(name)}
    labels = {lab["concept"]: lab for lab in reader.dictionary_labels(name)}
    importance = reader.dictionary_importance(name)
    scanned = reader.dictionary_scan(name) if info["scanned"] else None
    # the thumbnail is the best hit by max when it was scanned, else by the first criterion stored
    crit = None if not scanned else "max" if "max" in scanned["criteria"] else scanned["criteria"][0]
    best = reader.dictionary_best(name, crit) if crit else {}  # one row per concept, one query
    cells = []
    for i in range(n):
        cell = {"concept": i, "picture": reader.dictionary_picture(name, i) is not None}
        if i in stats:
            cell["max"] = stats[i]["max"]
            cell["image"] = best[i]["atlas_image"] if i in best else None
        if i in labels:
            cell.update(label=labels[i]["label"], detector=labels[i]["detector"], iou=labels[i]["iou"])
        top = top_class(importance, i)
        if top is not None:
            cell["top_class"] = top
        cells.append(cell)
    return cells


def top_class(importance: dict | None, concept: int) -> str | None:
    """The class the concept matters most for, or None: NaN rows (a class without images) are
    never it, and a concept with no finite value has none."""
    if importance is None or not len(importance["classes"]):
        return None
    column = np.asarray(importance["matrix"][:, concept], dtype=np.float64)
    finite = np.isfinite(column)
    if not finite.any():
        return None
    return importance["classes"][int(np.argmax(np.where(finite, column, -np.inf)))]


def concept_view(reader, name: str, concept: int) -> dict:
    """What one concept's page shows: ``stats`` (or None), ``label`` (or None), ``importance``
    (or None), ``tops`` (criterion -> top-K rows, ``max`` first; empty when not scanned),
    ``picture`` (bool) and ``atlas_hits``: whether there are hits and every one is an image of
    the atlas's scan (so that the top-K grid can read them from its source)."""
    stats = {s["concept"]: s for s in reader.dictionary_stats(name)}.get(concept)
    labels = {lab["concept"]: lab for lab in reader.dictionary_labels(name)}
    scanned = reader.dictionary_scan(name)
    crits = sorted(scanned["criteria"], key=lambda c: (c != "max", c)) if scanned else []
    tops = {c: reader.dictionary_topk(name, concept, c) for c in crits}
    return {
        "stats": stats,
        "label": labels.get(concept),
        "importance": reader.dictionary_importance(name),
        "tops": tops,
        "picture": reader.dictionary_picture(name, concept) is not None,
        # no hits at all (no scan, or empty lists) is no reason to load the model for a grid
        "atlas_hits": any(tops.values())
        and all(r["atlas_image"] is not None for rows in tops.values() for r in rows),
    }
