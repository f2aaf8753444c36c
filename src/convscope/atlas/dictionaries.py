"""Rows of learned concept sets ("dictionaries", :class:`~convscope.concepts.ConceptSet`): the
set itself (its ``.npz`` bytes), its concept scan (per-concept statistics and top-K), its
importance per class and its labels from a dissection. Every function takes an open connection
(:mod:`convscope.atlas.schema`); the :class:`~convscope.atlas.store.Atlas` holds the lock and the
transaction. Per-concept pictures are files (:meth:`~convscope.atlas.paths.AtlasPaths.dictionary_picture`).

The concept scan has tables of its own rather than ``kind`` rows in ``topk``/``units``: a new
scan of the atlas replaces those tables whole, and the viewer's unit queries then never see a
concept. Its top-K rows keep each image's name beside its index, since the concept scan may have
run on other images than the atlas's scan (:func:`image_concepts` matches both).
"""

from __future__ import annotations

import json
import re
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np

from convscope.atlas.schema import columns, has_table, original_name, stored_name, stored_text
from convscope.errors import NameNotFoundError, UserInputError

# one URL path segment and one file name: no separators, no dot-files, nothing to escape
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+=-]{0,99}")

COLUMNS = (
    "name",
    "layer",
    "method",
    "n",
    "channels",
    "error",
    "sparsity",
    "dead",
    "samples",
    "seed",
    "model",
)


def check_name(name: str) -> str:
    """``name`` when it can name a dictionary (letters, digits and ``. _ @ + = -``, starting with
    a letter or digit, at most 100 characters), else a one-line :class:`UserInputError`."""
    if not isinstance(name, str) or NAME.fullmatch(name) is None:
        raise UserInputError(
            f"dictionary name {name!r} is not valid: use letters, digits and . _ @ + = - "
            "(starting with a letter or digit, at most 100 characters)"
        )
    return name


def default_name(layer: str, method: str, n: int) -> str:
    """A valid dictionary name for ``n`` ``method`` concepts of ``layer`` (``nmf32-bn2``):
    characters a name may not hold become ``_``."""
    raw = f"{method}{n}-{layer}"
    cleaned = re.sub(r"[^A-Za-z0-9._@+=-]", "_", raw.replace("#", "@")).lstrip("._@+=-")
    return check_name((cleaned or "concepts")[:100])


# -- the concept set ---------------------------------------------------------------------------
def _to_bytes(concepts) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "concepts.npz"
        concepts.save(path)
        return path.read_bytes()


def _from_bytes(data: bytes):
    from convscope.concepts.result import ConceptSet

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "concepts.npz"
        path.write_bytes(data)
        return ConceptSet.load(path)


def names(con: sqlite3.Connection) -> list[str]:
    """Every stored dictionary's name, sorted (``[]`` in an atlas older than dictionaries)."""
    if not has_table(con, "dictionaries"):
        return []
    return [r[0] for r in con.execute("SELECT name FROM dictionaries ORDER BY name")]


def require(con: sqlite3.Connection, name: str) -> str:
    """``name`` when the atlas holds that dictionary, else :class:`NameNotFoundError` (close
    matches; a ``KeyError``, which the viewer answers with 404)."""
    have = names(con)
    if name not in have:
        raise NameNotFoundError(str(name), have, what="dictionary")
    return name


def write(con: sqlite3.Connection, name: str, concepts, settings: dict | None = None) -> None:
    """Store ``concepts`` under ``name`` with the ``settings`` it was built with (JSON-able, or
    None), replacing a dictionary of that name and every row stored for it (scan, importance,
    labels)."""
    delete(con, name)
    con.execute(
        f"INSERT INTO dictionaries({', '.join(COLUMNS)}, created, data, settings) VALUES "
        f"({', '.join('?' * (len(COLUMNS) + 3))})",
        (
            name,
            concepts.layer,
            concepts.method,
            int(concepts.n),
            int(concepts.dictionary.shape[1]),
            float(concepts.error),
            float(concepts.sparsity),
            int(concepts.dead),
            int(concepts.samples),
            int(concepts.seed),
            str(concepts.model),
            time.time(),
            _to_bytes(concepts),
            None if settings is None else json.dumps(settings, sort_keys=True),
        ),
    )


