"""Atlas storage: ``atlas.db`` (SQLite, WAL mode so readers can look while a scan runs), the
scan checkpoint ``scan.ckpt``, and rendered images under ``render/``.

The atlas knows which model and which dataset it describes from the moment it is created; a
scan of another model or dataset into it is refused unless the user asks to overwrite.
Results are written in a single transaction: a reader sees the old scan or the new one.
One process writes an atlas at a time: every writer holds the exclusive lock ``atlas.lock``
(:meth:`Atlas.lock`) and another gets a one-line error naming it; readers need no lock.

Image and class names are stored losslessly: ``name`` holds the printable form
(:func:`convscope.inputs.display_name`), and ``raw`` the file system's bytes of a name that is
not UTF-8 (NULL otherwise); the reading methods give back the original names.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from convscope.atlas.paths import AtlasPaths, is_private_file  # noqa: F401 (is_private_file: re-exported)
from convscope.errors import ConvscopeError, LayerNotFoundError, UserInputError
from convscope.inputs.fileio import (
    LockedError,
    atomic_path,
    exclusive_lock,
    is_text,
    name_bytes,
    name_from_bytes,
)
from convscope.scan.result import ScanResult, UnitStats, UnitTopK
from convscope.subject import Subject

SCHEMA_VERSION = 4  # 2: empirical receptive fields; 3: dissections; 4: lossless names (raw)


_SCHEMA = (
    """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs(
    id INTEGER PRIMARY KEY, started REAL, finished REAL, status TEXT, config TEXT,
    n_images INTEGER, processed INTEGER, skipped INTEGER, seconds REAL);
CREATE TABLE classes(idx INTEGER PRIMARY KEY, name TEXT NOT NULL, raw BLOB);
CREATE TABLE images(
    idx INTEGER PRIMARY KEY, name TEXT NOT NULL, label INTEGER, status TEXT NOT NULL, reason TEXT,
    raw BLOB);
CREATE TABLE layers(
    name TEXT PRIMARY KEY, position INTEGER, type TEXT, channels INTEGER, directions INTEGER,
    height INTEGER, width INTEGER, rf_size_y REAL, rf_size_x REAL, rf_jump_y REAL,
    rf_jump_x REAL, rf_start_y REAL, rf_start_x REAL, rf_global INTEGER);
CREATE TABLE units(
    layer TEXT, kind TEXT, unit INTEGER, mean REAL, std REAL, max REAL, frac_pos REAL,
    threshold REAL, PRIMARY KEY(layer, kind, unit));
CREATE TABLE topk(
    layer TEXT, kind TEXT, unit INTEGER, criterion TEXT, rank INTEGER, image INTEGER,
    score REAL, y INTEGER, x INTEGER, PRIMARY KEY(layer, kind, unit, criterion, rank));
CREATE TABLE directions(layer TEXT, idx INTEGER, vector BLOB, PRIMARY KEY(layer, idx));
"""
    + "\n"
)

# Tables added after version 1; created on demand in older atlases too.
_EMPIRICAL = """
CREATE TABLE IF NOT EXISTS empirical_rf(
    layer TEXT, unit INTEGER, size REAL, height INTEGER, width INTEGER, theoretical REAL,
    threshold REAL, occluder INTEGER, stride INTEGER, images INTEGER, side INTEGER,
    average BLOB, PRIMARY KEY(layer, unit));
"""


_DISSECTION = """
CREATE TABLE IF NOT EXISTS concepts(
    dataset TEXT, number INTEGER, name TEXT, category TEXT, PRIMARY KEY(dataset, number));
CREATE TABLE IF NOT EXISTS dissections(
    dataset TEXT, layer TEXT, spec TEXT, categories TEXT, units INTEGER, concepts INTEGER,
    images INTEGER, quantile REAL, iou_threshold REAL, max_coverage REAL, finished REAL,
    top INTEGER, iou BLOB, thresholds BLOB, top_images BLOB, top_values BLOB, coverage BLOB,
    PRIMARY KEY(dataset, layer));
