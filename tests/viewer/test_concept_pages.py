"""Learned concept sets in the viewer: the index, a concept set's page, a concept's page (top-K,
picture, importance, label, heat-map grid with the model), the image page's concepts apart from
its units, and clean 404/400 pages for hostile requests."""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

fastapi = pytest.importorskip("fastapi", reason="the viewer needs the web extra")
from fastapi.testclient import TestClient  # noqa: E402

from convscope.atlas import Atlas, reopen  # noqa: E402
from convscope.concepts import collect_activations, fit_dictionary, scan_concepts  # noqa: E402
from convscope.dissect.result import UnitLabel  # noqa: E402
from convscope.viewer.app import create_app  # noqa: E402

LAYER = "blocks.2"
N = 4


@dataclass
class Importance:  # the contract's attributes of a ConceptImportance
    matrix: torch.Tensor
    classes: list
    counts: torch.Tensor
    method: str = "gradient x concept activation"


class Labels:  # the surface of a Dissection the atlas reads
    def __init__(self, n):
        self.layers = {LAYER: None}
        self._labels = [
            UnitLabel(LAYER, u, u, f"stripes{u}", "texture", 0.2 + u / 10, u == 2) for u in range(n)
        ]

    def labels(self, layer):
        return self._labels


@pytest.fixture(scope="module")
def concept_atlas(viewer_atlas, tmp_path_factory):
    """A copy of the viewer's atlas with two dictionaries: ``nmf`` (scanned on the atlas's own
    images, with importance, labels and a picture of concept 1) and ``other`` (scanned on three
    images the atlas does not hold)."""
    out = tmp_path_factory.mktemp("concept-viewer") / "atlas"
    shutil.copytree(viewer_atlas, out)
    atlas = Atlas.open(out)
    subject, source = reopen(atlas)
    acts = collect_activations(subject, source, LAYER, per_image=8, max_samples=200, seed=0, workers=0)
    nmf = fit_dictionary(acts.x, "nmf", N, layer=LAYER, seed=0, clip=True)
    scan = scan_concepts(subject, source, nmf, k=4, batch_size=12, workers=0, threshold_sample=100)
    atlas.write_dictionary("nmf", nmf)
    atlas.write_dictionary_scan("nmf", scan)
    matrix = torch.tensor([[0.5, -0.2, 0.1, 0.0], [0.1, 0.9, -0.3, 0.2], [-0.4, 0.3, 0.0, 0.1]])
    atlas.write_dictionary_importance(
        "nmf", Importance(matrix, ["cat", "dog", "car"], torch.tensor([3, 2, 4]))
    )
    atlas.write_dictionary_labels("nmf", Labels(N), "synthetic")
    atlas.write_dictionary_picture("nmf", 1, Image.new("RGB", (64, 64), (10, 200, 30)))
    other = tmp_path_factory.mktemp("other-images")
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(other / f"x{i}.png")
    atlas.write_dictionary("other", nmf)
    atlas.write_dictionary_scan(
        "other", scan_concepts(subject, other, nmf, k=2, workers=0, threshold_sample=10)
    )
    return out, scan


@pytest.fixture(scope="module")
def client(concept_atlas):
    out, _ = concept_atlas
    return TestClient(create_app(out), base_url="http://127.0.0.1")


def test_index_and_home_list_the_dictionaries(client):
    home = client.get("/")
    assert home.status_code == 200 and "learned concepts" in home.text and "/concepts/nmf" in home.text
    index = client.get("/concepts")
    assert index.status_code == 200 and index.text.count("<tr>") == 3  # header + two sets
    assert ">nmf<" in index.text and ">other<" in index.text and "scanned, importance, labels" in index.text
    page = client.get("/concepts/nmf")
    assert page.status_code == 200 and page.text.count("class='cell'") == N
    assert "/img/concept/picture/nmf/1" in page.text and "stripes2" in page.text and "class dog" in page.text


