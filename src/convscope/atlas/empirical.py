"""Rows of empirical receptive fields: one per (layer, unit), with the average occlusion map.
Every function takes an open connection (:mod:`convscope.atlas.schema`)."""

from __future__ import annotations

import sqlite3

import numpy as np

from convscope.atlas.schema import has_table

TABLE = "empirical_rf"


def write(con: sqlite3.Connection, rf, occluder: int, stride: int) -> None:
    """Store (or replace) one unit's :class:`~convscope.empirical.EmpiricalRF` (``occluder``
    and ``stride`` in pixels)."""
    con.execute(
        "INSERT OR REPLACE INTO empirical_rf VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            rf.unit.layer,
            rf.unit.channel,
            rf.size,
            rf.height,
            rf.width,
            rf.theoretical,
            rf.threshold,
            occluder,
            stride,
            len(rf.maps),
            rf.average.shape[0],
            rf.average.astype(np.float32).tobytes(),
        ),
    )


def _row(cur: sqlite3.Cursor, row: tuple) -> dict:
    d = dict(zip([c[0] for c in cur.description], row))
    d["average"] = np.frombuffer(d["average"], dtype=np.float32).reshape(d["side"], d["side"]).copy()
    return d


def read(con: sqlite3.Connection, layer: str | None = None) -> list[dict]:
    """Stored empirical receptive fields (``average``: a side x side float32 array), by layer
    and unit; ``[]`` in an atlas that has none (or predates them)."""
    if not has_table(con, TABLE):
        return []
    q = "SELECT * FROM empirical_rf" + (" WHERE layer = ?" if layer else "") + " ORDER BY layer, unit"
    cur = con.execute(q, (layer,) if layer else ())
    return [_row(cur, r) for r in cur.fetchall()]


def read_one(con: sqlite3.Connection, layer: str, unit: int) -> dict | None:
    """One unit's stored empirical receptive field (None: not measured)."""
    if not has_table(con, TABLE):
        return None
    cur = con.execute("SELECT * FROM empirical_rf WHERE layer = ? AND unit = ?", (layer, unit))
    row = cur.fetchone()
    return None if row is None else _row(cur, row)


def summary(con: sqlite3.Connection) -> dict[str, dict]:
    """Per layer: how many units were measured (``units``) and their mean size (``mean``, px)."""
    if not has_table(con, TABLE):
        return {}
    sql = "SELECT layer, COUNT(*), AVG(size) FROM empirical_rf GROUP BY layer"
    return {layer: {"units": n, "mean": m} for layer, n, m in con.execute(sql)}
