"""Read-only, paginated queries on an atlas for the viewer and the static export: the same
:class:`~convscope.atlas.store.Atlas`, opened with ``readonly=True`` (SQLite ``mode=ro``: the
viewer can never change an atlas), one connection per thread, reopened when ``atlas.db`` is
replaced (:meth:`AtlasReader.refresh`). Unknown layers raise
:class:`~convscope.errors.LayerNotFoundError` (close matches in ``.close``), other unknown names
:class:`~convscope.errors.NameNotFoundError`; both are ``KeyError`` s, which the viewer answers
with 404."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import numpy as np

from convscope.atlas import (
    activation_atlases,
    dictionaries,
    dissections,
    empirical,
    evaluations,
    scans,
    search,
    visuals,
)
from convscope.atlas.schema import has_table
from convscope.atlas.store import Atlas
from convscope.errors import NameNotFoundError, UserInputError

SORTS = ("unit", "max", "iou", "label")  # what a layer's units can be sorted by


class AtlasReader:
    """Queries for the pages of one atlas; one read-only connection per thread."""

    def __init__(self, path: str | Path):
        self.atlas = Atlas.open(path, readonly=True)  # a one-line error when it is no atlas
        self.path = self.atlas.path
        self.db = self.atlas.db_path
        self._local = threading.local()
        self._stamp = self._file_stamp()
        self._generation = 0  # bumped when atlas.db is replaced: every thread reconnects

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
        """This thread's read-only connection (rows as :class:`sqlite3.Row`)."""
        c = getattr(self._local, "con", None)
        if c is not None and self._local.generation != self._generation:
            c.close()  # a connection to the replaced (deleted) file
            c = None
        if c is None:
            c = self.atlas.connect(check_same_thread=False)
            c.row_factory = sqlite3.Row
            self._local.con, self._local.generation = c, self._generation
        return c

    # -- the atlas as a whole -----------------------------------------------------------------
    def meta(self) -> dict:
        """The model and source specs, the schema version and the names of units by layer."""
        rows = {r["key"]: r["value"] for r in self.con().execute("SELECT key, value FROM meta")}
        return {
            "model": json.loads(rows.get("model", "{}")),
            "source": json.loads(rows.get("source", "{}")),
            "schema": rows.get("schema_version"),
            # names of units by layer (a classifier's classes); absent in older atlases
            "unit_names": json.loads(rows.get("unit_names", "{}")),
        }

    def reopen(self, subject=None):
        """The (subject, image source) the atlas was made from, loaded again from its stored
        model and source specs (``subject``: one already loaded, whose images are opened again)."""
        from convscope.atlas.build import reopen

        return reopen(self.atlas, subject)

    def n_images(self) -> int:
        return self.con().execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def classes(self) -> list[str]:
        """The printable class names, by index."""
        return [r[0] for r in self.con().execute("SELECT name FROM classes ORDER BY idx")]

    def image(self, idx: int) -> dict | None:
        """One image's row (printable ``name``, ``label``, ``status``, ``reason``)."""
        r = self.con().execute("SELECT * FROM images WHERE idx = ?", (idx,)).fetchone()
        return dict(r) if r else None

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

    # -- layers -------------------------------------------------------------------------------
    def layers(self) -> list[dict]:
        return scans.layers(self.con())

    def layer(self, name: str) -> dict:
        """One scanned layer's row, by name or the model's alias (``conv5``);
        :class:`LayerNotFoundError` with close matches otherwise."""
        row = scans.layer(self.con(), name)
        if row is None:
            row = scans.layer(self.con(), scans.layer_table(self.con()).get(name).name)
        return row

    def dissection_summary(self) -> dict[str, dict]:
        """Per layer: concept set, detectors and unique concepts."""
        return dissections.summary(self.con())

    def empirical_summary(self) -> dict[str, dict]:
        """Per layer: how many units have an empirical RF, and their mean size."""
        return empirical.summary(self.con())

    def units(
        self, layer: str, page: int = 0, per_page: int = 100, sort: str = "unit", label: str | None = None
    ) -> tuple[list[dict], int]:
        """One page of a layer's units: unit, max, mean, top image and position, concept label
        and IoU (first concept set) — and the total count after filtering."""
        if sort not in SORTS:
            raise UserInputError(f"sort by one of {', '.join(SORTS)}")
        labels = has_table(self.con(), "unit_labels")
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

    def directions(self, layer: str) -> int:
        """How many random directions the layer was scanned with."""
        row = scans.layer(self.con(), layer)
        return int(row["directions"] or 0) if row else 0

    # -- units --------------------------------------------------------------------------------
    def unit(self, layer: str, unit: int, kind: str = "channel") -> dict | None:
        """Statistics of a unit (``kind="direction"``: of a random direction)."""
        return scans.unit(self.con(), layer, unit, kind)

    def topk(self, layer: str, unit: int, criterion: str = "max", kind: str = "channel") -> list[dict]:
        """Top-K rows of a unit (``kind="direction"``: of a random direction) with printable
        image names."""
        return scans.topk(self.con(), layer, unit, criterion, kind, original=False)

    def unit_topk(self, layer: str, unit: int, criterion: str = "max", direction: bool = False):
        """The same :class:`~convscope.scan.result.UnitTopK` as ``Atlas.topk``, read-only."""
        rows = self.topk(layer, unit, criterion, "direction" if direction else "channel")
        return scans.unit_topk(rows, layer, unit, criterion, direction)

    def direction_vector(self, layer: str, idx: int) -> np.ndarray:
        """Random direction ``idx`` of a layer (:class:`NameNotFoundError` when there is none)."""
        vec = scans.direction(self.con(), layer, idx)
        if vec is None:
            have = [f"{layer}:{i}" for i in range(self.directions(layer))]
            raise NameNotFoundError(f"{layer}:{idx}", have, what="random direction")
        return vec

    def concepts(self, layer: str, unit: int, n: int = 5) -> list[dict]:
        """The unit's best concepts per concept set, from the stored IoU matrices."""
        return dissections.best_concepts(self.con(), layer, unit, n)

    def empirical_rf(self, layer: str, unit: int) -> dict | None:
        """The unit's stored empirical receptive field (``average`` as an array), or None."""
        return empirical.read_one(self.con(), layer, unit)

    # -- learned concept sets (dictionaries) ----------------------------------------------------
    def dictionaries(self) -> list[dict]:
        """Every stored dictionary (name, layer, method, n, error, sparsity, dead, samples...), by
        name (``[]`` in an atlas older than dictionaries)."""
        return dictionaries.summaries(self.con())

    def dictionary(self, name: str) -> dict:
        """One dictionary's summary row; :class:`NameNotFoundError` (close matches) otherwise."""
        return dictionaries.summary(self.con(), name)

    def dictionary_set(self, name: str):
        """The stored :class:`~convscope.concepts.ConceptSet` ``name`` (for heat maps)."""
        return dictionaries.read(self.con(), name)

    def dictionary_scan(self, name: str) -> dict | None:
        """The concept scan's settings (k, criteria, map size, images), or None."""
        return dictionaries.scan_info(self.con(), name)

    def dictionary_stats(self, name: str) -> list[dict]:
        """Per-concept statistics of the concept scan, by concept (``[]``: not scanned)."""
        return dictionaries.stats(self.con(), name)

    def dictionary_topk(self, name: str, concept: int, criterion: str = "max") -> list[dict]:
        """Top-K rows of one concept with printable image names, and ``atlas_image``: the index
        of the same image in the atlas's scan (same index and name), or None when the concept
        scan ran on other images."""
        rows = dictionaries.topk(self.con(), name, concept, criterion, original=False)
        for r in rows:
            found = self.image(r["image"])
            r["atlas_image"] = r["image"] if found and found["name"] == r["name"] else None
        return rows

    def dictionary_best(self, name: str, criterion: str) -> dict[int, dict]:
        """The best hit of every concept under ``criterion`` (``image``, ``name``, ``score``,
        ``y``, ``x``, ``atlas_image`` as in :meth:`dictionary_topk`), by concept, one query."""
        rows = dictionaries.best(self.con(), name, criterion)
        for r in rows.values():
            found = self.image(r["image"])
            r["atlas_image"] = r["image"] if found and found["name"] == r["name"] else None
        return rows

    def dictionary_unit_topk(self, name: str, concept: int, criterion: str = "max"):
        """The concept's top-K as a :class:`~convscope.scan.result.UnitTopK` (``unit``: the
        concept), for pictures."""
        rows = dictionaries.topk(self.con(), name, concept, criterion)
        return dictionaries.unit_topk(rows, self.dictionary(name)["layer"], int(concept), criterion)

    def dictionary_importance(self, name: str) -> dict | None:
        """The stored importance (method, classes, counts, matrix (classes, n)), or None."""
        return dictionaries.importance(self.con(), name)

    def dictionary_labels(self, name: str) -> list[dict]:
        """The stored dissection labels of the concepts, by concept (``[]``: none)."""
        return dictionaries.labels(self.con(), name)

    def dictionary_picture(self, name: str, concept: int) -> Path | None:
        """The stored picture (feature visualisation) of one concept, or None; a symlink, or a
        path that resolves outside the atlas, is none (the server and the export must never
        serve or copy what a link points to)."""
        dictionaries.check_concept(self.con(), name, concept)
        path = self.atlas.dictionary_picture(name, concept)
        try:
            if path.is_symlink() or not path.resolve().is_relative_to(self.path.resolve()):
                return None
            return path if path.is_file() else None
        except (OSError, ValueError):
            return None

    # -- evaluations of attribution methods ----------------------------------------------------
    def evaluations(self) -> list[dict]:
        """Every stored evaluation (name, model, methods, metrics, images, skipped, created), by
        name (``[]`` in an atlas older than evaluations)."""
        return evaluations.summaries(self.con())

    def evaluation(self, name: str) -> dict:
        """One evaluation's summary row; :class:`NameNotFoundError` (close matches) otherwise."""
        return evaluations.summary(self.con(), name)

    def evaluation_file(self, name: str, kind: str) -> Path | None:
        """A stored file of evaluation ``name`` (``kind``: ``result``, ``csv``, ``json``,
        ``plot``), or None when missing; a symlink, or a path that resolves outside the atlas, is
        none (the server and the export never serve or copy what a link points to)."""
        evaluations.require(self.con(), name)
        path = self.atlas.evaluation_file(name, kind)
        try:
            inside = path.resolve().is_relative_to(self.path.resolve())
            if path.is_symlink() or path.parent.is_symlink() or not inside:
                return None
            return path if path.is_file() else None
        except (OSError, ValueError):
            return None

    def evaluation_report(self, name: str) -> dict | None:
        """What ``table.json`` of evaluation ``name`` holds (``table``: the ranked rows with
        their intervals, ``settings``, ``methods``, ``metrics``, ``images``, ``skipped``,
        ``higher_is_better``), read as stored (nothing computed), or None when it is missing or
        unreadable."""
        path = self.evaluation_file(name, "json")
        if path is None:
            return None
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) and isinstance(doc.get("table"), list) else None

    # -- stored feature visualisations ----------------------------------------------------------
    def visual_layers(self) -> list[dict]:
        """Every layer with stored feature visualisations (``layer``, ``slots``, ``settings``,
        ``units``), by name (``[]`` in an atlas older than stored visuals)."""
        return visuals.layers(self.con())

    def visual_layer(self, layer: str) -> dict | None:
        """:meth:`visual_layers`'s dict of ``layer``, or None when it has no stored visuals."""
        return visuals.layer(self.con(), layer)

    def visual_rows(self, layer: str, unit: int) -> list[dict]:
        """The stored visuals of one unit (``kind``, ``index``, ``objective``, ``param``,
        ``steps``, ``size``, ``seed``, ``alpha``: an RGBA tile, MaCo's transparency as its alpha
        channel): positive, negative, then the diversity set."""
        return visuals.rows(self.con(), layer, unit)

    def visual_objectives(self, layer: str, kind: str = "positive") -> dict[int, float]:
        """unit -> objective reached by the first stored image of ``kind``, for ``layer``."""
        return visuals.objectives(self.con(), layer, kind)

    def visual_tile(self, layer: str, unit: int, kind: str, index: int = 0) -> Path | None:
        """The stored tile of one visual, or None: no row for it (a tile without a row is an
        unfinished batch), an unknown kind or a name that cannot be a file, a symlink, or a
        path that resolves outside the atlas."""
        if kind not in visuals.KINDS or not any(
            r["kind"] == kind and r["index"] == index for r in visuals.rows(self.con(), layer, unit)
        ):
            return None
        try:
            path = self.atlas.visual_tile(layer, unit, kind, index)
            inside = path.resolve().is_relative_to(self.path.resolve())
            if path.is_symlink() or path.parent.is_symlink() or not inside:
                return None
            return path if path.is_file() else None
        except (OSError, ValueError, UserInputError):
            return None

    def image_concepts(self, idx: int, limit: int = 24) -> list[dict]:
        """Concepts whose top-K list the atlas image ``idx`` (``dictionary``, ``concept``,
        ``criterion``, ``rank``, ``score``), best rank first; units are not among them."""
        row = self.image(idx)
        return [] if row is None else dictionaries.image_concepts(self.con(), idx, row["name"], limit)

    # -- activation atlases --------------------------------------------------------------------
    def activation_atlases(self) -> list[dict]:
        """Every stored activation atlas's summary (layer, grid, cells, samples, images,
        skipped, tile, layout, created), by layer (``[]``: none)."""
        return activation_atlases.summaries(self.con())

    def activation_atlas(self, layer: str) -> dict:
        """One layer's activation-atlas summary with its ``info``; :class:`NameNotFoundError`
        (close matches) when none is stored."""
        return activation_atlases.summary(self.con(), layer)

    def activation_atlas_cells(self, layer: str) -> list[dict]:
        """The drawn cells of ``layer``'s activation atlas (row, col, count, norm, score,
        top_class, top_label, top_share, typical: (image, y, x) nearest its mean first)."""
        return activation_atlases.cells(self.con(), layer)

    def activation_atlas_file(self, layer: str, kind: str, cell: int | None = None) -> Path | None:
        """A stored file of ``layer``'s activation atlas: ``kind`` ``result`` or ``image``, or
        ``tile`` with its ``cell``; None when missing, a symlink or resolving outside the atlas
        (never served or copied)."""
        activation_atlases.require(self.con(), layer)
        if kind == "tile":
            path = self.atlas.activation_atlas_tile(layer, int(cell))
        else:
            path = self.atlas.activation_atlas_file(layer, kind)
        try:
            inside = path.resolve().is_relative_to(self.path.resolve())
            links = any(p.is_symlink() for p in (path, path.parent, self.atlas.activation_atlas_dir(layer)))
            if links or not inside:
                return None
            return path if path.is_file() else None
        except (OSError, ValueError):
            return None

    # -- search by label -----------------------------------------------------------------------
    def search_units(self, query: str, page: int = 0, per_page: int = 50) -> tuple[list[dict], int]:
        """One page of the units whose labels contain ``query`` (case-insensitive), best IoU
        first, and the number of matches (:func:`convscope.atlas.search.search_units`)."""
        return search.search_units(self.con(), query, page, per_page)

    def search_unit_names(self, query: str, page: int = 0, per_page: int = 50) -> tuple[list[dict], int]:
        """One page of the units whose name in the model contains ``query``, and the number of
        matches (:func:`convscope.atlas.search.search_unit_names`)."""
        return search.search_unit_names(self.con(), query, page, per_page)

    def search_concepts(self, query: str, page: int = 0, per_page: int = 50) -> tuple[list[dict], int]:
        """One page of the learned concepts whose label contains ``query``, best IoU first, and
        the number of matches (:func:`convscope.atlas.search.search_concepts`); ``atlas_image``
        as in :meth:`dictionary_topk`."""
        rows, total = search.search_concepts(self.con(), query, page, per_page)
        for r in rows:
            found = None if r["image"] is None else self.image(r["image"])
            r["atlas_image"] = r["image"] if found and found["name"] == r["image_name"] else None
        return rows, total

    def all_labels(self) -> list[dict]:
        """Every stored label of units and concepts, alphabetically (for the static index)."""
        return search.all_labels(self.con())
