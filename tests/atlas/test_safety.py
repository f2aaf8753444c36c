"""File safety of the atlas: modes that follow the umask, names that are not UTF-8, older
schemas, one writer at a time, and reports drawn from every stored dissection."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image

from convscope.atlas import Atlas, AtlasLockedError, scan_to_atlas, stored_dissection
from convscope.inputs.fileio import atomic_path, save_image, write_text
from convscope.inputs.images import display_name
from convscope.inputs.sources import open_images
from convscope.testing import tiny_subject

CAFE = b"caf\xe9.jpg"  # Latin-1, not UTF-8
CLASS = b"d\xe9j\xe0"


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_written_files_follow_the_umask(umask, mask, tmp_path):
    umask(mask)
    want = 0o666 & ~mask
    assert _mode(write_text(tmp_path / "a.txt", "x")) == want
    assert _mode(save_image(Image.new("RGB", (4, 4)), tmp_path / "sub" / "b.png")) == want
    with atomic_path(tmp_path / "c.bin") as tmp:
        tmp.write_bytes(b"1")
    assert _mode(tmp_path / "c.bin") == want
    # a file replaced gets the umask's mode plus its own further bits: a 0600 file left by the
    # old writer opens up, a group-writable or executable one stays so
    os.chmod(tmp_path / "a.txt", 0o600)
    write_text(tmp_path / "a.txt", "y")
    assert _mode(tmp_path / "a.txt") == want and (tmp_path / "a.txt").read_text() == "y"
    os.chmod(tmp_path / "a.txt", 0o674)
    write_text(tmp_path / "a.txt", "z")
    assert _mode(tmp_path / "a.txt") == 0o674 | want
    assert not [p for p in tmp_path.rglob(".*.tmp")]


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_atlas_files_follow_the_umask(umask, mask, tmp_path, images):
    umask(mask)
    subject = tiny_subject()
    atlas, _ = scan_to_atlas(
        subject,
        open_images(images, transform=subject.transform),
        tmp_path / "a",
        ["block"],
        k=2,
        batch_size=4,
        threshold_sample=4,
        criteria=["max"],
    )
    assert _mode(atlas.checkpoint_path) == 0o666 & ~mask
    assert _mode(atlas.db_path) == 0o666 & ~mask


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two classes, one of them a non-UTF-8 folder name, with a non-UTF-8 file and a broken one
    named non-UTF-8 too."""
    root = tmp_path_factory.mktemp("names")
    rng = np.random.default_rng(0)
    base = os.fsencode(root)
    for cls in (b"plain", CLASS):
        os.mkdir(base + b"/" + cls)
        for i in range(3):
            img = Image.fromarray((rng.random((36, 36, 3)) * 255).astype(np.uint8))
            img.save(base + b"/" + cls + b"/%d.png" % i, format="PNG")
    Image.fromarray((rng.random((36, 36, 3)) * 255).astype(np.uint8)).save(
        base + b"/plain/" + CAFE, format="JPEG"
    )
    with open(base + b"/plain/br\xf6ken.png", "wb") as f:
        f.write(b"not a png")
    return root


def test_non_utf8_names_are_stored_losslessly(images, tmp_path):
    subject = tiny_subject()
    source = open_images(images, transform=subject.transform)
    cafe = "plain/" + os.fsdecode(CAFE)
    assert cafe in [r.name for r in source.records]
    out = tmp_path / "atlas"
    atlas, result = scan_to_atlas(
        subject, source, out, ["block"], k=8, batch_size=4, threshold_sample=4, checkpoint_every=0
    )
    again = Atlas.open(out)
    names = again.image_names()
    assert names == result.image_names and cafe in names
    assert os.fsencode(names[names.index(cafe)]) == b"plain/" + CAFE  # the original bytes
    assert os.fsencode(again.classes()[0]) == CLASS and again.classes()[1] == "plain"
    assert again.skipped() == [("plain/" + os.fsdecode(b"br\xf6ken.png"), "not an image")]
    tops = [n for u in range(8) for n in again.topk("block", u).names]
    assert cafe in tops
    # what SQL, the viewer and the export read is printable, and names the bytes
    with sqlite3.connect(atlas.db_path) as con:
        shown = [r[0] for r in con.execute("SELECT name FROM images ORDER BY idx")]
        (cls,) = con.execute("SELECT name FROM classes WHERE idx = 0").fetchone()
    assert display_name(cafe) in shown and cls == display_name(os.fsdecode(CLASS))
    assert all(n.encode("utf-8") for n in shown)
    # and the same scan resumes from its checkpoint to the same atlas
    rows = lambda: sqlite3.connect(atlas.db_path).execute("SELECT * FROM topk ORDER BY 1,2,3,4,5").fetchall()  # noqa: E731
    before = rows()
    scan_to_atlas(subject, source, out, ["block"], k=8, batch_size=4, threshold_sample=4, resume=True)
    assert rows() == before and Atlas.open(out).image_names() == names


