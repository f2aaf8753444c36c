"""The atlas database: every table, the schema version, migrations, and the two ways to connect.

Only writers change the database: :func:`create` (a new atlas) and :func:`migrate` (an atlas of
an older convscope, brought up to date inside a writer's transaction). Readers connect with
:func:`connect_readonly` — SQLite ``mode=ro``, no DDL, no PRAGMA that writes — and cope with the
tables and columns an older schema lacks (:func:`has_table`, :func:`columns`).

Image and class names are stored losslessly: ``name`` holds the printable form
(:func:`convscope.inputs.display_name`), and ``raw`` the file system's bytes of a name that is
not UTF-8 (NULL otherwise); :func:`original_name` gives back the name as the source spelled it.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from convscope.inputs.fileio import is_text, name_bytes, name_from_bytes

# 2: empirical receptive fields; 3: dissections; 4: lossless names (raw), topk_image index;
# 5: learned concept sets (dictionaries); 6: evaluations of attribution methods;
# 7: stored feature visualisations (visuals, visual_layers); 8: activation atlases;
# 9: the microscope's stages (stages)
SCHEMA_VERSION = 9

SCANS = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs(
    id INTEGER PRIMARY KEY, started REAL, finished REAL, status TEXT, config TEXT,
    n_images INTEGER, processed INTEGER, skipped INTEGER, seconds REAL);
CREATE TABLE IF NOT EXISTS classes(idx INTEGER PRIMARY KEY, name TEXT NOT NULL, raw BLOB);
CREATE TABLE IF NOT EXISTS images(
    idx INTEGER PRIMARY KEY, name TEXT NOT NULL, label INTEGER, status TEXT NOT NULL, reason TEXT,
    raw BLOB);
CREATE TABLE IF NOT EXISTS layers(
    name TEXT PRIMARY KEY, position INTEGER, type TEXT, channels INTEGER, directions INTEGER,
    height INTEGER, width INTEGER, rf_size_y REAL, rf_size_x REAL, rf_jump_y REAL,
    rf_jump_x REAL, rf_start_y REAL, rf_start_x REAL, rf_global INTEGER);
CREATE TABLE IF NOT EXISTS units(
    layer TEXT, kind TEXT, unit INTEGER, mean REAL, std REAL, max REAL, frac_pos REAL,
    threshold REAL, PRIMARY KEY(layer, kind, unit));
CREATE TABLE IF NOT EXISTS topk(
    layer TEXT, kind TEXT, unit INTEGER, criterion TEXT, rank INTEGER, image INTEGER,
    score REAL, y INTEGER, x INTEGER, PRIMARY KEY(layer, kind, unit, criterion, rank));
CREATE TABLE IF NOT EXISTS directions(layer TEXT, idx INTEGER, vector BLOB, PRIMARY KEY(layer, idx));
"""

# the viewer's image page asks which units list an image
INDEXES = """
CREATE INDEX IF NOT EXISTS topk_image ON topk(image);
"""

EMPIRICAL = """
CREATE TABLE IF NOT EXISTS empirical_rf(
    layer TEXT, unit INTEGER, size REAL, height INTEGER, width INTEGER, theoretical REAL,
    threshold REAL, occluder INTEGER, stride INTEGER, images INTEGER, side INTEGER,
    average BLOB, PRIMARY KEY(layer, unit));
"""

DISSECTIONS = """
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

# learned concept sets (convscope.atlas.dictionaries): the ConceptSet's npz bytes, its concept
# scan (tables of their own: a new scan replaces topk/units whole), importance and labels
DICTIONARIES = """
CREATE TABLE IF NOT EXISTS dictionaries(
    name TEXT PRIMARY KEY, layer TEXT NOT NULL, method TEXT, n INTEGER, channels INTEGER, error REAL,
    sparsity REAL, dead INTEGER, samples INTEGER, seed INTEGER, model TEXT, created REAL, data BLOB,
    settings TEXT);
