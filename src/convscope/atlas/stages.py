"""The SQL of the microscope's stages table (``convscope microscope``): one row per stage with
its status (pending, running, done, failed), the settings it ran with (JSON), when it started and
finished, its seconds and the one-line error of a failure."""

from __future__ import annotations

import json
import sqlite3
import time

from convscope.atlas.schema import has_table

STATUSES = ("pending", "running", "done", "failed")


def write(
    con: sqlite3.Connection,
    name: str,
    status: str,
    settings: dict | None = None,
    error: str | None = None,
    position: int | None = None,
) -> None:
    """Record ``name``'s ``status``: ``running`` stamps its start (and its settings), ``done``
    and ``failed`` its finish and seconds; ``pending`` resets the row."""
    if status not in STATUSES:
        raise ValueError(f"unknown stage status {status!r}")
    now = time.time()
    old = con.execute("SELECT started, settings, position FROM stages WHERE name = ?", (name,)).fetchone()
    started, stored, pos = old if old is not None else (None, None, None)
    text = json.dumps(settings, sort_keys=True) if settings is not None else stored
    pos = position if position is not None else pos
    if status in ("pending", "running"):
        started = now if status == "running" else None
        finished = seconds = None
    else:
        finished = now
        seconds = None if started is None else now - started
    con.execute(
        "INSERT OR REPLACE INTO stages VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (name, pos, status, text, started, finished, seconds, error),
    )


def read(con: sqlite3.Connection) -> list[dict]:
    """Every recorded stage in run order: ``name``, ``status``, ``settings`` (dict or None),
    ``started``, ``finished`` (Unix seconds or None), ``seconds``, ``error``. An atlas older
    than the table has none."""
    if not has_table(con, "stages"):
        return []
    keys = ("name", "status", "settings", "started", "finished", "seconds", "error")
    sql = f"SELECT {', '.join(keys)} FROM stages ORDER BY position, name"
    rows = [dict(zip(keys, r)) for r in con.execute(sql)]
    for r in rows:
        r["settings"] = None if r["settings"] is None else json.loads(r["settings"])
    return rows
