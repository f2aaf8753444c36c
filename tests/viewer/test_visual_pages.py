"""Stored feature visualisations in the viewer: the unit page shows the positive, negative and
diversity images with their objective values and computes nothing, the layer page shows a grid
of them with a feature visualisation / best patch / label toggle, the static export holds them,
and hostile requests are a 404."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

fastapi = pytest.importorskip("fastapi", reason="the viewer needs the web extra")
from fastapi.testclient import TestClient  # noqa: E402

import convscope.synthesis as synthesis  # noqa: E402
from convscope.atlas import Atlas  # noqa: E402
from convscope.synthesis.layer_visuals import LayerVisuals, slots_for  # noqa: E402
from convscope.viewer.app import create_app  # noqa: E402

LAYER = "blocks.4"
UNITS = [0, 1, 2]


@pytest.fixture(scope="module")
def stored(viewer_atlas, tmp_path_factory):
    """A copy of the viewer's atlas with stored visuals of units 0-2 of blocks.4 (made-up pixels:
    the viewer only reads them)."""
    path = tmp_path_factory.mktemp("visuals") / "atlas"
    shutil.copytree(viewer_atlas, path)
    slots = slots_for(("positive", "negative"), 2)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (len(UNITS), len(slots), 24, 24, 3), dtype=np.uint8)
    objectives = np.array([[1.5 + u, -0.25 - u, 1.0, 0.75] for u in UNITS], np.float32)
    settings = {"param": "fft", "steps": 64, "size": 24, "seed": 0}
    Atlas.open(path).write_visuals(LayerVisuals(LAYER, np.array(UNITS), slots, images, objectives), settings)
    return path


@pytest.fixture(scope="module")
def client(stored):
    return TestClient(create_app(stored), base_url="http://127.0.0.1")


@pytest.fixture()
def no_optimising(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the viewer optimised on request")

    monkeypatch.setattr(synthesis, "visualize_units", refuse)


def test_unit_page_shows_the_stored_visuals_and_computes_nothing(client, stored, no_optimising):
    html = client.get(f"/unit/{LAYER}/1").text
    assert "id='visuals'" in html and "rendered on request" not in html
    for kind, index in [("positive", 0), ("negative", 0), ("diversity", 0), ("diversity", 1)]:
        assert f"/img/visual/{LAYER}/1/{kind}/{index}" in html
    assert "mean activation 2.5" in html and "mean activation -1.25" in html
    assert "minimised" in html and "diversity 2" in html
    r = client.get(f"/img/visual/{LAYER}/1/negative/0")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == Atlas(stored).visual_tile(LAYER, 1, "negative", 0).read_bytes()
    # the on-request route serves the stored image; a unit without one is a 404, not an optimisation
    fv = client.get(f"/img/fv/{LAYER}/1")
    positive = Atlas(stored).visual_tile(LAYER, 1, "positive").read_bytes()
    assert fv.status_code == 200 and fv.content == positive
    assert client.get(f"/img/fv/{LAYER}/5").status_code == 404
    # a unit without stored visuals keeps its page, without them
    assert "id='visuals'" not in client.get(f"/unit/{LAYER}/5").text


def test_layer_page_grid_with_the_toggle(client, no_optimising):
    html = client.get(f"/layer/{LAYER}").text
    for key in ("fv", "patch", "label"):
        assert f"id='show-{key}'" in html
    assert "id='show-fv' checked" in html and "<script" not in html
    assert html.count(f"src='/img/visual/{LAYER}/") == len(UNITS)
    assert "title='objective 1.5'" in html
    assert "class='pt'" in html  # the best patches stay, hidden by the toggle's CSS
    # a layer without stored visuals: the plain grid
    assert "id='show-fv'" not in client.get("/layer/blocks.2").text


@pytest.mark.parametrize(
    "url",
    [
        f"/img/visual/{LAYER}/1/max/0",
        f"/img/visual/{LAYER}/1/..%2F..%2Fatlas.db/0",
        f"/img/visual/{LAYER}/1/positive/7",
        f"/img/visual/{LAYER}/9/positive/0",
        f"/img/visual/{LAYER}/1/positive/99999999999999999999",
        "/img/visual/blocks.2/1/positive/0",
        "/img/visual/nope/1/positive/0",
        "/img/visual/..%2F..%2Fetc/1/positive/0",
    ],
)
def test_hostile_or_missing_visuals_are_a_404(client, url):
    assert client.get(url).status_code in (404, 422)
    assert client.get(url).status_code != 500


def test_symlinked_or_unfinished_tiles_are_not_served(stored, tmp_path):
    path = tmp_path / "atlas"
    shutil.copytree(stored, path)
    tile = Atlas(path).visual_tile(LAYER, 2, "positive", 0)
    tile.unlink()
    (tmp_path / "secret.png").write_bytes(b"secret")
    tile.symlink_to(tmp_path / "secret.png")
    orphan = Atlas(path).visual_tile(LAYER, 3, "positive", 0)  # a tile without its row
    orphan.write_bytes(tile.parent.joinpath("unit0001_positive0.png").read_bytes())
    c = TestClient(create_app(path), base_url="http://127.0.0.1")
    assert c.get(f"/img/visual/{LAYER}/2/positive/0").status_code == 404
    assert c.get(f"/img/visual/{LAYER}/3/positive/0").status_code == 404
    assert c.get(f"/img/visual/{LAYER}/1/positive/0").status_code == 200


def test_static_export_holds_the_visuals(stored, tmp_path):
    from convscope.viewer.export import export_html

    export_html(stored, tmp_path / "site", units_per_layer=2)
    site = tmp_path / "site"
    unit = (site / "unit_blocks_4_1.html").read_text()
    assert "img/visual_blocks_4_1_diversity1.png" in unit and "mean activation 2.5" in unit
    tile = site / "img" / "visual_blocks_4_1_diversity1.png"
    assert tile.read_bytes() == Atlas(stored).visual_tile(LAYER, 1, "diversity", 1).read_bytes()
    layer = (site / "layer_blocks_4_0.html").read_text()
    assert "id='show-fv'" in layer and layer.count("src='img/visual_blocks_4_") == 2  # units 0, 1 exported


@pytest.fixture(scope="module")
def maco(viewer_atlas, tmp_path_factory):
    """A copy of the viewer's atlas with MaCo visuals of units 0-2 of blocks.4: RGBA tiles whose
    alpha is a made-up transparency map (a bright centre fading out)."""
    path = tmp_path_factory.mktemp("maco") / "atlas"
    shutil.copytree(viewer_atlas, path)
    slots = slots_for(("positive",), 0)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (len(UNITS), 1, 24, 24, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:24, :24]
    alpha = np.broadcast_to(np.exp(-((yy - 12) ** 2 + (xx - 12) ** 2) / 40.0), (len(UNITS), 1, 24, 24))
    objectives = np.array([[1.0 + u] for u in UNITS], np.float32)
    settings = {"param": "maco", "steps": 64, "size": 24, "seed": 0, "alpha": True}
    visuals = LayerVisuals(LAYER, np.array(UNITS), slots, images, objectives, alpha=alpha.astype(np.float32))
    Atlas.open(path).write_visuals(visuals, settings)
    return path


def test_maco_tiles_shown_through_their_transparency_and_opaque(maco, stored, no_optimising):
    import io

    from PIL import Image

    c = TestClient(create_app(maco), base_url="http://127.0.0.1")
    html = c.get(f"/unit/{LAYER}/1").text
    assert f"class='alpha' src='/img/visual/{LAYER}/1/positive/0'" in html
    assert f"class='opaque' src='/img/visual/{LAYER}/1/positive/0?opaque=1'" in html
    assert "id='fv-alpha' checked" in html and "id='fv-opaque'" in html and "<script" not in html
    assert "repeating-conic-gradient" in html  # the checkerboard behind the transparent tiles
    tile = Image.open(io.BytesIO(c.get(f"/img/visual/{LAYER}/1/positive/0").content))
    flat = Image.open(io.BytesIO(c.get(f"/img/visual/{LAYER}/1/positive/0?opaque=1").content))
    assert tile.mode == "RGBA" and flat.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(flat), np.asarray(tile)[..., :3])
    assert np.ptp(np.asarray(tile)[..., 3]) > 200  # the transparency came through
    # RGB tiles (fft): one image per cell, no toggle
    plain = TestClient(create_app(stored), base_url="http://127.0.0.1").get(f"/unit/{LAYER}/1").text
    assert "id='fv-alpha'" not in plain and "class='alpha'" not in plain


def test_static_export_holds_the_opaque_maco_tiles(maco, tmp_path):
    from PIL import Image

    from convscope.viewer.export import export_html

    export_html(maco, tmp_path / "site", units_per_layer=2)
    site = tmp_path / "site"
    unit = (site / "unit_blocks_4_1.html").read_text()
    assert "src='img/visual_blocks_4_1_positive0.png'" in unit
    assert "src='img/visual_blocks_4_1_positive0_opaque.png'" in unit
    tile = Image.open(site / "img" / "visual_blocks_4_1_positive0.png")
    flat = Image.open(site / "img" / "visual_blocks_4_1_positive0_opaque.png")
    assert tile.mode == "RGBA" and flat.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(flat), np.asarray(tile)[..., :3])
