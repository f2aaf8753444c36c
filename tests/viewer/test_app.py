from __future__ import annotations

import io
import sqlite3

import pytest
from PIL import Image

fastapi = pytest.importorskip("fastapi", reason="the viewer needs the web extra")
from fastapi.testclient import TestClient  # noqa: E402

from convscope.viewer.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def client(viewer_atlas):
    return TestClient(create_app(viewer_atlas, upload_limit=200_000))


def _png(size=(48, 48), color="red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def test_pages(client):
    home = client.get("/")
    assert home.status_code == 200 and "blocks.2" in home.text and "detectors" in home.text
    layer = client.get("/layer/blocks.2")
    assert layer.status_code == 200 and layer.text.count("class='cell'") == 40
    assert client.get("/layer/blocks.2?sort=iou&per_page=10").text.count("class='cell'") == 10
    assert client.get("/layer/blocks.2?sort=bogus").status_code == 400
    unit = client.get("/unit/blocks.2/0")
    assert unit.status_code == 200 and "top images by max" in unit.text
    assert "dissection" in unit.text and "empirical receptive field" in unit.text
    assert "neighbours in weight space" in unit.text and "/unit/blocks.2/" in unit.text
    assert client.get("/unit/blocks.2/999").status_code == 404
    assert client.get("/layer/nope").status_code == 404
    image = client.get("/image/0")
    assert (
        image.status_code == 200 and "predictions" in image.text and "units that respond most" in image.text
    )


def test_random_directions_and_feature_visualization(client):
    layer = client.get("/layer/blocks.2")
    assert "?direction=1" in layer.text
    d = client.get("/unit/blocks.2/1?direction=1")
    assert d.status_code == 200 and "direction 1" in d.text
    assert client.get("/img/topk/blocks.2/1/max?direction=1").status_code == 200
    assert client.get("/unit/blocks.2/9?direction=1").status_code == 404
    fv = client.get("/img/fv/blocks.2/0")
    assert fv.status_code == 200 and Image.open(io.BytesIO(fv.content)).width >= 128


def test_pictures(client):
    for url in (
        "/img/source/0",
        "/img/patch/blocks.2/3",
        "/img/topk/blocks.2/3/max",
        "/img/rf/blocks.2/0",
        "/img/attr/image/0",
    ):
        r = client.get(url)
        assert r.status_code == 200 and r.headers["content-type"].startswith("image/"), url
        Image.open(io.BytesIO(r.content)).verify()
    assert client.get("/img/rf/blocks.2/5").status_code == 404


def test_api(client):
    layers = client.get("/api/layers").json()
    assert [r["name"] for r in layers["layers"]] == ["blocks.2", "blocks.4"] and layers["images"] > 10
    unit = client.get("/api/unit/blocks.2/1").json()
    assert len(unit["topk"]["max"]) == 4 and unit["concepts"]
    page = client.get("/api/layer/blocks.4?per_page=7&page=1").json()
    assert page["total"] == 112 and [u["unit"] for u in page["units"]] == list(range(7, 14))


@pytest.mark.parametrize(
    "path",
    [
        "../../../etc/passwd",
        "%2e%2e/%2e%2e/etc/passwd",
        "..%2f..%2fetc%2fpasswd",
        "render/../../outside.txt",
        "atlas.db",
        "/etc/passwd",
    ],
)
def test_path_traversal_is_rejected(client, viewer_atlas, path):
    (viewer_atlas.parent / "outside.txt").write_text("secret")
    r = client.get(f"/files/{path}")
    assert r.status_code == 404 and "secret" not in r.text and "root:" not in r.text


def test_files_inside_the_atlas_are_served(client, viewer_atlas):
    png = next((viewer_atlas / "render").rglob("*.png"))
    r = client.get(f"/files/{png.relative_to(viewer_atlas).as_posix()}")
    assert r.status_code == 200 and r.content == png.read_bytes()


def test_uploads(client, viewer_atlas):
    app_state = client.app.state.viewer
    r = client.post("/upload", files={"file": ("cat.png", _png(), "image/png")}, follow_redirects=False)
    assert r.status_code == 303
    page = client.get(r.headers["location"])
    assert page.status_code == 200 and "predictions" in page.text
    stored = list(app_state.uploads.iterdir())
    assert len(stored) == 1 and stored[0].suffix == ".png"
    assert client.post("/upload", files={"file": ("a.txt", b"hello", "text/plain")}).status_code == 415
    big = _png((1200, 1200))
    noise = Image.effect_noise((800, 800), 100).convert("RGB")
    buf = io.BytesIO()
    noise.save(buf, "PNG")
    assert len(buf.getvalue()) > 200_000 or len(big) > 200_000
    assert client.post("/upload", files={"file": ("n.png", buf.getvalue(), "image/png")}).status_code == 413
    assert len(list(app_state.uploads.iterdir())) == 1  # nothing written for rejected uploads
    assert client.get("/upload/../../etc/passwd").status_code == 404
    assert client.get("/img/upload/" + "0" * 32).status_code == 404


def test_database_is_opened_read_only(client):
    con = client.app.state.viewer.reader.con()
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        con.execute("DELETE FROM units")


def test_static_export(viewer_atlas, tmp_path):
    from convscope.viewer.export import export_html

    index = export_html(viewer_atlas, tmp_path / "site", units_per_layer=2)
    html = index.read_text()
    assert "layer_blocks_2_0.html" in html
    unit = (tmp_path / "site" / "unit_blocks_2_1.html").read_text()
    assert "img/topk_blocks_2_1_max.png" in unit and (tmp_path / "site/img/topk_blocks_2_1_max.png").exists()
    assert "/files/" not in unit and "http" not in unit.split("<main>")[1]
    images = list((tmp_path / "site").glob("image_*.html"))
    assert images
