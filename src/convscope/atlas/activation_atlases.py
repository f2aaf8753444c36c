"""The rows of stored activation atlases (Carter et al. 2019; :mod:`convscope.synthesis.activation_atlas`):
one row per layer in ``activation_atlases`` (its grid, counts and the settings a resumed build
must match) and one per drawn cell in ``activation_atlas_cells`` (row, column, count, the norm of
its mean vector, the objective its tile reached, top class and share, the image/y/x of its most
typical vectors as JSON). The :class:`~convscope.synthesis.activation_atlas.ActivationAtlas`
itself, the big picture and one PNG per tile are files of the atlas folder
(:meth:`~convscope.atlas.paths.AtlasPaths.activation_atlas_dir`). Every function takes an open
connection and works on an atlas older than activation atlases (nothing stored)."""

from __future__ import annotations

import json
import sqlite3
import time

from convscope.atlas.schema import has_table
from convscope.errors import NameNotFoundError

# the files of one layer's activation atlas, in its folder (tiles: TILES/cell0000.png)
FILES = {"result": "atlas.npz", "image": "atlas.png"}
TILES = "tiles"

COLUMNS = ("layer", "grid", "cells", "samples", "images", "skipped", "tile", "layout", "created")
CELL_COLUMNS = ("cell", "row", "col", "count", "norm", "score", "top_class", "top_label", "top_share")


def layers(con: sqlite3.Connection) -> list[str]:
    """The layers with a stored activation atlas, sorted (``[]`` in an older atlas)."""
    if not has_table(con, "activation_atlases"):
        return []
    return [r[0] for r in con.execute("SELECT layer FROM activation_atlases ORDER BY layer")]


def require(con: sqlite3.Connection, layer: str) -> str:
    """``layer`` when it has a stored activation atlas, else :class:`NameNotFoundError` (close
    matches; a ``KeyError``, which the viewer answers with 404)."""
    have = layers(con)
    if layer not in have:
        raise NameNotFoundError(str(layer), have, what="activation atlas")
    return layer


def write(con: sqlite3.Connection, atlas, settings: dict | None = None) -> None:
    """Index the :class:`ActivationAtlas` ``atlas`` and its cells under its layer, with the
    JSON-able ``settings`` it was built with, replacing that layer's rows."""
    delete(con, atlas.layer)
    con.execute(
        f"INSERT INTO activation_atlases({', '.join(COLUMNS)}, settings, info) "
        f"VALUES ({', '.join('?' * (len(COLUMNS) + 2))})",
        (
            atlas.layer,
            int(atlas.grid),
            len(atlas.cells),
            len(atlas.points),
            int(atlas.info.get("images", 0)),
            len(atlas.skipped),
            int(atlas.tiles.shape[1]),
            str(atlas.info.get("layout")),
            time.time(),
            None if settings is None else json.dumps(settings, sort_keys=True, default=repr),
            json.dumps(atlas.info, sort_keys=True, default=repr),
        ),
    )
    rows = []
    for i, (r, c) in enumerate(atlas.cells):
        typical = [[int(v) for v in t] for t in atlas.typical[i] if t[0] >= 0]
        rows.append(
            (
                atlas.layer, i, int(r), int(c), int(atlas.counts[i]), float(atlas.norms[i]),
                float(atlas.scores[i]), int(atlas.top_class[i]), atlas.top_label[i],
                float(atlas.top_share[i]), json.dumps(typical),
            )
        )  # fmt: skip
    con.executemany(
        f"INSERT INTO activation_atlas_cells(layer, {', '.join(CELL_COLUMNS)}, typical) "
        f"VALUES ({', '.join('?' * (len(CELL_COLUMNS) + 2))})",
        rows,
    )


def delete(con: sqlite3.Connection, layer: str) -> None:
    """Remove the rows of ``layer``'s activation atlas."""
    if has_table(con, "activation_atlases"):
        con.execute("DELETE FROM activation_atlases WHERE layer = ?", (layer,))
        con.execute("DELETE FROM activation_atlas_cells WHERE layer = ?", (layer,))


def summaries(con: sqlite3.Connection) -> list[dict]:
    """One dict per stored activation atlas (:data:`COLUMNS`), by layer."""
    if not has_table(con, "activation_atlases"):
        return []
    sql = f"SELECT {', '.join(COLUMNS)} FROM activation_atlases ORDER BY layer"
    return [dict(zip(COLUMNS, r)) for r in con.execute(sql)]


def summary(con: sqlite3.Connection, layer: str) -> dict:
    """:func:`summaries`'s dict of one layer, plus its ``info`` (:class:`NameNotFoundError` when
    missing)."""
    require(con, layer)
    sql = f"SELECT {', '.join(COLUMNS)}, info FROM activation_atlases WHERE layer = ?"
    *row, info = con.execute(sql, (layer,)).fetchone()
    return {**dict(zip(COLUMNS, row)), "info": json.loads(info) if info else {}}


def cells(con: sqlite3.Connection, layer: str) -> list[dict]:
    """The drawn cells of ``layer``'s activation atlas, by cell index: :data:`CELL_COLUMNS` and
    ``typical``, a list of (image, y, x) nearest the cell's mean first."""
    require(con, layer)
    sql = (
        f"SELECT {', '.join(CELL_COLUMNS)}, typical FROM activation_atlas_cells WHERE layer = ? ORDER BY cell"
    )
    out = []
    for *row, typical in con.execute(sql, (layer,)):
        d = dict(zip(CELL_COLUMNS, row))
        d["typical"] = [tuple(t) for t in json.loads(typical)]
        out.append(d)
    return out


def settings(con: sqlite3.Connection, layer: str) -> dict | None:
    """The settings stored with ``layer``'s activation atlas (None: none recorded)."""
    require(con, layer)
    (raw,) = con.execute("SELECT settings FROM activation_atlases WHERE layer = ?", (layer,)).fetchone()
    return None if raw is None else json.loads(raw)
