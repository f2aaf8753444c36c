"""Reading an atlas never changes it: Atlas.open(path, readonly=True) runs no DDL and no PRAGMA
that writes, works on a read-only folder, refuses writes with a clear error, and reads an atlas of
an older schema as it is; the next writer upgrades it."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3

import numpy as np
import pytest
from PIL import Image

from convscope.atlas import Atlas, AtlasReadOnlyError, scan_to_atlas, schema
from convscope.inputs.sources import open_images
from convscope.testing import tiny_subject

WRITES = ("CREATE", "ALTER", "INSERT", "UPDATE", "DELETE", "DROP", "BEGIN", "REPLACE", "PRAGMA")


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(8):
        (root / f"c{i % 2}").mkdir(exist_ok=True)
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(root / f"c{i % 2}/{i}.png")
    subject = tiny_subject()
    source = open_images(root, transform=subject.transform)
    out = tmp_path_factory.mktemp("atlas") / "a"
    atlas, _ = scan_to_atlas(subject, source, out, ["block"], k=2, batch_size=4, threshold_sample=4)
    return atlas


def _snapshot(folder) -> dict:
    return {
        p.relative_to(folder): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _read_everything(a: Atlas) -> dict:
    return {
        "version": a.schema_version,
        "model": a.model_spec,
        "run": a.run()["processed"],
        "layers": [r["name"] for r in a.layers()],
        "topk": a.topk("block", 1).images.tolist(),
        "stats": a.stats("block").max.tolist(),
        "names": a.image_names(),
        "classes": a.classes(),
        "skipped": a.skipped(),
        "unit_names": a.unit_names(),
        "rfs": a.empirical_rfs(),
        "sets": a.concept_sets(),
        "settings": a.dissection_settings("synthetic"),
        "labels": a.unit_labels("block"),
    }


def _read_only_copy(atlas: Atlas, where, monkeypatch) -> Atlas:
    copy = where / "ro"
    shutil.copytree(atlas.path, copy)
    for p in copy.rglob("*"):
        os.chmod(p, 0o444)
    os.chmod(copy, 0o555)
    if os.geteuid() == 0:  # root writes anyway: let the atlas see the folder as others would
        real = os.access
        monkeypatch.setattr(
            schema.os,
            "access",
            lambda p, mode: False if mode == os.W_OK and str(copy) in os.fsdecode(p) else real(p, mode),
        )
    return copy


def test_reads_run_no_ddl_and_no_pragma(atlas, monkeypatch):
    statements = []
    real = schema.connect_readonly

    def traced(*args, **kwargs):
        con = real(*args, **kwargs)
        con.set_trace_callback(statements.append)
        return con

    monkeypatch.setattr(schema, "connect_readonly", traced)
    read = _read_everything(Atlas.open(atlas.path, readonly=True))
    assert read["layers"] == ["block"] and read["names"]
    assert statements, "the trace saw nothing"
    writes = [s for s in statements if s.lstrip().upper().startswith(WRITES)]
    assert [s for s in writes if not s.upper().startswith("PRAGMA TABLE_INFO")] == []


def test_a_read_only_atlas_opens_reads_and_refuses_writes(atlas, tmp_path, monkeypatch):
    want = _read_everything(Atlas.open(atlas.path, readonly=True))
    copy = _read_only_copy(atlas, tmp_path, monkeypatch)
    before = _snapshot(copy)
    try:
        ro = Atlas.open(copy, readonly=True)
        assert _read_everything(ro) == want
        rf = type("RF", (), {})  # never reaches the database
        with pytest.raises(AtlasReadOnlyError, match="read-only; open it with Atlas.open"):
            ro.write_empirical_rf(rf, 11, 6)
        with pytest.raises(AtlasReadOnlyError, match="read-only"):
            ro.lock()
        assert _snapshot(copy) == before  # not a byte, not a journal, not a lock file
    finally:
        os.chmod(copy, 0o755)


def _make_old(atlas: Atlas, where) -> Atlas:
    """A copy of ``atlas`` as convscope wrote it at schema 1 (no empirical RFs, no
    dissections, no raw names, no topk index)."""
    old = where / "old"
    shutil.copytree(atlas.path, old)
    with sqlite3.connect(old / "atlas.db") as con:
        for table in ("empirical_rf", "concepts", "dissections", "unit_labels"):
            con.execute(f"DROP TABLE {table}")
        con.execute("DROP INDEX topk_image")
        con.execute("ALTER TABLE images DROP COLUMN raw")
        con.execute("ALTER TABLE classes DROP COLUMN raw")
        con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.close()
    return Atlas(old)


def test_an_older_schema_reads_read_only_as_it_is(atlas, tmp_path):
    want = _read_everything(Atlas.open(atlas.path, readonly=True))
    old = _make_old(atlas, tmp_path)
    bytes_before = old.db_path.read_bytes()
    got = _read_everything(Atlas.open(old.path, readonly=True))
    assert got == {**want, "version": 1}
    assert old.db_path.read_bytes() == bytes_before
    with sqlite3.connect(old.db_path) as con:
        assert not schema.has_table(con, "dissections")
    con.close()


def test_opening_an_older_schema_for_writing_upgrades_it(atlas, tmp_path):
    old = _make_old(atlas, tmp_path)
    a = Atlas.open(old.path)
    assert a.schema_version == schema.SCHEMA_VERSION
    with sqlite3.connect(old.db_path) as con:
        assert all(schema.has_table(con, t) for t in ("empirical_rf", "dissections", "unit_labels"))
        assert "raw" in schema.columns(con, "images")
        assert con.execute("SELECT 1 FROM sqlite_master WHERE name = 'topk_image'").fetchone()
    con.close()


def test_an_older_schema_that_cannot_be_written_says_how_to_read_it(atlas, tmp_path, monkeypatch):
    old = _make_old(atlas, tmp_path)

    def refuse(db):
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(schema, "connect_write", refuse)
    with pytest.raises(AtlasReadOnlyError, match=r"schema 1 .*readonly=True") as e:
        Atlas.open(old.path)
    assert "\n" not in str(e.value)
    assert Atlas.open(old.path, readonly=True).schema_version == 1