def test_concept_page(client, concept_atlas):
    _, scan = concept_atlas
    r = client.get("/concepts/nmf/1")
    assert r.status_code == 200 and "nmf concept 1 (stripes1)" in r.text
    top = scan.topk(LAYER, 1, "max")
    for i in top.images:  # the top images link to the atlas's image pages
        assert f"/image/{i}'" in r.text
    assert "/img/concept/topk/nmf/1/max" in r.text  # the model loads here: the heat-map grid
    assert "id='picture'" in r.text and "id='importance'" in r.text
    # importance per class, sorted: dog 0.9, car 0.3, cat -0.2
    bars = r.text[r.text.index("id='importance'") :]
    assert bars.index("dog") < bars.index("car") < bars.index("cat") and "#c23a3a" in bars
    assert "concept 0" in r.text and "concept 2 →" in r.text
    assert "a detector" not in r.text and "a detector" in client.get("/concepts/nmf/2").text
    assert "id='picture'" not in client.get("/concepts/nmf/0").text  # no picture stored for it


def test_concept_scanned_elsewhere_shows_names_without_links_or_grid(client):
    r = client.get("/concepts/other/0")
    assert r.status_code == 200 and any(f"x{i}.png" in r.text for i in range(3))
    assert "/img/concept/topk/" not in r.text and "/image/" not in r.text
    assert client.get("/img/concept/topk/other/0/max").status_code == 404


def test_pictures(client):
    grid = client.get("/img/concept/topk/nmf/1/max")
    assert grid.status_code == 200 and grid.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(grid.content))
    assert img.width >= 4 * 96 and img.height > 2 * 96  # patches and heat maps of 4 hits
    pic = client.get("/img/concept/picture/nmf/1")
    assert pic.status_code == 200 and Image.open(io.BytesIO(pic.content)).getpixel((5, 5)) == (10, 200, 30)
    assert client.get("/img/concept/picture/nmf/0").status_code == 404


def test_image_page_lists_concepts_apart_from_units(client, concept_atlas):
    _, scan = concept_atlas
    idx = int(scan.topk(LAYER, 1, "max").images[0])
    r = client.get(f"/image/{idx}")
    assert r.status_code == 200 and "learned concepts that list this image" in r.text
    table = r.text[r.text.index("id='image-concepts'") :]
    assert "/concepts/nmf/1" in table and "units that respond most" in r.text
    assert "/concepts/other/" not in table  # scanned on other images: not this one
    before = r.text[: r.text.index("id='image-concepts'")]
    assert "/concepts/" not in before  # the unit table holds units only


def test_hostile_requests_get_clean_pages(client):
    for url, status in (
        ("/concepts/nope", 404),
        ("/concepts/nmx/0", 404),
        ("/concepts/nmf/4", 404),
        ("/concepts/nmf/-1", 404),
        ("/concepts/nmf/99999999999999999999999", 404),
        ("/concepts/nmf/abc", 422),
        ("/concepts/..%2F..%2Fetc", 404),
        ("/concepts/%2E%2E/0", 404),
        ("/img/concept/picture/..%2Fnmf/1", 404),
        ("/img/concept/topk/nmf/1/bogus", 404),
        ("/img/concept/topk/nmf/9/max", 404),
        ("/api/concepts/nope/0", 404),
    ):
        r = client.get(url)
        assert r.status_code == status, url
        assert "Traceback" not in r.text
        if not url.startswith("/api/"):
            assert "id='error'" in r.text, url
    assert "did you mean nmf" in client.get("/concepts/nmx").text


def test_api(client):
    assert [d["name"] for d in client.get("/api/concepts").json()["dictionaries"]] == ["nmf", "other"]
    one = client.get("/api/concepts/nmf/1").json()
    assert one["label"]["label"] == "stripes1" and one["importance"]["values"] == pytest.approx(
        [-0.2, 0.9, 0.3]
    )
    assert len(one["topk"]["max"]) == 4


