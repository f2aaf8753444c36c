"""Rows of network dissections: the concepts of each concept set, one row per dissected layer
(IoU matrix, thresholds, top images as blobs) and one label per unit. Every function takes an
open connection (:mod:`convscope.atlas.schema`)."""

from __future__ import annotations

import json
import sqlite3
import time

import numpy as np

from convscope.atlas.schema import has_table


def write(con: sqlite3.Connection, dissection, dataset: str) -> None:
    """Store (or replace) every layer of ``dissection`` under the concept set ``dataset``
    (inside the caller's transaction)."""
    con.execute("DELETE FROM concepts WHERE dataset = ?", (dataset,))
    con.executemany(
        "INSERT INTO concepts VALUES (?, ?, ?, ?)",
        [(dataset, c.number, c.name, c.category) for c in dissection.concepts.values()],
    )
    for name, d in dissection.layers.items():
        con.execute(
            "INSERT OR REPLACE INTO dissections VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                dataset,
                name,
                json.dumps(dissection.dataset, sort_keys=True),
                json.dumps(dissection.categories),
                d.units,
                len(d.concepts),
                dissection.images,
                dissection.quantile,
                dissection.iou_threshold,
                dissection.max_coverage,
                time.time(),
                d.top_images.shape[1],
                d.iou.astype(np.float32).tobytes(),
                d.thresholds.astype(np.float32).tobytes(),
                d.top_images.astype(np.int64).tobytes(),
                d.top_values.astype(np.float32).tobytes(),
                d.coverage.astype(np.float64).tobytes(),
            ),
        )
        con.execute("DELETE FROM unit_labels WHERE dataset = ? AND layer = ?", (dataset, name))
        con.executemany(
            "INSERT INTO unit_labels VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    dataset,
                    name,
                    lab.unit,
                    lab.concept,
                    lab.name,
                    lab.category,
                    lab.iou,
                    int(lab.detector),
                    lab.coverage,
                )
                for lab in dissection.labels(name)
            ],
        )


def _dicts(cur: sqlite3.Cursor) -> list[dict]:
    names = [c[0] for c in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def concept_sets(con: sqlite3.Connection) -> list[str]:
    """Names of the concept sets the atlas holds dissections for (``[]``: none, or an atlas
    older than dissections)."""
    if not has_table(con, "dissections"):
        return []
    return [r[0] for r in con.execute("SELECT DISTINCT dataset FROM dissections ORDER BY dataset")]


def settings(con: sqlite3.Connection, dataset: str) -> dict[str, tuple[float, float, float]]:
    """(iou_threshold, quantile, max_coverage) of every layer dissected on ``dataset``, in the
    order they were dissected."""
    if not has_table(con, "dissections"):
        return {}
    sql = (
        "SELECT layer, iou_threshold, quantile, max_coverage FROM dissections WHERE dataset = ? "
        "ORDER BY finished"
    )
    return {r[0]: (r[1], r[2], r[3]) for r in con.execute(sql, (dataset,))}


def concepts(con: sqlite3.Connection, dataset: str) -> dict:
    """The :class:`~convscope.dissect.Concept` of each concept number of ``dataset``."""
    from convscope.dissect.concepts import Concept

    sql = "SELECT number, name, category FROM concepts WHERE dataset = ? ORDER BY number"
    return {n: Concept(n, name, cat) for n, name, cat in con.execute(sql, (dataset,))}


def layer_rows(con: sqlite3.Connection, dataset: str) -> list[dict]:
    """The stored row of every layer dissected on ``dataset`` (blobs undecoded), in the order
    they were dissected."""
    if not has_table(con, "dissections"):
        return []
    return _dicts(con.execute("SELECT * FROM dissections WHERE dataset = ? ORDER BY finished", (dataset,)))


def layer_dissection(row: dict, numbers: list[int]):
    """The :class:`~convscope.dissect.result.LayerDissection` of one :func:`layer_rows` row
    (``numbers``: the concept set's concept numbers, in order)."""
    from convscope.dissect.result import LayerDissection

    u, c, k = row["units"], row["concepts"], row["top"]
    return LayerDissection(
        row["layer"],
        np.frombuffer(row["thresholds"], np.float32).copy(),
        numbers,
        np.frombuffer(row["iou"], np.float32).reshape(u, c).astype(np.float64),
        np.frombuffer(row["top_images"], np.int64).reshape(u, k).copy(),
        np.frombuffer(row["top_values"], np.float32).reshape(u, k).copy(),
        np.frombuffer(row["coverage"], np.float64).copy(),
    )


def unit_labels(con: sqlite3.Connection, layer: str, dataset: str | None = None) -> list[dict]:
    """Stored labels of a layer's units (``unit``, ``name``, ``category``, ``iou``, ...), by
    concept set and unit."""
    if not has_table(con, "unit_labels"):
        return []
    q = "SELECT * FROM unit_labels WHERE layer = ?" + (" AND dataset = ?" if dataset else "")
    return _dicts(con.execute(q + " ORDER BY dataset, unit", (layer, dataset) if dataset else (layer,)))


def summary(con: sqlite3.Connection) -> dict[str, dict]:
    """Per layer and concept set: how many detectors and unique concepts."""
    if not has_table(con, "unit_labels"):
        return {}
    out: dict[str, dict] = {}
    for layer, dataset, det, uniq in con.execute(
        "SELECT layer, dataset, SUM(detector), COUNT(DISTINCT CASE WHEN detector "
        "THEN concept END) FROM unit_labels GROUP BY layer, dataset"
    ):
        out.setdefault(layer, {})[dataset] = {"detectors": det, "unique": uniq}
    return out


def best_concepts(con: sqlite3.Connection, layer: str, unit: int, n: int = 5) -> list[dict]:
    """The unit's ``n`` best concepts per concept set, from the stored IoU matrices
    (``dataset``, ``concept``, ``category``, ``iou``, ``detector``)."""
    if not has_table(con, "dissections"):
        return []
    out = []
    sql = "SELECT dataset, units, concepts, iou, iou_threshold FROM dissections WHERE layer = ?"
    for dataset, units, n_concepts, blob, threshold in con.execute(sql, (layer,)).fetchall():
        if unit >= units:
            continue
        iou = np.frombuffer(blob, np.float32).reshape(units, n_concepts)[unit]
        found = concepts(con, dataset)
        numbers = sorted(found)
        for j in np.argsort(-iou)[:n]:
            c = found[numbers[j]]
            out.append(
                {
                    "dataset": dataset,
                    "concept": c.name,
                    "category": c.category,
                    "iou": float(iou[j]),
                    "detector": bool(iou[j] > threshold),
                }
            )
    return out
