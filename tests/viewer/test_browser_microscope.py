"""End-to-end in a real Chromium: the microscope of a tiny model (microscope_to_atlas: a scan,
stored positive, negative and diversity feature visualisations, a colour dissection, one
empirical receptive field and an activation atlas) walked in the served viewer (model -> layer
grid and its toggle -> unit -> activation atlas, zoomed, panned, a cell's patches -> search by
label) with every optimisation refused, and its static export opened through file:// URLs.
Screenshots go to test-artifacts/viewer/microscope_*.png."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

import convscope.zoo
from convscope.atlas.microscope_build import microscope_to_atlas, rf_units
from convscope.atlas.queries import AtlasReader
from convscope.inputs.samples import SAMPLE_NAMES, sample_view
from convscope.subject import Subject
from convscope.testing import tiny_subject
from tests.viewer.conftest import ARTIFACTS, serving

LAYER = "conv2"  # the tiny model's last conv: 16 units
UNITS = 16
STAGES = ["scan", "visuals", "dissect", "rf", "activation_atlas"]
GRID = 4  # activation-atlas cells a side
FAST = {
    "scan": {"k": 6, "batch_size": 12, "threshold_sample": 8, "directions": 0, "workers": 0},
    "visuals": {"steps": 3, "size": 32, "diversity": 2},
    "dissect": {"batch_size": 12, "workers": 0, "units": 1},
    "rf": {"units": 1, "top": 1, "patch": 11, "stride": 8},
    "activation_atlas": {
        "grid": GRID, "steps": 2, "size": 48, "layout": "pca", "samples_per_image": 4,
        "min_count": 1, "workers": 0, "batch_size": 12, "top": 3,
    },
}  # fmt: skip
VISUALS = ["positive feature", "negative feature", "diversity feature", "diversity feature"]
# functions, not expressions: Playwright evaluates an expression with eval(), which the CSP forbids
ALL_LOADED = "() => Array.from(document.images).every(i => i.complete)"
BROKEN = "() => Array.from(document.images).filter(i => !(i.naturalWidth > 0)).map(i => i.src)"
# lazy images load when shown: the checks load every one (hidden by the toggle too)
EAGER = "() => document.querySelectorAll('img').forEach(i => { i.loading = 'eager'; })"


def tiny() -> Subject:
    """The tiny model as an atlas records it: loadable again by name (through the patched zoo)."""
    s = tiny_subject(size=64)
    s.spec = {"name": "tiny", "model": "tiny", "weights": None, "arch": None}
    return s


@pytest.fixture(scope="module")
def tiny_zoo():
    """``convscope.zoo.load("tiny")`` gives the tiny model, so the viewer and the export load
    the atlas's model again as they would a real one."""
    real = convscope.zoo.load

    def load(model, *args, **kwargs):
        return tiny() if model == "tiny" else real(model, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(convscope.zoo, "load", load)
        yield


@pytest.fixture(scope="module")
def microscope(tiny_zoo, tmp_path_factory) -> Path:
    """The microscope of the tiny model's conv2 over 24 small views of the bundled photos."""
    root = tmp_path_factory.mktemp("microscope-browser")
    photos = root / "photos"
    photos.mkdir()
    for name in SAMPLE_NAMES[:12]:
        for crop in ("full", "centre"):
            img = sample_view(f"{name}/{crop}").convert("RGB")
            img.thumbnail((128, 128))
            img.save(photos / f"{name}-{crop}.png")
    built = microscope_to_atlas(
        tiny(), photos, root / "atlas", layers=LAYER, units="all", stages=STAGES, options=FAST
    )
    assert built.ran == STAGES
    return root / "atlas"


@pytest.fixture(scope="module")
def server(microscope):
    with serving(microscope) as url:
        yield url


@pytest.fixture()
def no_optimising(monkeypatch) -> list[str]:
    """Every synthesis entry point (optimize, the feature visualisations, activation atlases,
    class models, inversion, DeepDream) refuses to run, wherever a module holds a reference to
    it; returns the names of those that were called anyway (a handler may catch the error)."""
    import convscope.synthesis as synthesis
    import convscope.synthesis.activation_atlas as aa_compute

    targets = {
        getattr(synthesis, n): n for n in synthesis.__all__ if inspect.isfunction(getattr(synthesis, n))
    }
    targets[aa_compute.activation_atlas] = "activation_atlas"
    called: list[str] = []

    def refusing(name):
        def refuse(*args, **kwargs):
            called.append(name)
            raise AssertionError(f"{name} was called while serving stored pages")

        return refuse

    for module_name, module in list(sys.modules.items()):
        if module_name.split(".")[0] != "convscope" or module is None:
            continue
        for attr, value in list(vars(module).items()):
            if inspect.isfunction(value) and value in targets:
                monkeypatch.setattr(module, attr, refusing(targets[value]))
    return called


class Watch:
    """What a page reports: console errors (CSP violations among them), uncaught page errors
    and every HTTP response that is not a 200."""

    def __init__(self, page):
        self.errors: list[str] = []
        self.bad: list[tuple[int, str]] = []
        page.on("console", self.console)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("response", lambda r: self.bad.append((r.status, r.url)) if r.status != 200 else None)

    def console(self, message) -> None:
        if message.type == "error":
            self.errors.append(f"{message.text} at {message.location.get('url')}")


def images_load(page) -> int:
    """Load every image of the page (lazy and hidden ones too) and return how many there are;
    fails naming the ones that did not decode."""
    page.evaluate(EAGER)
    page.wait_for_function(ALL_LOADED, timeout=30000)
    assert page.evaluate(BROKEN) == []
    return page.evaluate("() => document.images.length")


def go(page, action) -> None:
    """Follow a link (``action()`` clicks it) to a page that must answer 200."""
    with page.expect_navigation() as nav:
        action()
    assert nav.value is not None and nav.value.status == 200, page.url
    page.wait_for_load_state("networkidle")


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"microscope_{name}.png"), full_page=True)


