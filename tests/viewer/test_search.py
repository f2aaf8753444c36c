"""The model-wide search by label: units (dissection labels, the model's own names) and learned
concepts, ranked by IoU, paged, case-insensitive, hostile text matched literally and escaped,
empty / over-long queries a message (200), an atlas without dissection a hint, and the static
export's label index."""

from __future__ import annotations

import shutil
import sqlite3

import numpy as np
import pytest

fastapi = pytest.importorskip("fastapi", reason="the viewer needs the web extra")
from fastapi.testclient import TestClient  # noqa: E402

from convscope.atlas import Atlas  # noqa: E402
from convscope.atlas.queries import AtlasReader  # noqa: E402
from convscope.dissect.concepts import Concept  # noqa: E402
from convscope.dissect.result import Dissection, LayerDissection  # noqa: E402
from convscope.viewer import pages, search  # noqa: E402
from convscope.viewer.app import create_app  # noqa: E402

LAYER = "blocks.4"
# unit -> (label, IoU): hostile names included; the other units get "plain <n>"
NAMED = {
    0: ("Red", 0.30),
    1: ("dark red", 0.50),
    2: ("reddish", 0.10),
    3: ("50%_off", 0.20),
    4: ("<b>bold</b>", 0.20),
    5: ("o'neil", 0.20),
    6: ("Ärger", 0.20),
    7: ("50xyoff", 0.20),
}


def _dissection(units: int) -> Dissection:
    names = [NAMED.get(u, (f"plain {u}", 0.01 * u / units))[0] for u in range(units)]
    ious = [NAMED.get(u, ("", 0.01 * u / units))[1] for u in range(units)]
    iou = np.zeros((units, units), np.float32)
    iou[np.arange(units), np.arange(units)] = ious
    layer = LayerDissection(
        LAYER, np.zeros(units, np.float32), list(range(units)), iou,
        np.zeros((units, 1), np.int64), np.zeros((units, 1), np.float32), np.full(units, 0.01),
    )  # fmt: skip
    concepts = {u: Concept(u, n, "made") for u, n in enumerate(names)}
    return Dissection({LAYER: layer}, concepts, ["made"], 0.04, 0.995, 0.5, 8)


@pytest.fixture(scope="module")
def labelled(viewer_atlas, tmp_path_factory):
    path = tmp_path_factory.mktemp("search") / "atlas"
    shutil.copytree(viewer_atlas, path)
    atlas = Atlas.open(path)
    units = AtlasReader(path).layer(LAYER)["channels"]
    atlas.write_dissection(_dissection(units), "made")
    return path


@pytest.fixture(scope="module")
def client(labelled):
    return TestClient(create_app(labelled), base_url="http://127.0.0.1")


def _units(html: str) -> list[str]:
    import re

    return re.findall(r"<div class='cell unit-hit'><a href='/unit/([^']+)'>", html)


def test_ranked_by_iou_and_case_insensitive(client):
    r = client.get("/search", params={"q": "RED"})
    assert r.status_code == 200
    found = [u for u in _units(r.text) if u.startswith(LAYER)]
    assert found == [f"{LAYER}/1", f"{LAYER}/0", f"{LAYER}/2"]  # IoU 0.5, 0.3, 0.1
    assert "id='units-found'" in r.text and "class='lab hit" in r.text
    # non-ASCII case folding
    assert _units(client.get("/search", params={"q": "ärGER"}).text) == [f"{LAYER}/6"]


def test_paging(labelled, client, monkeypatch):
    rows, total = AtlasReader(labelled).search_units("plain", page=0, per_page=5)
    assert total >= 10 and len(rows) == 5
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    nxt, _ = AtlasReader(labelled).search_units("plain", page=1, per_page=5)
    assert not {(r["layer"], r["unit"]) for r in rows} & {(r["layer"], r["unit"]) for r in nxt}
    monkeypatch.setattr(search, "PER_PAGE", 4)
    html = client.get("/search", params={"q": "plain", "page": 1}).text
    assert len(_units(html)) == 4 and "5–8 of" in html and "page=2" in html
    past = client.get("/search", params={"q": "plain", "page": 1000})
    assert past.status_code == 200 and "none on this page" in past.text
    assert client.get("/search", params={"q": "plain", "page": 2**40}).status_code == 400


def test_hostile_text_is_literal_and_escaped(client):
    html = client.get("/search", params={"q": "<b>bold"}).text
    assert "<b>bold" not in html and "&lt;b&gt;bold" in html and _units(html) == [f"{LAYER}/4"]
    # % and _ are not wildcards: 50%_off matches, 50xyoff does not
    assert _units(client.get("/search", params={"q": "%_"}).text) == [f"{LAYER}/3"]
    assert _units(client.get("/search", params={"q": "_"}).text) == [f"{LAYER}/3"]
    assert _units(client.get("/search", params={"q": "'"}).text) == [f"{LAYER}/5"]
    r = client.get("/search", params={"q": "x' OR 1=1 --"})
    assert r.status_code == 200 and _units(r.text) == [] and "no unit or concept" in r.text


def test_empty_and_long_queries(client):
    for params in ({}, {"q": ""}, {"q": "   "}):
        r = client.get("/search", params=params)
        assert r.status_code == 200 and "type part of a label" in r.text
    r = client.get("/search", params={"q": "a" * 5000})
    assert r.status_code == 200 and "5000 characters" in r.text and _units(r.text) == []


def test_header_form_on_every_page(client):
    html = client.get("/").text
    assert "<form class='inline' method='get' action='/search'" in html and "<script" not in html


def test_unit_names_are_searched(labelled, tmp_path):
    path = tmp_path / "atlas"
    shutil.copytree(labelled, path)
    con = sqlite3.connect(path / "atlas.db")
    con.execute(
        "INSERT OR REPLACE INTO meta VALUES ('unit_names', ?)", ('{"blocks.2": ["Tabby cat", null]}',)
    )
    con.commit()
    con.close()
    c = TestClient(create_app(path), base_url="http://127.0.0.1")
    html = c.get("/search", params={"q": "TABBY"}).text
    assert "id='names-found'" in html and _units(html) == ["blocks.2/0"]
    assert any(r["kind"] == "name" and r["label"] == "Tabby cat" for r in AtlasReader(path).all_labels())


def test_atlas_without_dissection_hints(tmp_path):
    a = Atlas.create(tmp_path / "atlas", {"name": "tiny"}, {"description": "test images"})
    r = TestClient(create_app(a.path), base_url="http://127.0.0.1").get("/search", params={"q": "red"})
    assert r.status_code == 200 and "no dissection" in r.text


def test_labels_page_of_the_export(labelled):
    rows = AtlasReader(labelled).all_labels()
    keys = [r["label"].casefold() for r in rows]
    assert keys == sorted(keys)
    meta = {"model": {"name": "m"}}
    html = search.labels_page(meta, rows, pages.StaticLinks(), lambda layer, u: u < 2)
    assert f"href='unit_{pages.safe_name(LAYER)}_1.html'" in html
    assert f"unit_{pages.safe_name(LAYER)}_4.html" not in html  # not exported: named, unlinked
    assert "&lt;b&gt;bold&lt;/b&gt;" in html and "<b>bold" not in html
    assert "href='labels.html'" in html  # the header's link to it
