"""Rows of a scan: the run, classes, images, layers, unit statistics, top-K and random
directions. Every function takes an open connection (:mod:`convscope.atlas.schema`); the
:class:`~convscope.atlas.store.Atlas` holds the lock and the transaction."""

from __future__ import annotations

import json
import math
import sqlite3
import time

import numpy as np
from torch import nn

from convscope.atlas.schema import has_table, original_name, raw_column, stored_name, stored_text
from convscope.layers import LayerInfo, LayerTable, parse_address
from convscope.receptive import ReceptiveField
from convscope.scan.result import ScanResult, UnitStats, UnitTopK
from convscope.subject import Subject

TABLES = ("runs", "classes", "images", "layers", "units", "topk", "directions")
RUN_KEYS = ("started", "finished", "status", "config", "n_images", "processed", "skipped", "seconds")


def write(con: sqlite3.Connection, result: ScanResult, subject: Subject, started: float) -> None:
    """Replace the stored scan by ``result`` (inside the caller's transaction)."""
    skipped = dict(result.skipped)
    for table in TABLES:
        con.execute(f"DELETE FROM {table}")
    con.execute(
        "INSERT INTO runs(started, finished, status, config, n_images, processed, skipped,"
        " seconds) VALUES (?, ?, 'done', ?, ?, ?, ?, ?)",
        (
            started,
            time.time(),
            json.dumps(result.config),
            len(result.image_names),
            result.processed,
            len(skipped),
            result.seconds,
        ),
    )
    con.executemany(
        "INSERT INTO classes(idx, name, raw) VALUES (?, ?, ?)",
        [(i, *stored_name(c)) for i, c in enumerate(result.classes)],
    )
    # the model's names of units (a classifier's classes), for pages made without the model
    names = {n: [subject.unit_name(n, u) for u in range(result.channels[n])] for n in result.layers}
    con.execute(
        "INSERT OR REPLACE INTO meta VALUES ('unit_names', ?)",
        (json.dumps({n: v for n, v in names.items() if any(v)}),),
    )
    # the model's short names (conv5, fc8) of the scanned layers: their numbering counts every
    # layer of the model, so a reader without the model cannot rebuild them
    scanned = set(result.layers)
    aliases = {a: n for a, n in subject.layers.aliases.items() if n in scanned}
    con.execute("INSERT OR REPLACE INTO meta VALUES ('aliases', ?)", (json.dumps(aliases),))
    con.executemany(
        "INSERT INTO images(idx, name, label, status, reason, raw) VALUES (?, ?, ?, ?, ?, ?)",
        [
            (i, text, label, "skipped" if i in skipped else "ok", stored_text(skipped.get(i)), raw)
            for i, (text, raw, label) in enumerate(
                (*stored_name(n), lab) for n, lab in zip(result.image_names, result.image_labels)
            )
        ],
    )
    for pos, name in enumerate(result.layers):
        info = subject.layers.get(name)
        rf = info.rf
        ndir = len(result.directions.get(name, ()))
        state = result.states[name]
        con.execute(
            "INSERT INTO layers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                name,
                pos,
                info.type,
                result.channels[name],
                ndir,
                *state.map_size,
                *(rf.size if rf else (None, None)),
                *(rf.jump if rf else (None, None)),
                *(rf.start if rf else (None, None)),
                int(bool(rf and rf.is_global)),
            ),
        )
        c = result.channels[name]
        mean, std = state.mean().cpu().numpy(), state.std().cpu().numpy()
        peak, pos = state.max.cpu().numpy(), state.fraction_positive().cpu().numpy()
        thr = state.thresholds.cpu().numpy() if state.thresholds is not None else [None] * state.units
        con.executemany(
            "INSERT INTO units VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    name,
                    "channel" if u < c else "direction",
                    u if u < c else u - c,
                    float(mean[u]),
                    float(std[u]),
                    float(peak[u]),
                    float(pos[u]),
                    None if thr[u] is None else float(thr[u]),
                )
                for u in range(state.units)
            ],
        )
        w = state.map_size[1]
        rows = []
        for crit, top in state.topk.items():
            images = top.valid_images().cpu().numpy()
            scores = top.scores.cpu().numpy()
            positions = top.positions.cpu().numpy()
            for u in range(state.units):
                kind, unit = ("channel", u) if u < c else ("direction", u - c)
                for rank in range(images.shape[1]):
                    if images[u, rank] < 0:
                        break
                    p = int(positions[u, rank])
                    rows.append(
                        (
                            name,
                            kind,
                            unit,
                            crit,
                            rank,
                            int(images[u, rank]),
                            float(scores[u, rank]),
                            p // w,
                            p % w,
                        )
                    )
        con.executemany("INSERT INTO topk VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        for i, vec in enumerate(result.directions.get(name, [])):
            con.execute(
                "INSERT INTO directions VALUES (?, ?, ?)",
                (name, i, vec.numpy().astype(np.float32).tobytes()),
            )


def meta(con: sqlite3.Connection, key: str) -> str | None:
    """One value of the ``meta`` table (None: not there)."""
    row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]