def test_served_microscope_walk(server, microscope, browser, no_optimising):
    reader = AtlasReader(microscope)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    watch = Watch(page)

    # the model page
    assert page.goto(server + "/").status == 200
    assert page.title().startswith("tiny") and images_load(page) == 0
    assert page.locator("td", has_text="auto-color").count() == 1
    shot(page, "1_model")

    # the layer page: a grid of stored feature visualisations with its toggle
    go(page, lambda: page.click(f"a[href='/layer/{LAYER}']"))
    assert page.title().startswith(f"layer {LAYER}")
    cells = page.locator(".grid .cell")
    assert cells.count() == UNITS and images_load(page) == 2 * UNITS  # a visual and a patch each
    fv, patch = page.locator(".cell .fv img"), page.locator(".cell .pt img")
    labels = page.locator(".cell .det")  # the detectors' labels
    assert page.is_checked("#show-fv") and labels.count() > 0
    grid = page.locator(".grid")
    shown = {}
    for key, visible in (("fv", fv), ("patch", patch), ("label", None)):
        page.click(f"label[for='show-{key}']")
        assert page.is_checked(f"#show-{key}")
        for imgs in (fv, patch):  # only the chosen kind of picture shows, none for labels
            assert [i.is_visible() for i in imgs.all()] == [imgs is visible] * UNITS, key
        assert all(lab.is_visible() for lab in labels.all())
        shown[key] = grid.screenshot()
        shot(page, f"2_layer_{key}")
    assert len(set(shown.values())) == 3  # each setting draws another grid
    first = cells.first.bounding_box()  # label only: the cells shrink to their text
    page.click("label[for='show-fv']")
    assert cells.first.bounding_box()["height"] > first["height"]

    # the unit page of the unit with a measured receptive field
    unit = rf_units(UNITS, 1, 0, LAYER)[0]
    go(page, lambda: page.click(f".cell a[href='/unit/{LAYER}/{unit}']"))
    assert page.title().startswith(f"{LAYER} unit {unit}")
    visuals = page.locator("#visuals img")
    assert [v.get_attribute("alt").rsplit(" ", 1)[0] for v in visuals.all()] == VISUALS
    assert all(v.is_visible() for v in visuals.all())
    criteria = reader.criteria(LAYER)
    grids = page.locator("img[alt='top-k grid']")  # the top-K patches with their heat maps
    assert grids.count() == len(criteria) and all(g.is_visible() for g in grids.all())
    assert page.locator(".grid:not(.visuals) .cell img").count() == sum(
        len(reader.topk(LAYER, unit, c)) for c in criteria
    )
    for heading in ("feature visualization", "empirical receptive field", "neighbours in weight space"):
        assert page.locator("h2", has_text=heading).count() == 1, heading
    concepts = reader.concepts(LAYER, unit)  # its dissection labels
    assert concepts and page.locator("td", has_text="auto-color").count() == len(concepts)
    assert page.locator("img[alt='average discrepancy']").count() == 1
    images_load(page)
    shot(page, "3_unit")
    neighbour = page.locator("h2:has-text('neighbours') + p a").first
    go(page, neighbour.click)
    assert f"{LAYER} unit " in page.title() and images_load(page) > 0

    # the activation atlas: tiles on a zoomable, scrollable canvas; a cell opens its patches
    go(page, lambda: page.click(f"text=all units of {LAYER}"))
    go(page, lambda: page.click("text=activation atlas of this layer"))
    assert page.title().startswith(f"activation atlas of {LAYER}")
    tiles = page.locator(".aa-canvas a img")
    assert tiles.count() == len(reader.activation_atlas_cells(LAYER)) > 1
    images_load(page)
    canvas, view = page.locator(".aa-canvas"), page.locator(".aa-view")
    width = canvas.bounding_box()["width"]
    assert page.is_checked("#aa-z2")
    shot(page, "4_atlas_2x")
    page.click("label[for='aa-z8']")
    assert canvas.bounding_box()["width"] == pytest.approx(4 * width)
    assert tiles.first.bounding_box()["width"] == pytest.approx(4 * width / GRID, abs=1)
    assert view.evaluate("v => v.scrollHeight > v.clientHeight")  # 8x: larger than its view
    box = view.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, 300)
    page.wait_for_function("() => document.querySelector('.aa-view').scrollTop > 0")
    shot(page, "4_atlas_8x")
    page.click("label[for='aa-z2']")
    cell = reader.activation_atlas_cells(LAYER)[0]
    page.click(f".aa-canvas a[href='#cell{cell['cell']}']")
    panel = page.locator(f"#cell{cell['cell']}")
    assert page.url.endswith(f"#cell{cell['cell']}") and panel.is_visible()
    assert page.locator(".aa-panel:visible").count() == 1
    patches = panel.locator(".patches img")
    assert patches.count() == len(cell["typical"])
    assert all(p.evaluate("i => i.complete && i.naturalWidth > 0") for p in patches.all())
    shot(page, "5_atlas_cell")
    go(page, patches.first.click)  # a patch opens its image's page
    assert page.locator("#the-image").evaluate("i => i.naturalWidth") > 0

    # the search by label, from the header's form
    rows = [r for r in reader.all_labels() if r["kind"] == "unit"]
    best = max(rows, key=lambda r: r["iou"])
    found = sorted((r for r in rows if best["label"] in r["label"]), key=lambda r: -r["iou"])
    page.fill("#search-q", best["label"])
    go(page, lambda: page.press("#search-q", "Enter"))
    assert page.title().startswith(f"search: {best['label']}")
    hits = page.locator(".unit-hit > a")
    assert hits.count() == len(found) and images_load(page) == len(found)
    assert hits.first.get_attribute("href") == f"/unit/{LAYER}/{found[0]['unit']}"
    shot(page, "6_search")
    go(page, hits.first.click)
    assert page.title().startswith(f"{LAYER} unit {found[0]['unit']}") and images_load(page) > 0

    assert watch.errors == [] and watch.bad == [], (watch.errors, watch.bad)
    assert no_optimising == []
    page.close()