CREATE TABLE IF NOT EXISTS unit_labels(
    dataset TEXT, layer TEXT, unit INTEGER, concept INTEGER, name TEXT, category TEXT, iou REAL,
    detector INTEGER, coverage REAL, PRIMARY KEY(dataset, layer, unit));
"""


class AtlasConflictError(UserInputError):
    """The atlas directory already describes another model or dataset, or holds a scan."""


class AtlasLockedError(LockedError):
    """Another process is writing the atlas."""


def _stored_name(name: str) -> tuple[str, bytes | None]:
    """(printable text, raw bytes or None) of an image or class name."""
    from convscope.inputs.images import display_name

    return (name, None) if is_text(name) else (display_name(name), name_bytes(name))


def _text(value: str | None) -> str | None:
    """A text column's value that SQLite can hold (a reason may quote a non-UTF-8 name)."""
    from convscope.inputs.images import display_name

    return value if value is None or is_text(value) else display_name(value)


def _original(name: str, raw: bytes | None) -> str:
    return name if raw is None else name_from_bytes(raw)


def _columns(con: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in con.execute(f"PRAGMA table_info({table})")}


def _migrate(con: sqlite3.Connection) -> None:
    """Bring an atlas written by an older convscope to this schema (tables and columns added
    later, created empty), inside the caller's transaction where there is one."""
    for statement in (_EMPIRICAL + _DISSECTION).split(";"):
        if statement.strip():
            con.execute(statement)
    for table in ("images", "classes"):
        if "raw" not in _columns(con, table):
            con.execute(f"ALTER TABLE {table} ADD COLUMN raw BLOB")
    con.execute(
        "UPDATE meta SET value = ? WHERE key = 'schema_version' AND CAST(value AS INTEGER) < ?",
        (str(SCHEMA_VERSION), SCHEMA_VERSION),
    )