def test_schema_3_atlas_is_read_and_migrated(images, tmp_path):
    from convscope.dissect import BrodenDataset, dissect, make_synthetic_broden

    subject = tiny_subject()
    source = open_images(images, transform=subject.transform)
    out = tmp_path / "old"
    scan_to_atlas(subject, source, out, ["block"], k=2, batch_size=4, threshold_sample=4)
    with sqlite3.connect(out / "atlas.db") as con:  # as convscope 0.x (schema 3) wrote it
        con.execute("UPDATE images SET raw = NULL, name = 'plain/0.png' WHERE raw IS NOT NULL")
        con.execute("ALTER TABLE images DROP COLUMN raw")
        con.execute("ALTER TABLE classes DROP COLUMN raw")
        con.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    old = Atlas.open(out)
    assert len(old.topk("block", 0).names) == 2 and "plain" in old.classes()
    assert len(old.image_names()) == len(source)
    data = BrodenDataset(make_synthetic_broden(tmp_path / "b", n=8, size=32, seg=16))
    old.write_dissection(dissect(subject, data, ["block"], batch_size=4), "synthetic")
    with sqlite3.connect(out / "atlas.db") as con:
        assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("9",)
        assert "raw" in {r[1] for r in con.execute("PRAGMA table_info(images)")}
    scan_to_atlas(subject, source, out, ["block"], k=2, batch_size=4, threshold_sample=4, resume=True)
    assert "plain/" + os.fsdecode(CAFE) in Atlas.open(out).image_names()


def test_report_covers_every_stored_layer(images, tmp_path):
    from convscope.dissect import BrodenDataset, dissect, make_synthetic_broden

    subject = tiny_subject()
    data = BrodenDataset(make_synthetic_broden(tmp_path / "b", n=8, size=32, seg=16))
    atlas = Atlas.for_model(tmp_path / "a", {"name": "tiny"}, {"description": "concepts"})
    atlas.write_dissection(dissect(subject, data, ["conv2"], batch_size=4), "synthetic")
    second = dissect(subject, data, ["block"], batch_size=4)
    atlas.write_dissection(second, "synthetic")
    report, other = stored_dissection(atlas, "synthetic", second, subject.layers.names())
    assert list(report.layers) == ["block", "conv2"] and other == []  # model order
    looser = dissect(subject, data, ["conv1"], batch_size=4, iou_threshold=0.5)
    atlas.write_dissection(looser, "synthetic")
    report, other = stored_dissection(atlas, "synthetic", looser, subject.layers.names())
    assert list(report.layers) == ["conv1"] and other == ["conv2", "block"]


HOLDER = textwrap.dedent("""
    import sys, time
    from convscope.atlas import Atlas
    with Atlas(sys.argv[1]).lock():
        print("locked", flush=True)
        sys.stdin.read()
""")


def test_second_process_is_refused_while_one_writes(images, tmp_path):
    subject = tiny_subject()
    out = tmp_path / "a"
    scan_to_atlas(
        subject,
        open_images(images, transform=subject.transform),
        out,
        ["block"],
        k=2,
        batch_size=4,
        threshold_sample=4,
    )
    before = (out / "atlas.db").read_bytes()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        with pytest.raises(AtlasLockedError, match=rf"pid {holder.pid} \(`convscope .*`, started 20"):
            scan_to_atlas(
                subject, open_images(images, transform=subject.transform), out, ["conv2"], k=3, overwrite=True
            )
        with pytest.raises(AtlasLockedError, match="choose another --out"):
            Atlas.open(out).write_dissection(None, "x")
        assert time.monotonic() - t0 < 2
        assert len(Atlas.open(out).topk("block", 0)) == 2  # readers need no lock
    finally:
        holder.stdin.close()
        holder.wait(30)
    assert (out / "atlas.db").read_bytes() == before
    assert not (out / "atlas.lock").exists()
    with Atlas(out).lock(), Atlas(out).lock():  # free again, and nestable in one process
        pass


RACER = textwrap.dedent("""
    import sys
    from convscope.atlas import scan_to_atlas
    from convscope.inputs.sources import open_images
    from convscope.errors import UserInputError
    from convscope.testing import tiny_subject
    s = tiny_subject()
    sys.stdin.read()  # start together
    try:
        scan_to_atlas(s, open_images(sys.argv[1], transform=s.transform), sys.argv[2], [sys.argv[3]],
                      k=2, batch_size=2, threshold_sample=2)
    except UserInputError as e:  # the other holds the lock, or has already written its scan
        print(e)
        sys.exit(2)
""")


def test_two_scans_started_together(images, tmp_path):
    out = tmp_path / "race"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(images), str(out), layer],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for layer in ("block", "conv2")
    ]
    time.sleep(1.0)
    for p in procs:
        p.stdin.close()
    codes = []
    for p in procs:
        p.wait(120)
        codes.append(p.returncode)
        err = p.stderr.read()
        assert "Traceback" not in err, err
        if p.returncode == 2:
            said = p.stdout.read()
            assert "is being written by pid" in said or "pass --resume" in said, said
    assert sorted(codes) == [0, 2], codes  # one scan stored, the other refused in one line
    atlas = Atlas.open(out)
    assert len(atlas.layers()) == 1 and atlas.run()["n_images"] == len(open_images(images))
    assert not list(out.glob(".*.tmp")) and not (out / "atlas.lock").exists()