def _local_links(page, where: Path) -> list[Path]:
    """The files the page's links name (fragments and the page itself aside)."""
    hrefs = page.eval_on_selector_all("a[href]", "as => as.map(a => a.getAttribute('href'))")
    out = []
    for href in hrefs:
        path = unquote(urlsplit(href).path)
        assert not urlsplit(href).scheme, href  # a static site links within itself
        if path:
            out.append(where / path)
    return out


def test_static_export_in_chromium(microscope, browser, no_optimising, tmp_path):
    from convscope.viewer.activation_atlas import page_url
    from convscope.viewer.export import export_html
    from convscope.viewer.pages import StaticLinks

    site = tmp_path / "site"
    links = StaticLinks()
    # two units' pages: the activation atlas's patches show images their top-K lists do not
    index = export_html(microscope, site, units_per_layer=2)
    opened = [
        index,
        site / links.layer(LAYER),
        site / links.unit(LAYER, 1),
        site / page_url(links, LAYER),
        site / links.search(),
    ]
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    watch = Watch(page)
    for path in opened:
        assert path.is_file(), path
        page.goto(path.as_uri())
        assert page.title().endswith("convscope")
        images_load(page)
        targets = _local_links(page, site)
        assert targets, path
        missing = sorted({str(t.relative_to(site)) for t in targets if not t.is_file()})
        assert missing == [], f"{path.name} links to missing files"
    page.goto(opened[2].as_uri())
    assert page.locator("#visuals img").count() == len(VISUALS)
    assert page.locator("img[alt='top-k grid']").count() == len(AtlasReader(microscope).criteria(LAYER))
    shot(page, "7_export_unit")
    page.goto(opened[3].as_uri())
    cells = AtlasReader(microscope).activation_atlas_cells(LAYER)
    assert page.locator(".aa-canvas a img").count() == len(cells)
    assert watch.errors == []
    assert no_optimising == []
    page.close()