def test_a_wrapped_model_atlas_skips_the_heat_maps(tmp_path, concept_atlas):
    """An atlas of a model the viewer cannot load again: the concept page still shows, without
    the grid, and the grid's URL is a clean 404."""
    out, _ = concept_atlas
    from convscope.atlas.schema import connect_write

    copy = tmp_path / "atlas"
    shutil.copytree(out, copy)
    con = connect_write(copy / "atlas.db")
    con.execute("""UPDATE meta SET value = '{"name": "wrapped"}' WHERE key = 'model'""")
    con.commit()
    con.close()
    c = TestClient(create_app(copy), base_url="http://127.0.0.1")
    r = c.get("/concepts/nmf/1")
    assert r.status_code == 200 and "/img/concept/topk/" not in r.text and "/img/source/" in r.text
    g = c.get("/img/concept/topk/nmf/1/max")
    assert g.status_code == 404 and "cannot load" in g.text


def test_static_export_has_the_concept_pages(concept_atlas, tmp_path):
    from convscope.viewer.export import export_html

    out, scan = concept_atlas
    site = tmp_path / "site"
    home = export_html(out, site, units_per_layer=1).read_text()
    assert "concepts_nmf.html" in home and (site / "concepts.html").exists()
    assert (site / "concepts_nmf.html").read_text().count("class='cell'") == N
    page = (site / "concept_nmf_1.html").read_text()
    assert "img/concept_topk_nmf_1_max.png" in page and "img/concept_picture_nmf_1.png" in page
    assert "/concepts/" not in page and "/img/" not in page  # relative files only
    assert Image.open(site / "img/concept_topk_nmf_1_max.png").width >= 4 * 96
    assert Image.open(site / "img/concept_picture_nmf_1.png").getpixel((1, 1)) == (10, 200, 30)
    assert not list(site.glob("img/concept_topk_other_*"))  # its hits are not the atlas's images
    best = int(scan.topk(LAYER, 1, "max").images[0])
    assert f"image_{best}.html" in page and "concept_nmf_1.html" in (site / f"image_{best}.html").read_text()