def settings(con: sqlite3.Connection, name: str) -> dict | None:
    """The build settings stored with dictionary ``name`` (None: none recorded)."""
    require(con, name)
    if "settings" not in columns(con, "dictionaries"):
        return None
    (raw,) = con.execute("SELECT settings FROM dictionaries WHERE name = ?", (name,)).fetchone()
    return None if raw is None else json.loads(raw)


def delete(con: sqlite3.Connection, name: str) -> None:
    """Remove the dictionary ``name`` and every row stored for it."""
    for table in TABLES:
        con.execute(f"DELETE FROM {table} WHERE name = ?", (name,))


TABLES = (
    "dictionaries",
    "dictionary_scans",
    "dictionary_units",
    "dictionary_topk",
    "dictionary_importance",
    "dictionary_labels",
)


def summaries(con: sqlite3.Connection) -> list[dict]:
    """One dict per stored dictionary (name, layer, method, n, channels, error, sparsity, dead,
    samples, seed, model, and ``scanned``/``importance``/``labels``: whether those are stored),
    by name."""
    if not has_table(con, "dictionaries"):
        return []
    cur = con.execute(
        f"SELECT {', '.join('d.' + c for c in COLUMNS)}, s.name IS NOT NULL, i.name IS NOT NULL, "
        "(SELECT COUNT(*) FROM dictionary_labels l WHERE l.name = d.name) > 0 "
        "FROM dictionaries d LEFT JOIN dictionary_scans s ON s.name = d.name "
        "LEFT JOIN dictionary_importance i ON i.name = d.name ORDER BY d.name"
    )
    keys = (*COLUMNS, "scanned", "importance", "labels")
    return [{k: (bool(v) if k in keys[-3:] else v) for k, v in zip(keys, r)} for r in cur]


def summary(con: sqlite3.Connection, name: str) -> dict:
    """:func:`summaries`'s dict of one dictionary (:class:`NameNotFoundError` when missing)."""
    require(con, name)
    return next(d for d in summaries(con) if d["name"] == name)


def read(con: sqlite3.Connection, name: str):
    """The stored :class:`~convscope.concepts.ConceptSet` ``name``."""
    require(con, name)
    (data,) = con.execute("SELECT data FROM dictionaries WHERE name = ?", (name,)).fetchone()
    return _from_bytes(bytes(data))


def _n(con: sqlite3.Connection, name: str) -> int:
    require(con, name)
    return con.execute("SELECT n FROM dictionaries WHERE name = ?", (name,)).fetchone()[0]


def check_concept(con: sqlite3.Connection, name: str, concept: int) -> int:
    """``concept`` when the dictionary has it (0..n-1), else a one-line :class:`UserInputError`."""
    n = _n(con, name)
    if isinstance(concept, bool) or not isinstance(concept, (int, np.integer)) or not 0 <= concept < n:
        raise UserInputError(f"dictionary {name!r} has no concept {concept!r} (0..{n - 1})")
    return int(concept)


