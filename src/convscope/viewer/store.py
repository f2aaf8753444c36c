"""Read-only, paginated queries on an atlas database for the viewer (the SQLite file is opened
with ``mode=ro``: the viewer can never change an atlas)."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import numpy as np

from convscope.errors import UserInputError

SORTS = ("unit", "max", "iou", "label")


def reopen_from_meta(meta: dict, subject=None):
    """The subject and image source an atlas was made from, from its (read-only) meta
    (``subject``: one already loaded, whose images are opened again)."""
    from convscope.atlas import reopen

    specs = type("Specs", (), {"model_spec": meta["model"], "source_spec": meta["source"]})
    return reopen(specs(), subject)


class AtlasReader:
    """Queries for the pages; one connection per thread."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.db = self.path / "atlas.db"
        if not self.db.exists():
            raise UserInputError(f"{self.path} is not an atlas (no atlas.db)")
        self._local = threading.local()
        self._stamp = self._file_stamp()
        self._generation = 0  # bumped when atlas.db is replaced: every thread reconnects
        try:  # not an SQLite file, or not one of ours: a one-line error, not a traceback
            self.meta()
        except sqlite3.DatabaseError as e:
            raise UserInputError(f"{self.db} is not a convscope atlas ({e})") from None

    def _file_stamp(self) -> tuple[int, int, int] | None:
        """Which file ``atlas.db`` is now: (device, inode, mtime); None while it is missing.
        The mtime tells a new file from an old one that got the freed inode number."""
        try:
            s = self.db.stat()
        except OSError:
            return None
        return (s.st_dev, s.st_ino, s.st_mtime_ns)

    def refresh(self) -> bool:
        """Notice an ``atlas.db`` replaced since the last call (``scan --overwrite`` deletes it
        and writes a new one): True when it changed; connections then reopen on next use."""
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        self._generation += 1
        return True

    def available(self) -> bool:
        """Whether ``atlas.db`` exists now (it is briefly missing while a scan replaces it)."""
        return self._stamp is not None

    def con(self) -> sqlite3.Connection:
        c = getattr(self._local, "con", None)
        if c is not None and self._local.generation != self._generation:
            c.close()  # a connection to the replaced (deleted) file
            c = None
        if c is None:
            c = sqlite3.connect(f"{self.db.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            c.row_factory = sqlite3.Row
            self._local.con, self._local.generation = c, self._generation
        return c

    def _has(self, table: str) -> bool:
        return (
            self.con()
            .execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,))
            .fetchone()
            is not None
        )

    def meta(self) -> dict:
        rows = {r["key"]: r["value"] for r in self.con().execute("SELECT key, value FROM meta")}
        return {
            "model": json.loads(rows.get("model", "{}")),
            "source": json.loads(rows.get("source", "{}")),
            "schema": rows.get("schema_version"),
            # names of units by layer (a classifier's classes); absent in older atlases
            "unit_names": json.loads(rows.get("unit_names", "{}")),
        }

    def n_images(self) -> int:
        return self.con().execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def layers(self) -> list[dict]:
        return [dict(r) for r in self.con().execute("SELECT * FROM layers ORDER BY position")]

    def layer(self, name: str) -> dict:
        r = self.con().execute("SELECT * FROM layers WHERE name = ?", (name,)).fetchone()
        if r is None:
            raise KeyError(name)
        return dict(r)

    def dissection_summary(self) -> dict[str, dict]:
        """Per layer: concept set, detectors and unique concepts."""
        if not self._has("unit_labels"):
            return {}
        out: dict[str, dict] = {}
        for r in self.con().execute(
            "SELECT layer, dataset, SUM(detector) AS det, COUNT(DISTINCT CASE WHEN detector "
            "THEN concept END) AS uniq FROM unit_labels GROUP BY layer, dataset"
        ):
            out.setdefault(r["layer"], {})[r["dataset"]] = {"detectors": r["det"], "unique": r["uniq"]}
        return out

    def empirical_summary(self) -> dict[str, dict]:
        if not self._has("empirical_rf"):
            return {}
        return {
            r["layer"]: {"units": r["n"], "mean": r["m"]}
            for r in self.con().execute(
                "SELECT layer, COUNT(*) AS n, AVG(size) AS m FROM empirical_rf GROUP BY layer"
            )
        }

    def units(
        self, layer: str, page: int = 0, per_page: int = 100, sort: str = "unit", label: str | None = None
    ) -> tuple[list[dict], int]:
        """One page of a layer's units: unit, max, mean, top image and position, concept label
        and IoU (first concept set) — and the total count after filtering."""
        if sort not in SORTS:
            raise UserInputError(f"sort by one of {', '.join(SORTS)}")
        labels = self._has("unit_labels")
        join = (
            (
                "LEFT JOIN (SELECT layer, unit, name, category, iou, detector FROM unit_labels "
                "WHERE dataset = (SELECT MIN(dataset) FROM unit_labels)) l "
                "ON l.layer = u.layer AND l.unit = u.unit"
            )
            if labels
            else ""
        )
        cols = (
            ", l.name AS label, l.category, l.iou, l.detector"
            if labels
            else ", NULL AS label, NULL AS category, NULL AS iou, NULL AS detector"
        )
        where = "u.layer = ? AND u.kind = 'channel'"
        args: list = [layer]
        if label and labels:  # a substring, case-insensitive; % and _ are literal
            where += " AND l.name LIKE ? ESCAPE '\\'"
            args.append("%" + label.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        order = {
            "unit": "u.unit",
            "max": "u.max DESC",
            "iou": "l.iou DESC" if labels else "u.unit",
            "label": "l.name, l.iou DESC" if labels else "u.unit",
        }[sort]
        total = self.con().execute(f"SELECT COUNT(*) FROM units u {join} WHERE {where}", args).fetchone()[0]
        rows = self.con().execute(
            f"SELECT u.unit, u.max, u.mean, t.image, t.score, t.y, t.x{cols} FROM units u {join} "
            "LEFT JOIN topk t ON t.layer = u.layer AND t.kind = 'channel' AND t.unit = u.unit "
            "AND t.criterion = 'max' AND t.rank = 0 "
            f"WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",
            [*args, per_page, page * per_page],
        )
        return [dict(r) for r in rows], total

    def unit(self, layer: str, unit: int, kind: str = "channel") -> dict | None:
        """Statistics of a unit (``kind="direction"``: of a random direction)."""
        sql = "SELECT * FROM units WHERE layer = ? AND kind = ? AND unit = ?"
        r = self.con().execute(sql, (layer, kind, unit)).fetchone()
        return dict(r) if r else None

    def topk(self, layer: str, unit: int, criterion: str = "max", kind: str = "channel") -> list[dict]:
        """Top-K rows of a unit (``kind="direction"``: of a random direction) with image names."""
        return [
            dict(r)
            for r in self.con().execute(
                "SELECT t.rank, t.image, t.score, t.y, t.x, i.name FROM topk t JOIN images i ON "
                "i.idx = t.image WHERE t.layer = ? AND t.kind = ? AND t.unit = ? AND t.criterion = ? "
                "ORDER BY t.rank",
                (layer, kind, unit, criterion),
            )
        ]

    def unit_topk(self, layer: str, unit: int, criterion: str = "max", direction: bool = False):
        """The same :class:`~convscope.scan.result.UnitTopK` as ``Atlas.topk``, read-only."""
        from convscope.scan.result import UnitTopK

        rows = self.topk(layer, unit, criterion, "direction" if direction else "channel")
        return UnitTopK(
            layer,
            unit,
            criterion,
            direction,
            np.array([r["image"] for r in rows], np.int64),
            [r["name"] for r in rows],
            np.array([r["score"] for r in rows], np.float32),
            np.array([r["y"] for r in rows], np.int64),
            np.array([r["x"] for r in rows], np.int64),
        )

    def direction_vector(self, layer: str, idx: int) -> np.ndarray:
        row = (
            self.con()
            .execute("SELECT vector FROM directions WHERE layer = ? AND idx = ?", (layer, idx))
            .fetchone()
        )
        if row is None:
            raise KeyError((layer, idx))
        return np.frombuffer(row[0], dtype=np.float32).copy()

    def directions(self, layer: str) -> int:
        r = self.con().execute("SELECT directions FROM layers WHERE name = ?", (layer,)).fetchone()
        return int(r[0] or 0) if r else 0

    def criteria(self, layer: str) -> list[str]:
        """The layer's top-K criteria, ``max`` first."""
        found = [
            r[0]
            for r in self.con().execute(
                "SELECT DISTINCT criterion FROM topk WHERE layer = ? AND kind = 'channel' AND unit = 0",
                (layer,),
            )
        ]
        return sorted(found, key=lambda c: (c != "max", c))

    def concepts(self, layer: str, unit: int, n: int = 5) -> list[dict]:
        """The unit's best concepts per concept set, from the stored IoU matrices."""
        if not self._has("dissections"):
            return []
        out = []
        for r in self.con().execute(
            "SELECT dataset, units, concepts, iou, iou_threshold FROM dissections WHERE layer = ?", (layer,)
        ):
            if unit >= r["units"]:
                continue
            iou = np.frombuffer(r["iou"], np.float32).reshape(r["units"], r["concepts"])[unit]
            numbers = [
                x[0]
                for x in self.con().execute(
                    "SELECT number FROM concepts WHERE dataset = ? ORDER BY number", (r["dataset"],)
                )
            ]
            names = {
                x[0]: (x[1], x[2])
                for x in self.con().execute(
                    "SELECT number, name, category FROM concepts WHERE dataset = ?", (r["dataset"],)
                )
            }
            for j in np.argsort(-iou)[:n]:
                nm, cat = names[numbers[j]]
                out.append(
                    {
                        "dataset": r["dataset"],
                        "concept": nm,
                        "category": cat,
                        "iou": float(iou[j]),
                        "detector": bool(iou[j] > r["iou_threshold"]),
                    }
                )
        return out

    def empirical_rf(self, layer: str, unit: int) -> dict | None:
        if not self._has("empirical_rf"):
            return None
        r = (
            self.con()
            .execute("SELECT * FROM empirical_rf WHERE layer = ? AND unit = ?", (layer, unit))
            .fetchone()
        )
        if r is None:
            return None
        d = dict(r)
        d["average"] = np.frombuffer(d["average"], np.float32).reshape(d["side"], d["side"])
        return d

    def image(self, idx: int) -> dict | None:
        r = self.con().execute("SELECT * FROM images WHERE idx = ?", (idx,)).fetchone()
        return dict(r) if r else None

    def classes(self) -> list[str]:
        return [r[0] for r in self.con().execute("SELECT name FROM classes ORDER BY idx")]

    def image_units(self, idx: int, limit: int = 24) -> list[dict]:
        """Units that list this image in their top-K (best rank first)."""
        return [
            dict(r)
            for r in self.con().execute(
                "SELECT layer, unit, criterion, rank, score FROM topk WHERE image = ? AND kind = 'channel' "
                "ORDER BY rank, score DESC LIMIT ?",
                (idx, limit),
            )
        ]