def run(con: sqlite3.Connection) -> dict:
    """The stored scan's settings and counts (empty dict before a scan finished)."""
    row = con.execute(
        "SELECT started, finished, status, config, n_images, processed, "
        "skipped, seconds FROM runs ORDER BY id DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return {}
    out = dict(zip(RUN_KEYS, row))
    out["config"] = json.loads(out["config"])
    return out


def layers(con: sqlite3.Connection) -> list[dict]:
    """Every scanned layer's row (name, type, channels, directions, map size, receptive field),
    in scan order."""
    cur = con.execute("SELECT * FROM layers ORDER BY position")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur]


def layer_table(con: sqlite3.Connection) -> LayerTable:
    """The scanned layers as a :class:`~convscope.layers.LayerTable`, so that a reader takes the
    same layer specs as a verb: names, the model's aliases, globs, comma lists, ``stages`` (one
    scanned layer per stride), ``all-conv`` (the scanned convolutions) and callables."""
    infos = []
    for row in layers(con):
        module, call = parse_address(row["name"])
        shape = (row["channels"], row["height"], row["width"]) if row["height"] else (row["channels"],)
        rf = None
        if row["rf_global"]:
            jump = (row["rf_jump_y"], row["rf_jump_x"])
            if None in jump or not all(math.isfinite(j) for j in jump):
                rf = ReceptiveField.whole("stored as global")
            else:  # a transformer's tokens: global, on a grid whose stride 'stages' groups by
                rf = ReceptiveField.whole("stored as global", jump, (row["rf_start_y"], row["rf_start_x"]))
        elif row["rf_size_y"] is not None:
            rf = ReceptiveField(
                (row["rf_size_y"], row["rf_size_x"]),
                (row["rf_jump_y"], row["rf_jump_x"]),
                (row["rf_start_y"], row["rf_start_x"]),
            )
        infos.append(LayerInfo(row["name"], module, call, row["type"], shape, rf, order=row["position"]))
    types = {i.module: getattr(nn, i.type, object) for i in infos}
    cur = con.execute("SELECT value FROM meta WHERE key = 'aliases'")
    found = cur.fetchone()
    return LayerTable(infos, types, aliases=json.loads(found[0]) if found else {}, what="scanned layer")


def layer(con: sqlite3.Connection, name: str) -> dict | None:
    """One scanned layer's row (None: not scanned)."""
    cur = con.execute("SELECT * FROM layers WHERE name = ?", (name,))
    row = cur.fetchone()
    return None if row is None else dict(zip([d[0] for d in cur.description], row))


