"""Model-wide search of an atlas by label: the units whose dissection labels (every concept set:
colour names, Broden, synthetic) contain a piece of text, the units the model itself names
(a classifier's classes), and the learned concepts whose labels contain it, ranked by the
label's IoU, one page at a time; and every label of the atlas for a static index. Every
function takes an open (read-only) connection and works on an atlas older than dissections or
concept sets (nothing found)."""

from __future__ import annotations

import sqlite3

from convscope.atlas import scans
from convscope.atlas.schema import has_table

MAX_QUERY = 100  # characters: no label is longer; a longer query is refused, not run


def _casefold(text):
    return text.casefold() if isinstance(text, str) else text


def _match(con: sqlite3.Connection, column: str, query: str) -> tuple[str, list]:
    """A WHERE clause matching ``query`` anywhere in ``column``, case-insensitively (Unicode
    case folding: SQLite's LIKE folds ASCII only, and ``%`` ``_`` would be wildcards), and its
    parameters. The folding is a function registered on the connection: it writes nothing."""
    con.create_function("convscope_casefold", 1, _casefold, deterministic=True)
    return f"instr(convscope_casefold({column}), ?) > 0", [query.casefold()]


def _dicts(cur: sqlite3.Cursor) -> list[dict]:
    keys = [d[0] for d in cur.description]
    return [dict(zip(keys, r)) for r in cur]


def _has(con: sqlite3.Connection, sql: str, args) -> bool:
    return con.execute(sql, args).fetchone() is not None


def _thumbnails(con: sqlite3.Connection, rows: list[dict]) -> None:
    """Sets ``visual`` (a stored positive feature visualisation exists) and ``patch`` (the unit
    has a best image by max) on each row of ``layer``, ``unit``."""
    visuals, topk = has_table(con, "visuals"), has_table(con, "topk")
    for r in rows:
        key = (r["layer"], r["unit"])
        r["visual"] = visuals and _has(
            con, "SELECT 1 FROM visuals WHERE layer = ? AND unit = ? AND kind = 'positive' AND idx = 0", key
        )
        r["patch"] = topk and _has(
            con,
            "SELECT 1 FROM topk WHERE layer = ? AND kind = 'channel' AND unit = ? AND criterion = 'max' "
            "AND rank = 0",
            key,
        )


def search_units(
    con: sqlite3.Connection, query: str, page: int = 0, per_page: int = 50
) -> tuple[list[dict], int]:
    """One page of the units with a dissection label containing ``query`` (case-insensitive),
    best IoU first, and how many units match. Each row: ``layer``, ``unit``, ``score`` (the
    best matching label's IoU), ``labels`` (every stored label of the unit: ``dataset``,
    ``name``, ``category``, ``iou``, ``detector`` (bool), ``match`` (bool)), ``visual`` and
    ``patch`` (see :func:`_thumbnails`)."""
    if not query or not has_table(con, "unit_labels"):
        return [], 0
    where, args = _match(con, "name", query)
    matched = f"SELECT layer, unit, MAX(iou) AS score FROM unit_labels WHERE {where} GROUP BY layer, unit"
    total = con.execute(f"SELECT COUNT(*) FROM ({matched})", args).fetchone()[0]
    rows = _dicts(
        con.execute(
            f"{matched} ORDER BY score DESC, layer, unit LIMIT ? OFFSET ?",
            [*args, per_page, page * per_page],
        )
    )
    for r in rows:
        labels = _dicts(
            con.execute(
                "SELECT dataset, name, category, iou, detector, "
                f"{where} AS match FROM unit_labels WHERE layer = ? AND unit = ? ORDER BY iou DESC, dataset",
                [*args, r["layer"], r["unit"]],
            )
        )
        for lab in labels:
            lab["detector"], lab["match"] = bool(lab["detector"]), bool(lab["match"])
        r["labels"] = labels
    _thumbnails(con, rows)
    return rows, total


