"""The rows of stored feature visualisations (``convscope microscope``'s visuals stage): one row
per layer in ``visual_layers`` (its slots and the settings a resumed build must match) and one per
(layer, unit, kind, index) in ``visuals`` (the objective reached and how it was made); the images
are PNG tiles of the atlas folder (:meth:`~convscope.atlas.paths.AtlasPaths.visual_tile`).
A row is written only after its tile, in one transaction per batch: a tile without a row is
unfinished work, redone by a resumed build. Every function takes an open connection and works on
an atlas older than stored visuals too (nothing stored)."""

from __future__ import annotations

import json
import sqlite3
import time

from convscope.atlas.schema import has_table
from convscope.errors import UserInputError

KINDS = ("positive", "negative", "diversity")
COLUMNS = ("layer", "unit", "kind", "idx", "objective", "param", "steps", "size", "seed")


def check_kind(kind: str) -> str:
    """``kind`` when it names a stored visual kind, else a one-line :class:`UserInputError`."""
    if kind not in KINDS:
        raise UserInputError(f"visual kind {kind!r} is not one of {', '.join(KINDS)}")
    return kind


def write_layer(con: sqlite3.Connection, layer: str, slots, settings: dict) -> None:
    """Record (or replace) the slots and settings of ``layer``'s visuals."""
    con.execute(
        "INSERT OR REPLACE INTO visual_layers(layer, slots, settings, created) VALUES (?, ?, ?, ?)",
        (layer, json.dumps([list(s) for s in slots]), json.dumps(settings, sort_keys=True), time.time()),
    )


def write_rows(con: sqlite3.Connection, layer: str, visuals, settings: dict) -> None:
    """One row per image of the :class:`~convscope.synthesis.layer_visuals.LayerVisuals`
    ``visuals`` (its tiles are written by the store first)."""
    size = settings.get("size")
    rows = [
        (
            layer, int(unit), kind, int(index), float(visuals.objectives[r, s]), settings.get("param"),
            int(settings.get("steps", 0)), None if size is None else json.dumps(size), settings.get("seed"),
        )
        for r, unit in enumerate(visuals.units)
        for s, (kind, index) in enumerate(visuals.slots)
    ]  # fmt: skip
    con.executemany(
        f"INSERT OR REPLACE INTO visuals({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", rows
    )


def delete(con: sqlite3.Connection, layer: str) -> None:
    """Remove every row of ``layer``'s visuals."""
    if has_table(con, "visuals"):
        con.execute("DELETE FROM visuals WHERE layer = ?", (layer,))
        con.execute("DELETE FROM visual_layers WHERE layer = ?", (layer,))


def layers(con: sqlite3.Connection) -> list[dict]:
    """One dict per layer with stored visuals: ``layer``, ``slots`` (``[kind, index]`` lists),
    ``settings``, ``units`` (how many units have every slot stored), by layer name."""
    if not has_table(con, "visual_layers"):
        return []
    out = []
    for layer, slots, settings in con.execute(
        "SELECT layer, slots, settings FROM visual_layers ORDER BY layer"
    ).fetchall():
        slots = [tuple(s) for s in json.loads(slots)]
        out.append(
            {"layer": layer, "slots": slots, "settings": json.loads(settings), "units": len(done(con, layer))}
        )
    return out


def layer(con: sqlite3.Connection, name: str) -> dict | None:
    """:func:`layers`'s dict of one layer, or None."""
    return next((d for d in layers(con) if d["layer"] == name), None)


def done(con: sqlite3.Connection, layer: str) -> set[int]:
    """The units of ``layer`` whose every slot has a row."""
    if not has_table(con, "visual_layers"):
        return set()
    row = con.execute("SELECT slots FROM visual_layers WHERE layer = ?", (layer,)).fetchone()
    if row is None:
        return set()
    n = len(json.loads(row[0]))
    sql = "SELECT unit FROM visuals WHERE layer = ? GROUP BY unit HAVING COUNT(*) >= ?"
    return {r[0] for r in con.execute(sql, (layer, n))}


def rows(con: sqlite3.Connection, layer: str, unit: int | None = None) -> list[dict]:
    """The stored rows of ``layer`` (of one ``unit``), by unit, kind and index; ``size`` decoded;
    ``alpha``: whether the tile is RGBA (MaCo's transparency as its alpha channel)."""
    if not has_table(con, "visuals"):
        return []
    stored = con.execute("SELECT settings FROM visual_layers WHERE layer = ?", (layer,)).fetchone()
    alpha = bool(stored is not None and json.loads(stored[0]).get("alpha"))
    sql = f"SELECT {', '.join(COLUMNS)} FROM visuals WHERE layer = ?"
    args: tuple = (layer,)
    if unit is not None:
        sql, args = sql + " AND unit = ?", (layer, int(unit))
    order = " ORDER BY unit, CASE kind WHEN 'positive' THEN 0 WHEN 'negative' THEN 1 ELSE 2 END, idx"
    out = []
    for r in con.execute(sql + order, args):
        d = dict(zip(COLUMNS, r))
        d["index"] = d.pop("idx")
        d["size"] = None if d["size"] is None else json.loads(d["size"])
        d["alpha"] = alpha
        out.append(d)
    return out


def objectives(con: sqlite3.Connection, layer: str, kind: str = "positive") -> dict[int, float]:
    """unit -> objective of the first image of ``kind`` of each stored unit of ``layer``."""
    if not has_table(con, "visuals"):
        return {}
    sql = "SELECT unit, objective FROM visuals WHERE layer = ? AND kind = ? AND idx = 0"
    return {u: v for u, v in con.execute(sql, (layer, kind))}