def topk(
    con: sqlite3.Connection,
    layer: str,
    unit: int,
    criterion: str = "max",
    kind: str = "channel",
    original: bool = True,
) -> list[dict]:
    """Top-K rows (``rank``, ``image``, ``name``, ``score``, ``y``, ``x``) of one unit
    (``kind="direction"``: of a random direction), best first. ``name``: as the source gave it,
    or (``original=False``) its printable form, for pages."""
    rows = con.execute(
        f"SELECT t.rank, t.image, i.name, t.score, t.y, t.x, {raw_column(con, 'images', 'i.')} "
        "FROM topk t JOIN images i ON i.idx = t.image WHERE t.layer = ? AND t.kind = ? "
        "AND t.unit = ? AND t.criterion = ? ORDER BY t.rank",
        (layer, kind, unit, criterion),
    ).fetchall()
    keys = ("rank", "image", "score", "y", "x", "name")
    return [
        dict(zip(keys, (r, i, s, y, x, original_name(n, raw) if original else n)))
        for r, i, n, s, y, x, raw in rows
    ]


def unit_topk(rows: list[dict], layer: str, unit: int, criterion: str, direction: bool) -> UnitTopK:
    """The :class:`~convscope.scan.result.UnitTopK` of :func:`topk`'s rows."""
    return UnitTopK(
        layer,
        unit,
        criterion,
        direction,
        np.array([r["image"] for r in rows], dtype=np.int64),
        [r["name"] for r in rows],
        np.array([r["score"] for r in rows], dtype=np.float32),
        np.array([r["y"] for r in rows], dtype=np.int64),
        np.array([r["x"] for r in rows], dtype=np.int64),
    )


def stats(con: sqlite3.Connection, layer: str, kind: str = "channel") -> UnitStats:
    """Per-unit statistics of a layer (mean, std, max, fraction positive, threshold)."""
    rows = con.execute(
        "SELECT mean, std, max, frac_pos, threshold FROM units WHERE layer = ? AND kind = ? ORDER BY unit",
        (layer, kind),
    ).fetchall()
    cols = (
        [np.array(c, dtype=np.float64) if c else np.zeros(0) for c in zip(*rows)]
        if rows
        else [np.zeros(0)] * 5
    )
    thr = None if rows and rows[0][4] is None else cols[4]
    return UnitStats(cols[0], cols[1], cols[2], cols[3], thr)


def unit(con: sqlite3.Connection, layer: str, unit: int, kind: str = "channel") -> dict | None:
    """One unit's statistics row (None: no such unit)."""
    cur = con.execute("SELECT * FROM units WHERE layer = ? AND kind = ? AND unit = ?", (layer, kind, unit))
    row = cur.fetchone()
    return None if row is None else dict(zip([d[0] for d in cur.description], row))


def unit_maxima(con: sqlite3.Connection, layer: str) -> list[float | None]:
    """Every channel's largest activation over the scan, in unit order."""
    sql = "SELECT max FROM units WHERE layer = ? AND kind = 'channel' ORDER BY unit"
    return [r[0] for r in con.execute(sql, (layer,))]


def direction(con: sqlite3.Connection, layer: str, idx: int) -> np.ndarray | None:
    """Random direction ``idx`` of a layer (float32, channels), None when there is none."""
    row = con.execute("SELECT vector FROM directions WHERE layer = ? AND idx = ?", (layer, idx)).fetchone()
    return None if row is None else np.frombuffer(row[0], dtype=np.float32).copy()


def images(con: sqlite3.Connection, status: str | None = None) -> list[tuple[int, str, str | None]]:
    """(index, original name, skip reason) of every image (``status``: only ``ok`` or
    ``skipped`` ones), in source order."""
    where, args = ("status = ?", (status,)) if status else ("1", ())
    rows = con.execute(
        f"SELECT idx, name, reason, {raw_column(con, 'images')} FROM images WHERE {where} ORDER BY idx", args
    ).fetchall()
    return [(i, original_name(n, r), reason) for i, n, reason, r in rows]


def classes(con: sqlite3.Connection) -> list[str]:
    """The original class names of the scan's source, by index."""
    rows = con.execute(f"SELECT name, {raw_column(con, 'classes')} FROM classes ORDER BY idx").fetchall()
    return [original_name(n, r) for n, r in rows]


def unit_names(con: sqlite3.Connection) -> dict[str, list[str | None]]:
    """The names of the scanned units that have one, by layer (``{}`` in older atlases)."""
    value = meta(con, "unit_names") if has_table(con, "meta") else None
    return json.loads(value) if value else {}