CREATE TABLE IF NOT EXISTS dictionary_scans(
    name TEXT PRIMARY KEY, layer TEXT, k INTEGER, criteria TEXT, height INTEGER, width INTEGER,
    images INTEGER, finished REAL);
CREATE TABLE IF NOT EXISTS dictionary_units(
    name TEXT, concept INTEGER, mean REAL, std REAL, max REAL, frac_pos REAL, threshold REAL,
    PRIMARY KEY(name, concept));
CREATE TABLE IF NOT EXISTS dictionary_topk(
    name TEXT, concept INTEGER, criterion TEXT, rank INTEGER, image INTEGER, image_name TEXT,
    raw BLOB, score REAL, y INTEGER, x INTEGER, PRIMARY KEY(name, concept, criterion, rank));
CREATE INDEX IF NOT EXISTS dictionary_topk_image ON dictionary_topk(image);
CREATE TABLE IF NOT EXISTS dictionary_importance(
    name TEXT PRIMARY KEY, method TEXT, classes TEXT, rows INTEGER, counts BLOB, matrix BLOB,
    grouping TEXT, logits BLOB);
CREATE TABLE IF NOT EXISTS dictionary_labels(
    name TEXT, concept INTEGER, dataset TEXT, label TEXT, category TEXT, iou REAL, detector INTEGER,
    coverage REAL, PRIMARY KEY(name, concept));
"""

# evaluations of attribution methods (convscope.atlas.evaluations): an index of what each
# compared and the settings a resumed run must match; the results are files of the folder
EVALUATIONS = """
CREATE TABLE IF NOT EXISTS evaluations(
    name TEXT PRIMARY KEY, model TEXT, methods TEXT, metrics TEXT, images INTEGER, skipped INTEGER,
    created REAL, settings TEXT);
"""

# stored feature visualisations (convscope.atlas.visuals): per layer its slots and the settings
# a resumed build must match, per image the objective reached; the images are tiles of the folder
VISUALS = """
CREATE TABLE IF NOT EXISTS visual_layers(layer TEXT PRIMARY KEY, slots TEXT, settings TEXT, created REAL);
CREATE TABLE IF NOT EXISTS visuals(
    layer TEXT, unit INTEGER, kind TEXT, idx INTEGER, objective REAL, param TEXT, steps INTEGER,
    size TEXT, seed INTEGER, PRIMARY KEY(layer, unit, kind, idx));
"""

# activation atlases (convscope.atlas.activation_atlases): per layer its grid and the settings a
# resumed build must match, per drawn cell its count, top class and typical vectors; the result,
# the big picture and the tiles are files of the folder
ACTIVATION_ATLASES = """
CREATE TABLE IF NOT EXISTS activation_atlases(
    layer TEXT PRIMARY KEY, grid INTEGER, cells INTEGER, samples INTEGER, images INTEGER,
    skipped INTEGER, tile INTEGER, layout TEXT, created REAL, settings TEXT, info TEXT);
CREATE TABLE IF NOT EXISTS activation_atlas_cells(
    layer TEXT, cell INTEGER, row INTEGER, col INTEGER, count INTEGER, norm REAL, score REAL,
    top_class INTEGER, top_label TEXT, top_share REAL, typical TEXT, PRIMARY KEY(layer, cell));
"""

# the stages of `convscope microscope` (convscope.atlas.stages): what each ran with and how it ended
STAGES = """
CREATE TABLE IF NOT EXISTS stages(
    name TEXT PRIMARY KEY, position INTEGER, status TEXT NOT NULL, settings TEXT, started REAL,
    finished REAL, seconds REAL, error TEXT);