# -- the concept scan --------------------------------------------------------------------------
def write_scan(con: sqlite3.Connection, name: str, scan) -> None:
    """Store the concept scan ``scan`` (a :class:`~convscope.scan.result.ScanResult` whose unit
    ``i`` of the dictionary's layer is concept ``i``: :func:`convscope.concepts.scan_concepts`),
    replacing an earlier one of ``name``."""
    require(con, name)
    layer, n = con.execute("SELECT layer, n FROM dictionaries WHERE name = ?", (name,)).fetchone()
    if layer not in scan.layers:
        raise UserInputError(
            f"the scan holds {', '.join(scan.layers)}, not {layer}, the layer of dictionary {name!r}"
        )
    if scan.channels[layer] != n:
        raise UserInputError(
            f"the scan has {scan.channels[layer]} units at {layer}; dictionary {name!r} has {n} "
            "concepts (scan it with scan_concepts)"
        )
    from convscope.concepts.basis import fingerprint

    # the width alone would take a unit scan, or another set's, for this set's concepts
    want, got = fingerprint(read(con, name)), (scan.config.get("bases") or {}).get(layer)
    if got != want:
        what = "a scan of its units" if got is None else f"of another basis ({got})"
        raise UserInputError(
            f"the scan of {layer} is {what}, not of dictionary {name!r}'s concepts ({want}); "
            "scan them with scan_concepts"
        )
    for table in ("dictionary_scans", "dictionary_units", "dictionary_topk"):
        con.execute(f"DELETE FROM {table} WHERE name = ?", (name,))
    state = scan.states[layer]
    h, w = state.map_size
    con.execute(
        "INSERT INTO dictionary_scans VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (name, layer, scan.k, json.dumps(list(scan.criteria)), h, w, len(scan.image_names), time.time()),
    )
    stats = scan.stats(layer)
    thr = stats.threshold
    con.executemany(
        "INSERT INTO dictionary_units VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (
                name,
                i,
                float(stats.mean[i]),
                float(stats.std[i]),
                float(stats.max[i]),
                float(stats.fraction_positive[i]),
                None if thr is None else float(thr[i]),
            )
            for i in range(n)
        ],
    )
    rows = []
    for crit in scan.criteria:
        for i in range(n):
            top = scan.topk(layer, i, crit)
            for rank, (img, img_name, score, y, x) in enumerate(
                zip(top.images, top.names, top.scores, top.ys, top.xs)
            ):
                text, raw = stored_name(img_name)
                rows.append((name, i, crit, rank, int(img), text, raw, float(score), int(y), int(x)))
    con.executemany("INSERT INTO dictionary_topk VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


def register_images(con: sqlite3.Connection, scan) -> bool:
    """Store the images ``scan`` (a concept scan of the atlas's own source) ran on as the
    atlas's images and classes, when it holds none (an atlas made by ``convscope concepts``
    alone), so that every hit is an atlas image with its page and thumbnail; True when written.
    A unit scan replaces them later with the same images."""
    if con.execute("SELECT 1 FROM images LIMIT 1").fetchone() is not None:
        return False
    skipped = dict(scan.skipped)
    if con.execute("SELECT 1 FROM classes LIMIT 1").fetchone() is None:
        con.executemany(
            "INSERT INTO classes(idx, name, raw) VALUES (?, ?, ?)",
            [(i, *stored_name(c)) for i, c in enumerate(scan.classes)],
        )
    con.executemany(
        "INSERT INTO images(idx, name, label, status, reason, raw) VALUES (?, ?, ?, ?, ?, ?)",
        [
            (i, text, label, "skipped" if i in skipped else "ok", stored_text(skipped.get(i)), raw)
            for i, (text, raw, label) in enumerate(
                (*stored_name(n), lab) for n, lab in zip(scan.image_names, scan.image_labels)
            )
        ],
    )
    return True


def scan_info(con: sqlite3.Connection, name: str) -> dict | None:
    """The stored concept scan's settings (layer, k, criteria, map height and width, images), or
    None when the dictionary was not scanned."""
    require(con, name)
    cur = con.execute("SELECT * FROM dictionary_scans WHERE name = ?", (name,))
    row = cur.fetchone()
    if row is None:
        return None
    out = dict(zip([d[0] for d in cur.description], row))
    out["criteria"] = json.loads(out["criteria"])
    return out


def topk(
    con: sqlite3.Connection, name: str, concept: int, criterion: str = "max", original: bool = True
) -> list[dict]:
    """Top-K rows (``rank``, ``image``, ``name``, ``score``, ``y``, ``x``) of one concept, best
    first (``image``: the index in the concept scan's source; ``name``: as the source gave it,
    or (``original=False``) its printable form)."""
    concept = check_concept(con, name, concept)
    info = scan_info(con, name)
    if info is None:
        raise UserInputError(f"dictionary {name!r} has no concept scan; scan it with scan_concepts first")
    if criterion not in info["criteria"]:
        raise UserInputError(
            f"criterion {criterion!r} was not scanned for {name!r} (have {', '.join(info['criteria'])})"
        )
    rows = con.execute(
        "SELECT rank, image, image_name, raw, score, y, x FROM dictionary_topk WHERE name = ? "
        "AND concept = ? AND criterion = ? ORDER BY rank",
        (name, concept, criterion),
    ).fetchall()
    return [
        {
            "rank": r,
            "image": i,
            "name": original_name(n, raw) if original else n,
            "score": s,
            "y": y,
            "x": x,
        }
        for r, i, n, raw, s, y, x in rows
    ]


def best(con: sqlite3.Connection, name: str, criterion: str) -> dict[int, dict]:
    """The best hit (rank 0: ``image``, ``name`` printable, ``score``, ``y``, ``x``) of every
    concept of ``name`` under ``criterion``, by concept, in one query (``{}``: not scanned)."""
    require(con, name)
    rows = con.execute(
        "SELECT concept, image, image_name, score, y, x FROM dictionary_topk WHERE name = ? "
        "AND criterion = ? AND rank = 0",
        (name, criterion),
    )
    return {c: {"image": i, "name": n, "score": s, "y": y, "x": x} for c, i, n, s, y, x in rows}


def unit_topk(rows: list[dict], layer: str, concept: int, criterion: str):
    """:func:`topk`'s rows as a :class:`~convscope.scan.result.UnitTopK` (``unit``: the concept)."""
    from convscope.atlas.scans import unit_topk as as_topk

    return as_topk(rows, layer, concept, criterion, False)


def stats(con: sqlite3.Connection, name: str) -> list[dict]:
    """Per-concept statistics of the concept scan (``concept``, ``mean``, ``std``, ``max``,
    ``frac_pos``, ``threshold``), by concept (``[]``: not scanned)."""
    require(con, name)
    cur = con.execute("SELECT * FROM dictionary_units WHERE name = ? ORDER BY concept", (name,))
    keys = [d[0] for d in cur.description]
    return [{k: v for k, v in zip(keys, r) if k != "name"} for r in cur]


def image_concepts(con: sqlite3.Connection, image: int, image_name: str, limit: int = 24) -> list[dict]:
    """Concepts whose top-K list the image of index ``image`` named ``image_name`` (printable
    form), best rank first: ``dictionary``, ``concept``, ``criterion``, ``rank``, ``score``."""
    if not has_table(con, "dictionary_topk"):
        return []
    rows = con.execute(
        "SELECT name, concept, criterion, rank, score FROM dictionary_topk WHERE image = ? "
        "AND image_name = ? ORDER BY rank, score DESC LIMIT ?",
        (image, image_name, limit),
    )
    keys = ("dictionary", "concept", "criterion", "rank", "score")
    return [dict(zip(keys, r)) for r in rows]


# -- importance ----------------------------------------------------------------------------------
def write_importance(con: sqlite3.Connection, name: str, importance) -> None:
    """Store ``importance`` (``.matrix`` (classes, n), ``.classes``, ``.counts``, ``.method``) of
    dictionary ``name``, replacing an earlier one."""
    n = _n(con, name)
    matrix = np.asarray(_numpy(importance.matrix), dtype=np.float32)
    classes = [str(c) for c in importance.classes]
    counts = np.asarray(_numpy(importance.counts), dtype=np.int64).reshape(-1)
    if matrix.ndim != 2 or matrix.shape[1] != n or matrix.shape[0] != len(classes):
        raise UserInputError(
            f"importance of dictionary {name!r} must be ({len(classes)} classes, {n} concepts), "
            f"not {tuple(matrix.shape)}"
        )
    if len(counts) != len(classes):
        raise UserInputError(f"importance has {len(counts)} counts for {len(classes)} classes")
    grouping = getattr(importance, "grouping", None)
    logits = getattr(importance, "logits", None)
    if logits is not None:
        logits = np.asarray(_numpy(logits), dtype=np.float32).reshape(-1)
        if len(logits) != len(classes):
            raise UserInputError(f"importance has {len(logits)} logits for {len(classes)} classes")
    con.execute(
        "INSERT OR REPLACE INTO dictionary_importance(name, method, classes, rows, counts, matrix, "
        "grouping, logits) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            name,
            str(importance.method),
            json.dumps(classes),
            len(classes),
            counts.tobytes(),
            matrix.tobytes(),
            None if grouping is None else str(grouping),
            None if logits is None else logits.tobytes(),
        ),
    )


