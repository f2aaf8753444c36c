"""Atlas storage: ``atlas.db`` (SQLite, WAL mode so readers can look while a scan runs), the
scan checkpoint ``scan.ckpt``, and rendered images under ``render/`` (every path:
:mod:`convscope.atlas.paths`; every table: :mod:`convscope.atlas.schema`; the rows of each
family: :mod:`~convscope.atlas.scans`, :mod:`~convscope.atlas.dissections`,
:mod:`~convscope.atlas.empirical`).

The atlas knows which model and which dataset it describes from the moment it is created; a
scan of another model or dataset into it is refused unless the user asks to overwrite.
Results are written in a single transaction: a reader sees the old scan or the new one.
One process writes an atlas at a time: every writer holds the exclusive lock ``atlas.lock``
(:meth:`Atlas.lock`) and another gets a one-line error naming it; readers need no lock.
Reading never changes the database: no DDL, no PRAGMA that writes, and
``Atlas.open(path, readonly=True)`` works on an atlas in a read-only folder. An atlas written
by an older convscope is brought up to date by its next writer.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from convscope.atlas import (
    activation_atlases,
    dictionaries,
    dissections,
    empirical,
    evaluations,
    scans,
    schema,
    stages,
    visuals,
)
from convscope.atlas.paths import AtlasPaths, is_private_file  # noqa: F401 (is_private_file: re-exported)
from convscope.atlas.schema import SCHEMA_VERSION
from convscope.errors import ConvscopeError, LayerNotFoundError, UserInputError
from convscope.inputs.fileio import LockedError, atomic_path, exclusive_lock
from convscope.layers import LayerSpec, LayerTable
from convscope.scan.result import ScanResult, UnitStats, UnitTopK
from convscope.subject import Subject

__all__ = ["SCHEMA_VERSION", "Atlas", "AtlasConflictError", "AtlasLockedError", "AtlasReadOnlyError"]


class AtlasConflictError(UserInputError):
    """The atlas directory already describes another model or dataset, or holds a scan."""


class AtlasLockedError(LockedError):
    """Another process is writing the atlas."""


class AtlasReadOnlyError(UserInputError):
    """A write to an atlas opened read-only, or one that cannot be written here."""


class Atlas(AtlasPaths):
    """An atlas directory. Use :meth:`create` before a scan and :meth:`open` to read one; the
    path helpers (:class:`~convscope.atlas.paths.AtlasPaths`) name every file it holds."""

    def __init__(self, path: str | Path, readonly: bool = False):
        super().__init__(path)
        self.readonly = readonly

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
            atlas._upgrade()
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
                schema.create(
                    con,
                    {
                        "model": json.dumps(model, sort_keys=True),
                        "source": json.dumps(source, sort_keys=True),
                        "created": str(time.time()),
                    },
                )
            finally:
                con.close()
        return atlas

    def lock(self):
        """Context manager holding the atlas's exclusive writer lock (``atlas.lock`` in its
        folder, created if missing): another process that asks meanwhile gets
        :class:`AtlasLockedError` naming this one (pid, command, start time); the same process
        may nest. Every method that writes takes it; hold it around a whole run."""
        self._check_writable()
        return _AtlasLock(self)

    @classmethod
    def open(cls, path: str | Path, readonly: bool = False) -> Atlas:
        """Open an existing atlas (schema version checked).

        ``readonly=True``: nothing is ever written — not even in a read-only folder — and
        every writing method raises :class:`AtlasReadOnlyError`; an atlas of an older schema is
        read as it is. Otherwise an atlas of an older schema is upgraded now (under the lock).
        """
        atlas = cls(path, readonly=readonly)
        if not atlas.db_path.exists():
            raise UserInputError(f"{atlas.path} is not an atlas (no atlas.db)")
        if not atlas.db_path.is_file():
            raise UserInputError(f"{atlas.db_path} is not a file; {atlas.path} is not an atlas")
        version = atlas.schema_version
        if version > SCHEMA_VERSION:
            raise ConvscopeError(
                f"{atlas.path} has atlas schema {version}; this convscope reads up to {SCHEMA_VERSION}"
            )
        if version < SCHEMA_VERSION and not readonly:
            atlas._upgrade()
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

    # -- connections --------------------------------------------------------------------------
    def connect(self, check_same_thread: bool = True) -> sqlite3.Connection:
        """A new read-only connection to ``atlas.db`` (for :mod:`convscope.atlas.queries`);
        the caller closes it."""
        return schema.connect_readonly(self.db_path, check_same_thread)

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        con = self.connect()
        try:
            yield con
        finally:
            con.close()

    def _check_writable(self) -> None:
        if self.readonly:
            raise AtlasReadOnlyError(
                f"{self.path} was opened read-only; open it with Atlas.open(path) to write to it"
            )

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """The writer lock and one transaction on an atlas brought to this schema."""
        with self.lock():
            try:
                con = schema.connect_write(self.db_path)
            except sqlite3.OperationalError as e:
                raise self._unwritable(e) from None
            try:
                try:
                    con.execute("BEGIN IMMEDIATE")
                    schema.migrate(con)
                except sqlite3.OperationalError as e:
                    raise self._unwritable(e) from None
                yield con
                con.commit()
            finally:
                con.close()

    def _unwritable(self, e: Exception) -> AtlasReadOnlyError:
        return AtlasReadOnlyError(
            f"cannot write the atlas {self.path} ({e}); read it with Atlas.open(path, readonly=True) "
            "or copy it to a folder you can write"
        )

    def _upgrade(self) -> None:
        """Bring an atlas of an older schema to this one (a write, under the lock)."""
        version = self.schema_version
        if version >= SCHEMA_VERSION:
            return
        try:
            with self._write():
                pass
        except LockedError:
            raise
        except (OSError, UserInputError):  # no permission to write the folder or the file
            raise AtlasReadOnlyError(
                f"{self.path} has atlas schema {version} and cannot be upgraded to {SCHEMA_VERSION} "
                "here; read it with Atlas.open(path, readonly=True), or copy it to a folder you can "
                "write and open it there to upgrade it"
            ) from None

    def _meta(self, key: str) -> str:
        try:
            with self._read() as con:
                value = scans.meta(con, key)
        except sqlite3.DatabaseError as e:  # not a database, or not one of ours
            raise UserInputError(f"{self.db_path} is not a convscope atlas ({e})") from None
        if value is None:
            raise ConvscopeError(f"{self.db_path} has no {key!r}; it is not a convscope atlas")
        return value

    def _identity(self) -> dict:
        return {"model": json.loads(self._meta("model")), "source": json.loads(self._meta("source"))}

    @property
    def schema_version(self) -> int:
        """The schema version the atlas was written with."""
        return int(self._meta("schema_version"))

    @property
    def model_spec(self) -> dict:
        """The model's spec (what :func:`convscope.zoo.load_spec` loads again)."""
        return json.loads(self._meta("model"))

    @property
    def source_spec(self) -> dict:
        """The image source's spec (what :func:`convscope.inputs.open_spec` opens again)."""
        return json.loads(self._meta("source"))

    # -- scans --------------------------------------------------------------------------------
    def write_scan(self, result: ScanResult, subject: Subject, started: float) -> None:
        """Store a finished scan, replacing any earlier one, in one transaction."""
        with self._write() as con:
            scans.write(con, result, subject, started)

    def run(self) -> dict:
        """The stored scan's settings and counts (empty dict before a scan finished)."""
        with self._read() as con:
            return scans.run(con)

    def layers(self) -> list[dict]:
        """Every scanned layer (name, type, channels, directions, map size, receptive field)."""
        with self._read() as con:
            return scans.layers(con)

    def layer_table(self) -> LayerTable:
        """The scanned layers as a :class:`~convscope.layers.LayerTable` (see :meth:`select`)."""
        with self._read() as con:
            return scans.layer_table(con)

    def select(self, spec: LayerSpec) -> list[str]:
        """Scanned layers named by ``spec``, in the one layer vocabulary of the verbs
        (:meth:`convscope.layers.LayerTable.select`): names, the model's aliases, globs, comma
        lists, ``stages``, ``all-conv``, callables; unknown names raise
        :class:`LayerNotFoundError` with the close scanned ones."""
        return self.layer_table().select(spec)

    def _stored_layers(self, spec: LayerSpec) -> list[str]:
        """``spec`` over the scanned layers; a plain name that was not scanned stays as it is
        (dissections and empirical RFs may hold layers the scan did not)."""
        try:
            return self.select(spec)
        except LayerNotFoundError:
            if isinstance(spec, str) and not any(ch in spec for ch in "*?[,"):
                return [spec]
            raise

    def layer(self, name: str) -> dict:
        """One scanned layer, by name or alias (:class:`LayerNotFoundError` with close matches
        otherwise)."""
        name = self.layer_table().get(name).name
        with self._read() as con:
            return scans.layer(con, name)

    def topk(self, layer: str, unit: int, criterion: str = "max", direction: bool = False) -> UnitTopK:
        """Top-K of one unit (or random direction) of ``layer`` (a name or alias), best first."""
        info = self.layer(layer)
        layer = info["name"]
        kind = "direction" if direction else "channel"
        n = info["directions"] if direction else info["channels"]
        if not 0 <= unit < n:
            raise UserInputError(f"{layer} has no {kind} {unit} (0..{n - 1})")
        with self._read() as con:
            rows = scans.topk(con, layer, unit, criterion, kind)
        if not rows:
            crits = self.run().get("config", {}).get("criteria", [])
            if criterion not in crits:
                raise UserInputError(f"criterion {criterion!r} was not scanned (have {', '.join(crits)})")
        return scans.unit_topk(rows, layer, unit, criterion, direction)

    def stats(self, layer: str, direction: bool = False) -> UnitStats:
        """Per-unit statistics of a scanned layer (or of its random directions)."""
        layer = self.layer(layer)["name"]
        with self._read() as con:
            return scans.stats(con, layer, "direction" if direction else "channel")

    def direction(self, layer: str, idx: int) -> np.ndarray:
        """Random direction ``idx`` of a layer (float32, one weight per channel)."""
        layer = self.layer(layer)["name"]
        with self._read() as con:
            vec = scans.direction(con, layer, idx)
        if vec is None:
            raise UserInputError(f"{layer} has no random direction {idx}")
        return vec

    def skipped(self) -> list[tuple[str, str]]:
        """(name, reason) of every image the scan could not read, in source order."""
        with self._read() as con:
            return [(n, r) for _, n, r in scans.images(con, "skipped")]

    def image_names(self) -> list[str]:
        """The original name of every image of the scan (as the data source gave it: a
        non-UTF-8 file name is the surrogate-escaped ``str`` that opens that file again)."""
        with self._read() as con:
            return [n for _, n, _ in scans.images(con)]

    def unit_names(self) -> dict[str, list[str | None]]:
        """The names of the scanned units that have one (``Subject.unit_name``: the classes of a
        classifier layer), by layer; layers without names are left out."""
        with self._read() as con:
            return scans.unit_names(con)

    def classes(self) -> list[str]:
        """The original class names of the scan's source."""
        with self._read() as con:
            return scans.classes(con)

    # -- empirical receptive fields -----------------------------------------------------------
    def write_empirical_rf(self, rf, occluder: int, stride: int) -> None:
        """Store (or replace) one unit's empirical receptive field."""
        with self._write() as con:
            empirical.write(con, rf, occluder, stride)

    def empirical_rfs(self, layer: LayerSpec | None = None) -> list[dict]:
        """Stored empirical receptive fields (with ``average`` as an array), by layer and unit;
        ``layer``: a layer spec (see :meth:`select`), default every layer."""
        if layer is None:
            with self._read() as con:
                return empirical.read(con, None)
        out = []
        for name in self._stored_layers(layer):
            with self._read() as con:
                out.extend(empirical.read(con, name))
        return out

    # -- dissection ---------------------------------------------------------------------------
    def write_dissection(self, dissection, dataset: str) -> None:
        """Store (or replace) every layer of ``dissection`` under the concept set ``dataset``."""
        with self._write() as con:
            dissections.write(con, dissection, dataset)

    def concept_sets(self) -> list[str]:
        """Names of the concept datasets this atlas holds dissections for."""
        with self._read() as con:
            return dissections.concept_sets(con)

    def dissection_settings(self, dataset: str) -> dict[str, tuple[float, float, float]]:
        """(iou_threshold, quantile, max_coverage) of every layer dissected on ``dataset``, in
        the order they were dissected."""
        with self._read() as con:
            return dissections.settings(con, dataset)

    def dissection(self, dataset: str | None = None, settings: tuple[float, float, float] | None = None):
        """The stored :class:`~convscope.dissect.Dissection` of ``dataset`` (the only one when
        omitted), with every dissected layer (``settings``: only the layers dissected with this
        (iou_threshold, quantile, max_coverage))."""
        from convscope.dissect.result import Dissection

        sets = self.concept_sets()
        if dataset is None:
            if len(sets) != 1:
                raise UserInputError(
                    f"{self.path} holds dissections on {sets or 'no'} concept sets; name one"
                )
            dataset = sets[0]
        if dataset not in sets:
            raise UserInputError(f"{self.path} has no dissection on {dataset!r}; it has {sets}")
        with self._read() as con:
            concepts = dissections.concepts(con, dataset)
            rows = dissections.layer_rows(con, dataset)
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
        layers = {r["layer"]: dissections.layer_dissection(r, numbers) for r in rows}
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
        """Stored labels of a layer's units (``unit``, ``name``, ``category``, ``iou``, ...);
        ``layer``: a name or alias."""
        names = self._stored_layers(layer)
        if len(names) != 1:
            raise UserInputError(
                f"unit labels are per layer; {layer!r} names {len(names)}: {', '.join(names)}"
            )
        (layer,) = names
        with self._read() as con:
            return dissections.unit_labels(con, layer, dataset)

    # -- learned concept sets (dictionaries) ----------------------------------------------------
    def write_dictionary(self, name: str, concepts, settings: dict | None = None) -> None:
        """Store the :class:`~convscope.concepts.ConceptSet` ``concepts`` under ``name`` (letters,
        digits and ``. _ @ + = -``; :func:`~convscope.atlas.dictionaries.default_name` makes one),
        in one transaction, with the JSON-able ``settings`` it was built with (what a resumed
        build must match; :meth:`dictionary_settings`). Re-writing a name replaces it and drops
        what was stored for it: its scan, importance, labels and pictures."""
        name = dictionaries.check_name(name)
        with self.lock():
            folder = self.dictionary_dir(name)
            # the old pictures leave only once the new set is in: set aside, then removed
            aside = folder.with_name(f".{name}.old{os.getpid()}")
            if folder.exists():
                shutil.rmtree(aside, ignore_errors=True)
                folder.rename(aside)
            try:
                with self._write() as con:
                    dictionaries.write(con, name, concepts, settings)
            except BaseException:
                if aside.exists():
                    aside.rename(folder)
                raise
            shutil.rmtree(aside, ignore_errors=True)

    def write_dictionary_scan(self, name: str, scan: ScanResult) -> None:
        """Store the concept scan of dictionary ``name`` (:func:`convscope.concepts.scan_concepts`:
        concept ``i`` is unit ``i`` of the set's layer): per-concept statistics and top-K under
        every criterion, replacing an earlier scan of it."""
        with self._write() as con:
            dictionaries.write_scan(con, dictionaries.check_name(name), scan)

    def register_images(self, scan: ScanResult) -> bool:
        """Store the images a concept scan of this atlas's own source ran on as the atlas's
        images (names, labels, classes), when it holds none yet; True when it wrote them."""
        with self._write() as con:
            return dictionaries.register_images(con, scan)

    def write_dictionary_importance(self, name: str, importance) -> None:
        """Store the importance of each concept of ``name`` for each class (any object with
        ``.matrix`` (classes, n), ``.classes`` (names), ``.counts`` (classes,) and ``.method``),
        replacing an earlier one."""
        with self._write() as con:
            dictionaries.write_importance(con, dictionaries.check_name(name), importance)

    def write_dictionary_labels(self, name: str, dissection, dataset: str) -> None:
        """Store the labels of ``name``'s concepts from ``dissection`` (a
        :class:`~convscope.dissect.Dissection` whose units at the set's layer are its concepts:
        :func:`convscope.concepts.label_concepts`) on the concept dataset ``dataset``."""
        with self._write() as con:
            dictionaries.write_labels(con, dictionaries.check_name(name), dissection, dataset)

    def write_dictionary_picture(self, name: str, concept: int, image) -> Path:
        """Store the picture (a PIL image, e.g. its feature visualisation) of one concept of
        ``name`` as :meth:`dictionary_picture` (PNG, written atomically); returns its path."""
        from convscope.inputs.fileio import save_image

        name = dictionaries.check_name(name)
        with self.lock():
            with self._read() as con:
                concept = dictionaries.check_concept(con, name, concept)
            return save_image(image, self.dictionary_picture(name, concept))

    def dictionaries(self) -> list[dict]:
        """Every stored dictionary, by name: ``name``, ``layer``, ``method``, ``n``, ``channels``,
        ``error``, ``sparsity``, ``dead``, ``samples``, ``seed``, ``model`` and whether its
        ``scanned``, ``importance`` and ``labels`` are stored."""
        with self._read() as con:
            return dictionaries.summaries(con)

    def dictionary(self, name: str):
        """The stored :class:`~convscope.concepts.ConceptSet` ``name`` (unknown names:
        :class:`~convscope.errors.NameNotFoundError` with close matches)."""
        with self._read() as con:
            return dictionaries.read(con, name)

    def dictionary_settings(self, name: str) -> dict | None:
        """The build settings stored with ``name`` (:meth:`write_dictionary`), or None."""
        with self._read() as con:
            return dictionaries.settings(con, name)

    def dictionary_topk(self, name: str, concept: int, criterion: str = "max") -> UnitTopK:
        """Top-K images of one concept of ``name`` under ``criterion``, best first (``unit``: the
        concept; image indices are those of the concept scan's source)."""
        with self._read() as con:
            rows = dictionaries.topk(con, name, concept, criterion)
            layer = dictionaries.summary(con, name)["layer"]
        return dictionaries.unit_topk(rows, layer, int(concept), criterion)

    def dictionary_stats(self, name: str) -> list[dict]:
        """Per-concept statistics of ``name``'s concept scan (``[]``: not scanned)."""
        with self._read() as con:
            return dictionaries.stats(con, name)

    def dictionary_importance(self, name: str) -> dict | None:
        """The stored importance of ``name`` (``method``, ``classes``, ``counts``, ``matrix``
        (classes, n)), or None."""
        with self._read() as con:
            return dictionaries.importance(con, name)

    def dictionary_labels(self, name: str) -> list[dict]:
        """The stored labels of ``name``'s concepts, by concept (``[]``: none)."""
        with self._read() as con:
            return dictionaries.labels(con, name)

    def _replace_folder(
        self, folder: Path, fill: Callable[[Path], None], index: Callable[[sqlite3.Connection], None]
    ) -> None:
        """Replace ``folder`` by a new one that ``fill(path)`` writes beside it, then record it
        with ``index(con)`` in one write transaction; if that fails, the old folder comes back.
        Readers see the old folder or the new one, whole (between the two renames, none)."""
        with self.lock():
            new = folder.with_name(f".{folder.name}.new{os.getpid()}")
            aside = folder.with_name(f".{folder.name}.old{os.getpid()}")
            shutil.rmtree(new, ignore_errors=True)
            new.mkdir(parents=True)
            try:
                fill(new)
                if folder.exists():
                    shutil.rmtree(aside, ignore_errors=True)
                    folder.rename(aside)
                new.rename(folder)
                try:
                    with self._write() as con:
                        index(con)
                except BaseException:
                    shutil.rmtree(folder, ignore_errors=True)
                    if aside.exists():
                        aside.rename(folder)
                    raise
            finally:
                shutil.rmtree(new, ignore_errors=True)
            shutil.rmtree(aside, ignore_errors=True)

    # -- evaluations of attribution methods ----------------------------------------------------
    def write_evaluation(self, name: str, evaluation, settings: dict | None = None) -> dict[str, Path]:
        """Store the :class:`~convscope.attribution.evaluation.Evaluation` ``evaluation`` under
        ``name`` (letters, digits and ``. _ @ + = -``) with the JSON-able ``settings`` it was run
        with: the result (``.npz``), its ranked table as CSV and JSON and its ranked plot in
        :meth:`evaluation_dir`, indexed in the database. A reader sees the old evaluation or the
        new one, whole; re-writing a name replaces it. Returns the paths written, by kind
        (``result``, ``csv``, ``json``, ``plot``)."""
        name = evaluations.check_name(name)

        def fill(new: Path) -> None:
            evaluation.save(new / evaluations.FILES["result"])
            evaluation.to_csv(new / evaluations.FILES["csv"])
            evaluation.to_json(new / evaluations.FILES["json"])
            evaluation.to_png(new / evaluations.FILES["plot"])

        self._replace_folder(
            self.evaluation_dir(name), fill, lambda con: evaluations.write(con, name, evaluation, settings)
        )
        return {kind: self.evaluation_file(name, kind) for kind in evaluations.FILES}

    def evaluations(self) -> list[dict]:
        """Every stored evaluation, by name: ``name``, ``model``, ``methods``, ``metrics``,
        ``images``, ``skipped``, ``created`` (``[]`` in an atlas older than evaluations)."""
        with self._read() as con:
            return evaluations.summaries(con)

    def evaluation(self, name: str):
        """The stored :class:`~convscope.attribution.evaluation.Evaluation` ``name`` (unknown
        names: :class:`~convscope.errors.NameNotFoundError` with close matches)."""
        from convscope.attribution.evaluation import Evaluation

        with self._read() as con:
            evaluations.require(con, name)
        path = self.evaluation_file(name, "result")
        if path.is_symlink() or not path.is_file():
            raise UserInputError(f"the evaluation {name!r} of {self.path} has no {path.name}")
        return Evaluation.load(path)

    def evaluation_settings(self, name: str) -> dict | None:
        """The settings stored with evaluation ``name`` (:meth:`write_evaluation`), or None."""
        with self._read() as con:
            return evaluations.settings(con, name)

    # -- stored feature visualisations ----------------------------------------------------------
    def write_visuals(self, result, settings: dict) -> list[Path]:
        """Store a :class:`~convscope.synthesis.layer_visuals.LayerVisuals` (one batch of a
        layer's units): each image as :meth:`visual_tile` (PNG, atomically; RGBA when the
        result has a transparency map, ``alpha`` rounded to 8 bits, else RGB), then their rows
        and the layer's ``settings`` (JSON-able: what a resumed build must match) in one
        transaction; a unit counts as stored only once its rows are in. Returns the tiles."""
        from PIL import Image

        from convscope.inputs.fileio import save_image

        alpha = getattr(result, "alpha", None)
        if alpha is not None:  # the rows say RGBA exactly when the tiles are
            settings = {**settings, "alpha": True}
        with self.lock():
            tiles = []
            for r, unit in enumerate(result.units):
                for s, (kind, index) in enumerate(result.slots):
                    path = self.visual_tile(result.layer, int(unit), kind, index)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    pixels = result.images[r, s]
                    if alpha is not None:
                        a = np.round(np.clip(alpha[r, s], 0.0, 1.0) * 255).astype(np.uint8)
                        pixels = np.dstack([pixels, a])
                    tiles.append(save_image(Image.fromarray(pixels), path))
            with self._write() as con:
                visuals.write_layer(con, result.layer, result.slots, settings)
                visuals.write_rows(con, result.layer, result, settings)
            return tiles

    def delete_visuals(self, layer: str) -> None:
        """Remove ``layer``'s stored feature visualisations (rows first, then its tiles)."""
        with self.lock():
            with self._write() as con:
                visuals.delete(con, layer)
            shutil.rmtree(self.visuals_dir(layer), ignore_errors=True)

    def visual_layers(self) -> list[dict]:
        """Every layer with stored feature visualisations: ``layer``, ``slots`` ((kind, index)
        tuples), ``settings``, ``units`` (units with every slot stored)."""
        with self._read() as con:
            return visuals.layers(con)

    def visual_settings(self, layer: str) -> dict | None:
        """The settings ``layer``'s visuals were made with, or None when it has none."""
        with self._read() as con:
            row = visuals.layer(con, layer)
        return None if row is None else row["settings"]

    def visual_units(self, layer: str) -> set[int]:
        """The units of ``layer`` whose every visual is stored."""
        with self._read() as con:
            return visuals.done(con, layer)

    def visuals(self, layer: str, unit: int | None = None) -> list[dict]:
        """The stored rows of ``layer`` (of ``unit``): ``unit``, ``kind``, ``index``,
        ``objective`` (the channel's mean activation reached), ``param``, ``steps``, ``size``,
        ``seed``; by unit, kind, index."""
        with self._read() as con:
            return visuals.rows(con, layer, unit)

    # -- activation atlases --------------------------------------------------------------------
    def write_activation_atlas(self, atlas, settings: dict | None = None) -> Path:
        """Store the :class:`~convscope.synthesis.activation_atlas.ActivationAtlas` ``atlas``
        of its layer with the JSON-able ``settings`` it was built with: the result (``.npz``),
        the big picture and one PNG per tile in :meth:`activation_atlas_dir`, its cells in the
        database. A reader sees the old one or the new one, whole; a layer's atlas is replaced.
        Returns the folder."""
        from PIL import Image

        def fill(new: Path) -> None:
            (new / activation_atlases.TILES).mkdir(parents=True)
            atlas.save(new / activation_atlases.FILES["result"])
            big = (np.clip(atlas.image, 0, 1) * 255).round().astype(np.uint8)
            Image.fromarray(big).save(new / activation_atlases.FILES["image"])
            for i, tile in enumerate(atlas.tiles):
                pixels = (np.clip(tile, 0, 1) * 255).round().astype(np.uint8)
                Image.fromarray(pixels).save(new / activation_atlases.TILES / f"cell{i:04d}.png")

        folder = self.activation_atlas_dir(atlas.layer)
        self._replace_folder(folder, fill, lambda con: activation_atlases.write(con, atlas, settings))
        return folder

    def activation_atlases(self) -> list[dict]:
        """Every stored activation atlas, by layer: ``layer``, ``grid``, ``cells``, ``samples``,
        ``images``, ``skipped``, ``tile`` (px), ``layout``, ``created`` (``[]``: none)."""
        with self._read() as con:
            return activation_atlases.summaries(con)

    def activation_atlas(self, layer: str):
        """The stored :class:`~convscope.synthesis.activation_atlas.ActivationAtlas` of ``layer``
        (none stored: :class:`~convscope.errors.NameNotFoundError` with close matches)."""
        from convscope.synthesis.activation_atlas import ActivationAtlas

        with self._read() as con:
            activation_atlases.require(con, layer)
        path = self.activation_atlas_file(layer, "result")
        if path.is_symlink() or not path.is_file():
            raise UserInputError(f"the activation atlas of {layer} in {self.path} has no {path.name}")
        return ActivationAtlas.load(path)

    def activation_atlas_cells(self, layer: str) -> list[dict]:
        """The stored cells of ``layer``'s activation atlas (see
        :func:`convscope.atlas.activation_atlases.cells`)."""
        with self._read() as con:
            return activation_atlases.cells(con, layer)

    def activation_atlas_settings(self, layer: str) -> dict | None:
        """The settings stored with ``layer``'s activation atlas, or None."""
        with self._read() as con:
            return activation_atlases.settings(con, layer)

    # -- the microscope's stages ---------------------------------------------------------------
    def write_stage(
        self,
        name: str,
        status: str,
        settings: dict | None = None,
        error: str | None = None,
        position: int | None = None,
    ) -> None:
        """Record a stage of ``convscope microscope``: ``status`` pending, running (stamps the
        start and the ``settings``, JSON-able), done or failed (stamps the finish, the seconds
        and, failed, the one-line ``error``)."""
        with self._write() as con:
            stages.write(con, name, status, settings, error, position)

    def stages(self) -> list[dict]:
        """The recorded stages in run order: ``name``, ``status``, ``settings``, ``started``,
        ``finished``, ``seconds``, ``error`` (none in an atlas older than schema 9)."""
        with self._read() as con:
            return stages.read(con)


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