class Atlas(AtlasPaths):
    """An atlas directory. Use :meth:`create` before a scan and :meth:`open` to read one; the
    path helpers (:class:`~convscope.atlas.paths.AtlasPaths`) name every file it holds."""

    # -- lifecycle ----------------------------------------------------------------------------
    @classmethod
    def create(
        cls, path: str | Path, model: dict, source: dict, *, overwrite: bool = False, resume: bool = False
    ) -> Atlas:
        """Prepare ``path`` for a scan of ``model`` over ``source`` (both JSON-able specs).

        An existing atlas of another model or dataset is refused (``AtlasConflictError``)
        unless ``overwrite``; one of the same is refused unless ``resume`` or ``overwrite``.
        """
        atlas = cls(path)
        with atlas.lock():
            return atlas._create(model, source, overwrite, resume)

    def _create(self, model: dict, source: dict, overwrite: bool, resume: bool) -> Atlas:
        atlas = self
        if atlas.db_path.exists() and not overwrite:
            old = atlas._identity()
            if old != {"model": model, "source": source}:
                raise AtlasConflictError(
                    f"{atlas.path} is an atlas of {old['model'].get('name')} on "
                    f"{old['source'].get('description')}; choose another --out or pass --overwrite"
                )
            if not resume and (atlas.run() or atlas.checkpoint_path.exists()):
                raise AtlasConflictError(
                    f"{atlas.path} already holds a scan of this model and dataset; "
                    "pass --resume to continue it or --overwrite to start again"
                )
            return atlas
        if overwrite:
            for p in (atlas.db_path, atlas.checkpoint_path):
                for q in (p, p.with_name(p.name + "-wal"), p.with_name(p.name + "-shm")):
                    q.unlink(missing_ok=True)
            shutil.rmtree(atlas.render_dir, ignore_errors=True)
        # the atlas appears whole or not at all, from a temporary file of this writer's own
        with atomic_path(atlas.db_path) as tmp:
            con = sqlite3.connect(tmp)
            try:
                con.executescript(_SCHEMA + _EMPIRICAL + _DISSECTION)
                con.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [
                        ("schema_version", str(SCHEMA_VERSION)),
                        ("model", json.dumps(model, sort_keys=True)),
                        ("source", json.dumps(source, sort_keys=True)),
                        ("created", str(time.time())),
                    ],
                )
                con.commit()
            finally:
                con.close()
        return atlas

    def lock(self):
        """Context manager holding the atlas's exclusive writer lock (``atlas.lock`` in its
        folder, created if missing): another process that asks meanwhile gets
        :class:`AtlasLockedError` naming this one (pid, command, start time); the same process
        may nest. Every method that writes takes it; hold it around a whole run."""
        return _AtlasLock(self)

    @classmethod
    def open(cls, path: str | Path) -> Atlas:
        """Open an existing atlas for reading (schema version checked)."""
        atlas = cls(path)
        if not atlas.db_path.exists():
            raise UserInputError(f"{atlas.path} is not an atlas (no atlas.db)")
        if not atlas.db_path.is_file():
            raise UserInputError(f"{atlas.db_path} is not a file; {atlas.path} is not an atlas")
        version = int(atlas._meta("schema_version"))
        if version > SCHEMA_VERSION:
            raise ConvscopeError(
                f"{atlas.path} has atlas schema {version}; this convscope reads up to {SCHEMA_VERSION}"
            )
        return atlas

    @classmethod
    def for_model(cls, path: str | Path, model: dict, source: dict) -> Atlas:
        """An existing atlas of ``model`` (whatever dataset it was scanned on), or a new one of
        ``model`` described by ``source``; an atlas of another model is refused."""
        atlas = cls(path)
        if atlas.db_path.exists():
            atlas = cls.open(path)
            if atlas.model_spec != model:
                raise AtlasConflictError(
                    f"{atlas.path} is an atlas of {atlas.model_spec.get('name')}, not of "
                    f"{model.get('name')}; choose another --out"
                )
            return atlas
        return cls.create(path, model, source)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.db_path, timeout=30)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            yield con
        finally:
            con.close()

    def _meta(self, key: str) -> str:
        try:
            with self._connect() as con:
                row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.DatabaseError as e:  # not a database, or not one of ours
            raise UserInputError(f"{self.db_path} is not a convscope atlas ({e})") from None
        if row is None:
            raise ConvscopeError(f"{self.db_path} has no {key!r}; it is not a convscope atlas")
        return row[0]

    def _identity(self) -> dict:
        return {"model": json.loads(self._meta("model")), "source": json.loads(self._meta("source"))}

    @property
    def model_spec(self) -> dict:
        return json.loads(self._meta("model"))

    @property
    def source_spec(self) -> dict:
        return json.loads(self._meta("source"))

    # -- writing ------------------------------------------------------------------------------
    def write_scan(self, result: ScanResult, subject: Subject, started: float) -> None:
        """Store a finished scan, replacing any earlier one, in one transaction."""
        skipped = dict(result.skipped)
        with self.lock(), self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            _migrate(con)
            # the viewer's image page asks which units list an image
            con.execute("CREATE INDEX IF NOT EXISTS topk_image ON topk(image)")
            for table in ("runs", "classes", "images", "layers", "units", "topk", "directions"):
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
                [(i, *_stored_name(c)) for i, c in enumerate(result.classes)],
            )
            # the model's names of units (a classifier's classes), for pages made without the model
            names = {n: [subject.unit_name(n, u) for u in range(result.channels[n])] for n in result.layers}
            con.execute(
                "INSERT OR REPLACE INTO meta VALUES ('unit_names', ?)",
                (json.dumps({n: v for n, v in names.items() if any(v)}),),
            )
            con.executemany(
                "INSERT INTO images(idx, name, label, status, reason, raw) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (i, text, label, "skipped" if i in skipped else "ok", _text(skipped.get(i)), raw)
                    for i, (text, raw, label) in enumerate(
                        (*_stored_name(n), lab) for n, lab in zip(result.image_names, result.image_labels)
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
            con.commit()

    # -- reading ------------------------------------------------------------------------------
    def run(self) -> dict:
        """The stored scan's settings and counts (empty dict before a scan finished)."""
        with self._connect() as con:
            row = con.execute(
                "SELECT started, finished, status, config, n_images, processed, "
                "skipped, seconds FROM runs ORDER BY id DESC LIMIT 1"
            ).fetchone()
        if row is None:
            return {}
        keys = ("started", "finished", "status", "config", "n_images", "processed", "skipped", "seconds")
        out = dict(zip(keys, row))
        out["config"] = json.loads(out["config"])
        return out

    def layers(self) -> list[dict]:
        with self._connect() as con:
            con.row_factory = sqlite3.Row
            rows = con.execute("SELECT * FROM layers ORDER BY position").fetchall()
        return [dict(r) for r in rows]

    def layer(self, name: str) -> dict:
        found = {r["name"]: r for r in self.layers()}
        if name not in found:
            raise LayerNotFoundError(name, list(found), what="scanned layer")
        return found[name]

    def topk(self, layer: str, unit: int, criterion: str = "max", direction: bool = False) -> UnitTopK:
        """Top-K of one unit (or random direction), best first."""
        info = self.layer(layer)
        kind = "direction" if direction else "channel"
        n = info["directions"] if direction else info["channels"]
        if not 0 <= unit < n:
            raise UserInputError(f"{layer} has no {kind} {unit} (0..{n - 1})")
        with self._connect() as con:
            raw = "i.raw" if "raw" in _columns(con, "images") else "NULL"
            rows = con.execute(
                f"SELECT t.image, i.name, t.score, t.y, t.x, {raw} FROM topk t JOIN images i "
                "ON i.idx = t.image WHERE t.layer = ? AND t.kind = ? AND t.unit = ? "
                "AND t.criterion = ? ORDER BY t.rank",
                (layer, kind, unit, criterion),
            ).fetchall()
        rows = [(i, _original(n, r), s, y, x) for i, n, s, y, x, r in rows]
        if not rows:
            crits = self.run().get("config", {}).get("criteria", [])
            if criterion not in crits:
                raise UserInputError(f"criterion {criterion!r} was not scanned (have {', '.join(crits)})")
        cols = list(zip(*rows)) if rows else [[], [], [], [], []]
        return UnitTopK(
            layer,
            unit,
            criterion,
            direction,
            np.array(cols[0], dtype=np.int64),
            list(cols[1]),
            np.array(cols[2], dtype=np.float32),
            np.array(cols[3], dtype=np.int64),
            np.array(cols[4], dtype=np.int64),
        )

    def stats(self, layer: str, direction: bool = False) -> UnitStats:
        self.layer(layer)
        with self._connect() as con:
            rows = con.execute(
                "SELECT mean, std, max, frac_pos, threshold FROM units WHERE layer = ? AND kind = ?"
                " ORDER BY unit",
                (layer, "direction" if direction else "channel"),
            ).fetchall()
        cols = (
            [np.array(c, dtype=np.float64) if c else np.zeros(0) for c in zip(*rows)]
            if rows
            else [np.zeros(0)] * 5
        )
        thr = None if rows and rows[0][4] is None else cols[4]
        return UnitStats(cols[0], cols[1], cols[2], cols[3], thr)

    def direction(self, layer: str, idx: int) -> np.ndarray:
        with self._connect() as con:
            row = con.execute(
                "SELECT vector FROM directions WHERE layer = ? AND idx = ?", (layer, idx)
            ).fetchone()
        if row is None:
            raise UserInputError(f"{layer} has no random direction {idx}")
        return np.frombuffer(row[0], dtype=np.float32).copy()

    def write_empirical_rf(self, rf, occluder: int, stride: int) -> None:
        """Store (or replace) one unit's empirical receptive field."""
        with self.lock(), self._connect() as con:
            _migrate(con)
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
            con.commit()

    def empirical_rfs(self, layer: str | None = None) -> list[dict]:
        """Stored empirical receptive fields (with ``average`` as an array), by layer and unit."""
        with self._connect() as con:
            con.executescript(_EMPIRICAL)
            con.row_factory = sqlite3.Row
            q = "SELECT * FROM empirical_rf" + (" WHERE layer = ?" if layer else "") + " ORDER BY layer, unit"
            rows = [dict(r) for r in con.execute(q, (layer,) if layer else ())]
        for r in rows:
            r["average"] = np.frombuffer(r["average"], dtype=np.float32).reshape(r["side"], r["side"]).copy()
        return rows

    def skipped(self) -> list[tuple[str, str]]:
        """(name, reason) of every image the scan could not read, in source order."""
        return [(n, r) for _, n, r in self._images("status = 'skipped'")]

    def image_names(self) -> list[str]:
        """The original name of every image of the scan (as the data source gave it: a
        non-UTF-8 file name is the surrogate-escaped ``str`` that opens that file again)."""
        return [n for _, n, _ in self._images()]

    def unit_names(self) -> dict[str, list[str | None]]:
        """The names of the scanned units that have one (``Subject.unit_name``: the classes of a
        classifier layer), by layer; layers without names are left out."""
        with self._connect() as con:
            row = con.execute("SELECT value FROM meta WHERE key = 'unit_names'").fetchone()
        return json.loads(row[0]) if row else {}

    def classes(self) -> list[str]:
        """The original class names of the scan's source."""
        with self._connect() as con:
            raw = "raw" if "raw" in _columns(con, "classes") else "NULL"
            rows = con.execute(f"SELECT name, {raw} FROM classes ORDER BY idx").fetchall()
        return [_original(n, r) for n, r in rows]

    def _images(self, where: str = "1") -> list[tuple[int, str, str | None]]:
        with self._connect() as con:
            raw = "raw" if "raw" in _columns(con, "images") else "NULL"
            rows = con.execute(
                f"SELECT idx, name, reason, {raw} FROM images WHERE {where} ORDER BY idx"
            ).fetchall()
        return [(i, _original(n, r), reason) for i, n, reason, r in rows]

    # -- dissection ---------------------------------------------------------------------------
    def write_dissection(self, dissection, dataset: str) -> None:
        """Store (or replace) every layer of ``dissection`` under the concept set ``dataset``."""
        with self.lock(), self._connect() as con:
            _migrate(con)
            con.execute("DELETE FROM concepts WHERE dataset = ?", (dataset,))
            con.executemany(
                "INSERT INTO concepts VALUES (?, ?, ?, ?)",
                [(dataset, c.number, c.name, c.category) for c in dissection.concepts.values()],
            )
            for name, d in dissection.layers.items():
                con.execute(
                    "INSERT OR REPLACE INTO dissections VALUES "
                    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            con.commit()

    def concept_sets(self) -> list[str]:
        """Names of the concept datasets this atlas holds dissections for."""
        with self._connect() as con:
            con.executescript(_DISSECTION)
            return [r[0] for r in con.execute("SELECT DISTINCT dataset FROM dissections ORDER BY dataset")]

    def dissection_settings(self, dataset: str) -> dict[str, tuple[float, float, float]]:
        """(iou_threshold, quantile, max_coverage) of every layer dissected on ``dataset``, in
        the order they were dissected."""
        with self._connect() as con:
            con.executescript(_DISSECTION)
            return {
                r[0]: (r[1], r[2], r[3])
                for r in con.execute(
                    "SELECT layer, iou_threshold, quantile, max_coverage FROM dissections "
                    "WHERE dataset = ? ORDER BY finished",
                    (dataset,),
                )
            }

    def dissection(self, dataset: str | None = None, settings: tuple[float, float, float] | None = None):
        """The stored :class:`~convscope.dissect.Dissection` of ``dataset`` (the only one when
        omitted), with every dissected layer (``settings``: only the layers dissected with this
        (iou_threshold, quantile, max_coverage))."""
        from convscope.dissect.concepts import Concept
        from convscope.dissect.result import Dissection, LayerDissection

        sets = self.concept_sets()
        if dataset is None:
            if len(sets) != 1:
                raise UserInputError(
                    f"{self.path} holds dissections on {sets or 'no'} concept sets; name one"
                )
            dataset = sets[0]
        if dataset not in sets:
            raise UserInputError(f"{self.path} has no dissection on {dataset!r}; it has {sets}")
        with self._connect() as con:
            con.row_factory = sqlite3.Row
            concepts = {
                r["number"]: Concept(r["number"], r["name"], r["category"])
                for r in con.execute("SELECT * FROM concepts WHERE dataset = ?", (dataset,))
            }
            rows = [
                dict(r)
                for r in con.execute(
                    "SELECT * FROM dissections WHERE dataset = ? ORDER BY finished", (dataset,)
                )
            ]
        if settings is not None:
            rows = [
                r for r in rows if (r["iou_threshold"], r["quantile"], r["max_coverage"]) == tuple(settings)
            ]
            if not rows:
                raise UserInputError(
                    f"{self.path} has no layer dissected on {dataset!r} with "
                    f"--iou, --quantile, --max-coverage {tuple(settings)}"
                )
        found = {(r["iou_threshold"], r["quantile"], r["max_coverage"]) for r in rows}
        if len(found) > 1:
            raise UserInputError(
                f"the layers of {dataset!r} were dissected with different --iou, "
                "--quantile or --max-coverage; dissect them again with one setting"
            )
        numbers = sorted(concepts)
        layers = {}
        for r in rows:
            u, c, k = r["units"], r["concepts"], r["top"]
            layers[r["layer"]] = LayerDissection(
                r["layer"],
                np.frombuffer(r["thresholds"], np.float32).copy(),
                numbers,
                np.frombuffer(r["iou"], np.float32).reshape(u, c).astype(np.float64),
                np.frombuffer(r["top_images"], np.int64).reshape(u, k).copy(),
                np.frombuffer(r["top_values"], np.float32).reshape(u, k).copy(),
                np.frombuffer(r["coverage"], np.float64).copy(),
            )
        last = rows[-1]
        return Dissection(
            layers,
            concepts,
            json.loads(last["categories"]),
            last["iou_threshold"],
            last["quantile"],
            last["max_coverage"],
            last["images"],
            [],
            json.loads(last["spec"]),
            self.model_spec.get("name", "model"),
        )

    def unit_labels(self, layer: str, dataset: str | None = None) -> list[dict]:
        """Stored labels of a layer's units (``unit``, ``name``, ``category``, ``iou``, ...)."""
        with self._connect() as con:
            con.executescript(_DISSECTION)
            con.row_factory = sqlite3.Row
            q = "SELECT * FROM unit_labels WHERE layer = ?" + (" AND dataset = ?" if dataset else "")
            return [
                dict(r)
                for r in con.execute(q + " ORDER BY dataset, unit", (layer, dataset) if dataset else (layer,))
            ]


class _AtlasLock:
    """The writer lock of one atlas (see :meth:`Atlas.lock`)."""

    def __init__(self, atlas: Atlas):
        self.atlas = atlas
        self._cm = None

    def __enter__(self) -> dict:
        where = self.atlas.path
        if where.exists() and not where.is_dir():
            raise UserInputError(
                f"{os.fsdecode(where)!r} is a file, not an atlas folder; choose another --out"
            )
        self._cm = exclusive_lock(
            self.atlas.lock_path,
            what=f"the atlas {os.fsdecode(where)!r}",
            hint="wait for it to finish or choose another --out",
        )
        try:
            return self._cm.__enter__()
        except LockedError as e:
            raise AtlasLockedError(str(e), e.holder) from None

    def __exit__(self, *exc) -> None:
        self._cm.__exit__(*exc)