"""

# columns a schema-5 table got after its first release (added empty by migrate)
LATER_COLUMNS = (
    ("dictionary_importance", "grouping", "TEXT"),
    ("dictionary_importance", "logits", "BLOB"),
    ("dictionaries", "settings", "TEXT"),
)

DDL = (
    SCANS
    + INDEXES
    + EMPIRICAL
    + DISSECTIONS
    + DICTIONARIES
    + EVALUATIONS
    + VISUALS
    + ACTIVATION_ATLASES
    + STAGES
)


def _statements(script: str) -> list[str]:
    return [s for s in script.split(";") if s.strip()]


# -- connections -------------------------------------------------------------------------------
def connect_readonly(db: Path, check_same_thread: bool = True) -> sqlite3.Connection:
    """A connection that cannot change ``db`` (SQLite ``mode=ro``; nothing is run on it).

    A read-only WAL database needs its ``-shm`` file; where the folder or the file is not
    writable (a shared, read-only atlas) SQLite cannot make one, and the file is opened as
    ``immutable`` instead — nobody can write it from here, so nothing changes under the reader.
    """
    db = Path(db)
    immutable = not (os.access(db, os.W_OK) and os.access(db.parent, os.W_OK))
    uri = db.resolve().as_uri() + "?mode=ro" + ("&immutable=1" if immutable else "")
    return sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=check_same_thread)


def connect_write(db: Path) -> sqlite3.Connection:
    """A connection for a writer (WAL mode, so readers can look while a scan runs)."""
    con = sqlite3.connect(db, timeout=30)
    con.execute("PRAGMA journal_mode=WAL")
    return con


# -- the schema --------------------------------------------------------------------------------
def create(con: sqlite3.Connection, meta: dict[str, str]) -> None:
    """Every table of this schema in an empty database, and its ``meta`` rows (``meta``: key
    to text; ``schema_version`` is added)."""
    con.execute("PRAGMA journal_mode=WAL")  # persistent: every later connection reads in WAL
    con.executescript(DDL)
    con.executemany(
        "INSERT INTO meta VALUES (?, ?)", [("schema_version", str(SCHEMA_VERSION)), *meta.items()]
    )
    con.commit()


def migrate(con: sqlite3.Connection) -> None:
    """Bring an atlas written by an older convscope to this schema (tables, columns and indexes
    added later, created empty), inside the writer's transaction where there is one."""
    for statement in _statements(DDL):
        con.execute(statement)
    for table in ("images", "classes"):
        if "raw" not in columns(con, table):
            con.execute(f"ALTER TABLE {table} ADD COLUMN raw BLOB")
    for table, column, kind in LATER_COLUMNS:  # columns added to a table of schema 5
        if column not in columns(con, table):
            con.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    con.execute(
        "UPDATE meta SET value = ? WHERE key = 'schema_version' AND CAST(value AS INTEGER) < ?",
        (str(SCHEMA_VERSION), SCHEMA_VERSION),
    )


def version(con: sqlite3.Connection) -> int | None:
    """The schema version the atlas was written with (None: no version recorded)."""
    row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return None if row is None else int(row[0])


def has_table(con: sqlite3.Connection, table: str) -> bool:
    """Whether the database has ``table`` (an older schema may lack it)."""
    sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    return con.execute(sql, (table,)).fetchone() is not None


def columns(con: sqlite3.Connection, table: str) -> set[str]:
    """The column names of ``table`` (empty when it is missing)."""
    return {r[1] for r in con.execute(f"PRAGMA table_info({table})")}


def raw_column(con: sqlite3.Connection, table: str, alias: str = "") -> str:
    """The ``raw`` column of ``table`` in a SELECT, or NULL in an atlas older than schema 4."""
    return f"{alias}raw" if "raw" in columns(con, table) else "NULL"


# -- names -------------------------------------------------------------------------------------
def stored_name(name: str) -> tuple[str, bytes | None]:
    """(printable text, raw bytes or None) of an image or class name."""
    from convscope.inputs.images import display_name

    return (name, None) if is_text(name) else (display_name(name), name_bytes(name))


def stored_text(value: str | None) -> str | None:
    """A text column's value that SQLite can hold (a reason may quote a non-UTF-8 name)."""
    from convscope.inputs.images import display_name

    return value if value is None or is_text(value) else display_name(value)


def original_name(name: str, raw: bytes | None) -> str:
    """The name as the data source gave it, from its stored ``name`` and ``raw`` columns."""
    return name if raw is None else name_from_bytes(raw)