def _numpy(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def importance(con: sqlite3.Connection, name: str) -> dict | None:
    """The stored importance of ``name``: ``method``, ``classes`` (names), ``counts`` (classes,)
    int64, ``matrix`` (classes, n) float32, ``grouping`` (``"label"``: images grouped by their
    labels, ``"predicted"``: by the model's top class; None when not recorded) and ``logits``
    (classes,) float32 or None; None when none is stored."""
    n = _n(con, name)
    have = columns(con, "dictionary_importance")
    extra = ", ".join(c if c in have else "NULL" for c in ("grouping", "logits"))
    row = con.execute(
        f"SELECT method, classes, rows, counts, matrix, {extra} FROM dictionary_importance WHERE name = ?",
        (name,),
    ).fetchone()
    if row is None:
        return None
    method, classes, rows, counts, matrix, grouping, logits = row
    return {
        "method": method,
        "classes": json.loads(classes),
        "counts": np.frombuffer(counts, np.int64).copy(),
        "matrix": np.frombuffer(matrix, np.float32).reshape(rows, n).copy(),
        "grouping": grouping,
        "logits": None if logits is None else np.frombuffer(logits, np.float32).copy(),
    }


# -- labels from a dissection --------------------------------------------------------------------
def write_labels(con: sqlite3.Connection, name: str, dissection, dataset: str) -> None:
    """Store the labels of a dissection whose units at the dictionary's layer are its concepts
    (:func:`convscope.concepts.label_concepts`), under concept dataset ``dataset``, replacing the
    labels stored for ``name``."""
    require(con, name)
    layer, n = con.execute("SELECT layer, n FROM dictionaries WHERE name = ?", (name,)).fetchone()
    if layer not in dissection.layers:
        raise UserInputError(
            f"the dissection holds {', '.join(dissection.layers)}, not {layer}, the layer of "
            f"dictionary {name!r}"
        )
    labels = dissection.labels(layer)
    if len(labels) != n:
        raise UserInputError(
            f"the dissection has {len(labels)} units at {layer}; dictionary {name!r} has {n} concepts"
        )
    con.execute("DELETE FROM dictionary_labels WHERE name = ?", (name,))
    con.executemany(
        "INSERT INTO dictionary_labels VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                name,
                lab.unit,
                str(dataset),
                lab.name,
                lab.category,
                float(lab.iou),
                int(lab.detector),
                float(lab.coverage),
            )
            for lab in labels
        ],
    )


def labels(con: sqlite3.Connection, name: str) -> list[dict]:
    """The stored labels of ``name``'s concepts (``concept``, ``dataset``, ``label``,
    ``category``, ``iou``, ``detector`` (bool), ``coverage``), by concept (``[]``: none)."""
    require(con, name)
    cur = con.execute("SELECT * FROM dictionary_labels WHERE name = ? ORDER BY concept", (name,))
    keys = [d[0] for d in cur.description]
    out = []
    for r in cur:
        d = {k: v for k, v in zip(keys, r) if k != "name"}
        d["detector"] = bool(d["detector"])
        out.append(d)
    return out
