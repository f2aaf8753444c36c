"""The rows of stored evaluations of attribution methods (``convscope evaluate``): one row per
evaluation in the ``evaluations`` table (what it compared, on how many images, the settings a
resumed run must match); the :class:`~convscope.attribution.evaluation.Evaluation` itself, its
table (CSV, JSON) and its ranked plot are files of the atlas folder
(:meth:`~convscope.atlas.paths.AtlasPaths.evaluation_file`). Every function takes an open
connection and works on an atlas older than evaluations too (nothing stored)."""

from __future__ import annotations

import json
import sqlite3
import time

from convscope.atlas.dictionaries import NAME
from convscope.atlas.schema import has_table
from convscope.errors import NameNotFoundError, UserInputError

# the files of one stored evaluation, in its folder
FILES = {"result": "evaluation.npz", "csv": "table.csv", "json": "table.json", "plot": "ranked.png"}

COLUMNS = ("name", "model", "methods", "metrics", "images", "skipped", "created")


def check_name(name: str) -> str:
    """``name`` when it can name an evaluation (letters, digits and ``. _ @ + = -``, starting
    with a letter or digit, at most 100 characters: one URL segment and one file name), else a
    one-line :class:`UserInputError`."""
    if not isinstance(name, str) or NAME.fullmatch(name) is None:
        raise UserInputError(
            f"evaluation name {name!r} is not valid: use letters, digits and . _ @ + = - "
            "(starting with a letter or digit, at most 100 characters)"
        )
    return name


def names(con: sqlite3.Connection) -> list[str]:
    """Every stored evaluation's name, sorted (``[]`` in an atlas older than evaluations)."""
    if not has_table(con, "evaluations"):
        return []
    return [r[0] for r in con.execute("SELECT name FROM evaluations ORDER BY name")]


def require(con: sqlite3.Connection, name: str) -> str:
    """``name`` when the atlas holds that evaluation, else :class:`NameNotFoundError` (close
    matches; a ``KeyError``, which the viewer answers with 404)."""
    have = names(con)
    if name not in have:
        raise NameNotFoundError(str(name), have, what="evaluation")
    return name


def write(con: sqlite3.Connection, name: str, evaluation, settings: dict | None = None) -> None:
    """Index ``evaluation`` under ``name`` with the JSON-able ``settings`` it was run with,
    replacing a row of that name (its files are written by the store)."""
    con.execute("DELETE FROM evaluations WHERE name = ?", (name,))
    con.execute(
        f"INSERT INTO evaluations({', '.join(COLUMNS)}, settings) "
        f"VALUES ({', '.join('?' * (len(COLUMNS) + 1))})",
        (
            name,
            str(evaluation.model),
            json.dumps(list(evaluation.methods)),
            json.dumps(list(evaluation.metrics)),
            len(evaluation.images),
            len(evaluation.skipped),
            time.time(),
            None if settings is None else json.dumps(settings, sort_keys=True, default=repr),
        ),
    )


def delete(con: sqlite3.Connection, name: str) -> None:
    """Remove the row of evaluation ``name``."""
    if has_table(con, "evaluations"):
        con.execute("DELETE FROM evaluations WHERE name = ?", (name,))


def _row(r) -> dict:
    d = dict(zip(COLUMNS, r))
    d["methods"], d["metrics"] = json.loads(d["methods"]), json.loads(d["metrics"])
    return d


def summaries(con: sqlite3.Connection) -> list[dict]:
    """One dict per stored evaluation (``name``, ``model``, ``methods``, ``metrics`` (lists),
    ``images``, ``skipped``, ``created``), by name."""
    if not has_table(con, "evaluations"):
        return []
    return [_row(r) for r in con.execute(f"SELECT {', '.join(COLUMNS)} FROM evaluations ORDER BY name")]


def summary(con: sqlite3.Connection, name: str) -> dict:
    """:func:`summaries`'s dict of one evaluation (:class:`NameNotFoundError` when missing)."""
    require(con, name)
    sql = f"SELECT {', '.join(COLUMNS)} FROM evaluations WHERE name = ?"
    return _row(con.execute(sql, (name,)).fetchone())


def settings(con: sqlite3.Connection, name: str) -> dict | None:
    """The settings stored with evaluation ``name`` (None: none recorded)."""
    require(con, name)
    (raw,) = con.execute("SELECT settings FROM evaluations WHERE name = ?", (name,)).fetchone()
    return None if raw is None else json.loads(raw)