def test_a_symlinked_picture_is_neither_served_nor_exported(concept_atlas, tmp_path):
    """A picture file that is a symlink (here to a text file outside the atlas) is no picture:
    404 from the server, not copied by the export."""
    from convscope.viewer.export import export_html

    out, _ = concept_atlas
    copy = tmp_path / "atlas"
    shutil.copytree(out, copy, symlinks=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    pic = Atlas.open(copy).dictionary_picture("nmf", 0)
    pic.parent.mkdir(parents=True, exist_ok=True)
    pic.symlink_to(secret)
    inside = Atlas.open(copy).dictionary_picture("nmf", 2)
    inside.symlink_to(Atlas.open(copy).dictionary_picture("nmf", 1))  # a link inside: refused too
    c = TestClient(create_app(copy), base_url="http://127.0.0.1")
    for concept in (0, 2):
        r = c.get(f"/img/concept/picture/nmf/{concept}")
        assert r.status_code == 404 and "not yours" not in r.text
        assert "id='picture'" not in c.get(f"/concepts/nmf/{concept}").text
    assert c.get("/img/concept/picture/nmf/1").status_code == 200  # the real one still is
    site = tmp_path / "site"
    export_html(copy, site, units_per_layer=1)
    assert not (site / "img/concept_picture_nmf_0.png").exists()
    assert not (site / "img/concept_picture_nmf_2.png").exists()
    assert (site / "img/concept_picture_nmf_1.png").exists()


def test_a_set_scanned_without_max_has_its_pages(concept_atlas, tmp_path, monkeypatch):
    """A concept scan without the ``max`` criterion: the set's page (thumbnails from the first
    stored criterion) and the export work; the set's page reads one best row per concept (no
    per-concept top-K query)."""
    from convscope.atlas.queries import AtlasReader
    from convscope.viewer.concepts import concept_cells
    from convscope.viewer.export import export_html

    out, _ = concept_atlas
    copy = tmp_path / "atlas"
    shutil.copytree(out, copy)
    atlas = Atlas.open(copy)
    subject, source = reopen(atlas)
    nmf = atlas.dictionary("nmf")
    scan = scan_concepts(subject, source, nmf, k=3, workers=0, threshold_sample=50, criteria=("mean",))
    atlas.write_dictionary("meanonly", nmf)
    atlas.write_dictionary_scan("meanonly", scan)
    c = TestClient(create_app(copy), base_url="http://127.0.0.1")
    page = c.get("/concepts/meanonly")
    assert page.status_code == 200 and page.text.count("class='cell'") == N
    best = int(scan.topk(LAYER, 0, "mean").images[0])
    assert f"/img/source/{best}" in page.text  # concept 0's thumbnail: its best image by mean
    assert c.get("/concepts/meanonly/0").status_code == 200
    reader = AtlasReader(copy)

    def per_concept(*a, **k):
        raise AssertionError("the set's page asked for a concept's whole top-K")

    monkeypatch.setattr(AtlasReader, "dictionary_topk", per_concept)
    cells = concept_cells(reader, reader.dictionary("nmf"))
    assert [cell["image"] for cell in cells] == [
        int(atlas.dictionary_topk("nmf", i).images[0]) for i in range(N)
    ]
    monkeypatch.undo()
    export_html(copy, tmp_path / "site", units_per_layer=1)
    assert (tmp_path / "site" / "concepts_meanonly.html").read_text().count("class='cell'") == N


def test_nan_importance_rows_are_left_out():
    """A class without images has a NaN row (ConceptImportance): the bars leave it out, it is
    never the top class, and a concept with NaN only has none."""
    from convscope.viewer.concepts import top_class
    from convscope.viewer.pages import importance_bars

    nan = float("nan")
    imp = {
        "method": "m",
        "classes": ["empty", "dog", "cat"],
        "counts": np.array([0, 2, 3]),
        "matrix": np.array([[nan, nan], [0.2, nan], [-0.5, nan]], np.float32),
    }
    bars = importance_bars(imp, 0)
    assert "empty" not in bars and "dog" in bars and "cat" in bars
    assert top_class(imp, 0) == "dog"  # np.argmax took the NaN row
    assert top_class(imp, 1) is None and "<tr>" not in importance_bars(imp, 1)


def test_a_concept_without_a_scan_never_loads_the_model(concept_atlas, tmp_path, monkeypatch):
    """No concept scan stored: the concept page shows without asking for the model (an empty
    top-K is no list of atlas hits)."""
    import convscope.viewer.app as app

    out, _ = concept_atlas
    copy = tmp_path / "atlas"
    shutil.copytree(out, copy)
    Atlas.open(copy).write_dictionary("bare", Atlas.open(copy).dictionary("nmf"))

    def no_model(st):
        raise AssertionError("the page loaded the model")

    monkeypatch.setattr(app, "_live", no_model)
    c = TestClient(create_app(copy), base_url="http://127.0.0.1")
    r = c.get("/concepts/bare/0")
    assert r.status_code == 200 and "no concept scan stored" in r.text


def test_importance_grouping_and_logits_are_stored_and_shown(tmp_path):
    """ConceptImportance.grouping and .logits survive the atlas and the page says how the images
    were grouped; one image is "1 image"."""
    from convscope.viewer.pages import importance_bars

    atlas = Atlas.create(tmp_path / "atlas", {"name": "tiny"}, {"description": "x"})
    acts = torch.rand(64, 8, generator=torch.Generator().manual_seed(0))
    cs = fit_dictionary(acts, "nmf", 2, layer="block", seed=0)
    atlas.write_dictionary("d", cs)

    @dataclass
    class Grouped(Importance):
        grouping: str = "label"
        logits: torch.Tensor = None

    atlas.write_dictionary_importance(
        "d", Grouped(torch.ones(2, 2), ["a", "b"], torch.tensor([1, 4]), logits=torch.tensor([2.5, -1.0]))
    )
    got = atlas.dictionary_importance("d")
    assert got["grouping"] == "label" and got["logits"].tolist() == [2.5, -1.0]
    bars = importance_bars(got, 0)
    assert "grouped by their labels" in bars and "mean logit 2.5" in bars
    assert ">1 image<" in bars and ">4 images<" in bars
    atlas.write_dictionary_importance(
        "d", Grouped(torch.ones(2, 2), ["a", "b"], torch.ones(2), "m", "predicted")
    )
    got = atlas.dictionary_importance("d")
    assert got["logits"] is None and "by the model&#x27;s prediction" in importance_bars(got, 1)


def test_html_in_labels_classes_and_image_names_is_escaped(concept_atlas, tmp_path):
    """A ``<script>`` class name, label, category, dataset and image name shows as text on the
    concept-set page and the concept page, never as markup."""
    out, _ = concept_atlas
    copy = tmp_path / "atlas"
    shutil.copytree(out, copy)
    atlas = Atlas.open(copy)
    subject, _ = reopen(atlas)
    nmf = atlas.dictionary("nmf")
    evil = tmp_path / "evil"
    evil.mkdir()
    rng = np.random.default_rng(2)
    for i in range(3):
        pixels = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(evil / f"<script>alert({i}).png")  # no / in a file name
    atlas.write_dictionary("evil", nmf)
    atlas.write_dictionary_scan(
        "evil", scan_concepts(subject, evil, nmf, k=3, workers=0, threshold_sample=10)
    )
    atlas.write_dictionary_importance(
        "evil", Importance(torch.ones(2, N), ["<script>cls</script>", "ok"], torch.tensor([1, 1]))
    )

    class Evil(Labels):
        def __init__(self, n):
            super().__init__(n)
            self._labels = [
                UnitLabel(LAYER, u, u, "<script>lab</script>", "<b>cat</b>", 0.5, True) for u in range(n)
            ]

    atlas.write_dictionary_labels("evil", Evil(N), "<i>set</i>")
    c = TestClient(create_app(copy), base_url="http://127.0.0.1")
    for url in ("/concepts/evil", "/concepts/evil/0"):
        r = c.get(url)
        assert r.status_code == 200, url
        for raw in ("<script>", "<b>cat", "<i>set"):
            assert raw not in r.text, (url, raw)
        assert "&lt;script&gt;lab&lt;/script&gt;" in r.text
        assert "&lt;script&gt;cls&lt;/script&gt;" in r.text
    page = c.get("/concepts/evil/0").text
    assert "&lt;script&gt;alert(" in page and "&lt;b&gt;cat&lt;/b&gt;" in page and "&lt;i&gt;set" in page


def test_an_atlas_made_by_concepts_alone_shows_the_top_images(viewer_atlas, tmp_path):
    """``convscope concepts`` then ``convscope serve``: the atlas holds the data's images, so the
    concept page has thumbnails linking image pages and the heat-map grid is a PNG."""
    from convscope.atlas.concepts_build import concepts_to_atlas

    subject, source = reopen(Atlas.open(viewer_atlas, readonly=True))
    out = tmp_path / "atlas"
    built = concepts_to_atlas(
        out, subject, source, LAYER, method="pca", n=3, k=3, visualize=False, workers=0,
        batch_size=12, per_image=4, max_samples=200, scan_options={"threshold_sample": 8},
    )  # fmt: skip
    atlas = Atlas.open(out, readonly=True)
    assert atlas.run() == {} and len(atlas.image_names()) == len(source)  # no unit scan, its images
    c = TestClient(create_app(out), base_url="http://127.0.0.1")
    r = c.get(f"/concepts/{built.name}/0")
    assert r.status_code == 200
    best = int(built.scan.topk(LAYER, 0, "max").images[0])
    assert f"<img loading='lazy' src='/img/source/{best}?size=112'" in r.text and f"/image/{best}'" in r.text
    assert f"/img/concept/topk/{built.name}/0/max" in r.text
    assert c.get(f"/img/source/{best}").status_code == 200
    grid = c.get(f"/img/concept/topk/{built.name}/0/max")
    assert grid.status_code == 200 and grid.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(grid.content)).width >= 3 * 96
    assert c.get(f"/image/{best}").status_code == 200
    assert f"/img/source/{best}" in c.get(f"/concepts/{built.name}").text  # the set's thumbnails