def search_unit_names(
    con: sqlite3.Connection, query: str, page: int = 0, per_page: int = 50
) -> tuple[list[dict], int]:
    """One page of the scanned units whose name in the model (a classifier's class, stored by
    the scan) contains ``query`` (case-insensitive), by layer and unit, and how many match.
    Each row: ``layer``, ``unit``, ``name``, ``visual`` and ``patch``."""
    if not query:
        return [], 0
    q = query.casefold()
    found = [
        {"layer": layer, "unit": u, "name": n}
        for layer, names in sorted(scans.unit_names(con).items())
        for u, n in enumerate(names)
        if isinstance(n, str) and q in n.casefold()
    ]
    rows = found[page * per_page : (page + 1) * per_page]
    _thumbnails(con, rows)
    return rows, len(found)


def search_concepts(
    con: sqlite3.Connection, query: str, page: int = 0, per_page: int = 50
) -> tuple[list[dict], int]:
    """One page of the learned concepts (concept sets) whose label contains ``query``
    (case-insensitive), best IoU first, and how many match. Each row: ``dictionary``,
    ``concept``, ``layer``, ``dataset``, ``label``, ``category``, ``iou``, ``detector`` (bool),
    ``image`` and ``image_name`` (its best hit by max, or None)."""
    if not query or not has_table(con, "dictionary_labels"):
        return [], 0
    where, args = _match(con, "l.label", query)
    base = f"FROM dictionary_labels l JOIN dictionaries d ON d.name = l.name WHERE {where}"
    total = con.execute(f"SELECT COUNT(*) {base}", args).fetchone()[0]
    best = (
        "(SELECT {col} FROM dictionary_topk t WHERE t.name = l.name AND t.concept = l.concept "
        "AND t.criterion = 'max' AND t.rank = 0)"
    )
    rows = _dicts(
        con.execute(
            "SELECT l.name AS dictionary, l.concept, d.layer, l.dataset, l.label, l.category, l.iou, "
            f"l.detector, {best.format(col='image')} AS image, {best.format(col='image_name')} AS image_name "
            f"{base} ORDER BY l.iou DESC, l.name, l.concept LIMIT ? OFFSET ?",
            [*args, per_page, page * per_page],
        )
    )
    for r in rows:
        r["detector"] = bool(r["detector"])
    return rows, total


def all_labels(con: sqlite3.Connection) -> list[dict]:
    """Every stored label of the atlas, alphabetically (case-insensitive), best IoU first within
    a label: ``label``, ``kind`` (``unit``: a dissection label, ``name``: the model's name of
    the unit, ``concept``: a learned concept's label), ``layer``, ``unit`` (the unit, or the
    concept's number), ``dictionary`` (None but for concepts), ``dataset``, ``iou`` and
    ``detector`` (None and False for names)."""
    rows = []
    if has_table(con, "unit_labels"):
        rows += _dicts(
            con.execute(
                "SELECT name AS label, 'unit' AS kind, layer, unit, NULL AS dictionary, dataset, iou, "
                "detector FROM unit_labels"
            )
        )
    if has_table(con, "dictionary_labels"):
        rows += _dicts(
            con.execute(
                "SELECT l.label, 'concept' AS kind, d.layer, l.concept AS unit, l.name AS dictionary, "
                "l.dataset, l.iou, l.detector FROM dictionary_labels l JOIN dictionaries d ON d.name = l.name"
            )
        )
    rows += [
        {"label": n, "kind": "name", "layer": layer, "unit": u, "dictionary": None, "dataset": None,
         "iou": None, "detector": False}
        for layer, names in scans.unit_names(con).items()
        for u, n in enumerate(names)
        if isinstance(n, str)
    ]  # fmt: skip
    rows = [r for r in rows if isinstance(r["label"], str)]
    for r in rows:
        r["detector"] = bool(r["detector"])
    rows.sort(key=lambda r: (r["label"].casefold(), r["label"], -(r["iou"] or 0.0), r["layer"], r["unit"]))
    return rows
