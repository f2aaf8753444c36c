"""The activation-atlas page of a layer: stored tiles on a zoomable canvas without scripts, a
panel per cell with its patches, the layer page's link, 404s, nothing optimised on request,
and the static export."""

from __future__ import annotations

import shutil

import pytest

fastapi = pytest.importorskip("fastapi", reason="the viewer needs the web extra")
from fastapi.testclient import TestClient  # noqa: E402

from convscope.atlas import Atlas, reopen  # noqa: E402
from convscope.atlas.activation_atlas_build import activation_atlas_to_atlas  # noqa: E402
from convscope.viewer.app import create_app  # noqa: E402

LAYER = "blocks.2"


@pytest.fixture(scope="module")
def aa_atlas(viewer_atlas, tmp_path_factory):
    out = tmp_path_factory.mktemp("aa-viewer") / "atlas"
    shutil.copytree(viewer_atlas, out)
    subject, source = reopen(Atlas.open(out))
    built = activation_atlas_to_atlas(
        subject, source, out, LAYER, samples_per_image=4, layout="pca", grid=3, min_count=1, steps=2,
        size=32, top=3, workers=0,
    )  # fmt: skip
    return out, built.results[LAYER]


@pytest.fixture(scope="module")
def client(aa_atlas):
    return TestClient(create_app(aa_atlas[0]), base_url="http://127.0.0.1")


def test_page_shows_tiles_and_panels_without_scripts(client, aa_atlas, monkeypatch):
    import convscope.synthesis.activation_atlas as compute
    import convscope.synthesis.visualize as visualize

    def never(*a, **k):
        raise AssertionError("optimised on request")

    monkeypatch.setattr(visualize, "visualize_directions", never)
    monkeypatch.setattr(compute, "activation_atlas", never)
    _, result = aa_atlas
    r = client.get(f"/activation-atlas/{LAYER}")
    assert r.status_code == 200
    html = r.text
    assert "<script" not in html and "aa-z4" in html  # zoom is CSS only
    for i in range(len(result.cells)):
        assert f"/img/activation-atlas/{LAYER}/tile/{i}" in html and f"id='cell{i}'" in html
        assert f"/img/activation-atlas/{LAYER}/patch/{i}/0" in html
    assert f"{int(result.counts[0])}</td>" in html and result.top_label[0] in html
    tile = client.get(f"/img/activation-atlas/{LAYER}/tile/0")
    stored = Atlas.open(aa_atlas[0]).activation_atlas_file(LAYER, "image").parent / "tiles" / "cell0000.png"
    assert tile.status_code == 200 and tile.content == stored.read_bytes()
    patch = client.get(f"/img/activation-atlas/{LAYER}/patch/0/0")
    assert patch.status_code == 200 and patch.headers["content-type"] == "image/jpeg"


def test_layer_page_links_only_where_stored(client):
    assert f"/activation-atlas/{LAYER}" in client.get(f"/layer/{LAYER}").text
    assert "/activation-atlas/" not in client.get("/layer/blocks.4").text


@pytest.mark.parametrize(
    "url",
    [
        "/activation-atlas/blocks.4",
        "/activation-atlas/nope",
        f"/img/activation-atlas/{LAYER}/tile/999",
        f"/img/activation-atlas/{LAYER}/patch/0/99",
        f"/img/activation-atlas/{LAYER}/patch/999/0",
        f"/img/activation-atlas/{LAYER}/tile/-1",
    ],
)
def test_missing_is_404(client, url):
    assert client.get(url).status_code in (400, 404)


def test_static_export(aa_atlas, tmp_path):
    from convscope.viewer.export import export_html

    out, result = aa_atlas
    site = tmp_path / "site"
    export_html(out, site, units_per_layer=1)
    page = (site / "activation_atlas_blocks_2.html").read_text()
    assert "<script" not in page
    for i in range(len(result.cells)):
        assert (site / f"img/activation_atlas_blocks_2_{i}.png").is_file()
        assert (site / f"img/activation_atlas_blocks_2_{i}_0.jpg").is_file()
    assert "activation_atlas_blocks_2.html" in (site / "layer_blocks_2_0.html").read_text()
