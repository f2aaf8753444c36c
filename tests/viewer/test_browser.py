"""End-to-end: a real Chromium (Debian's, driven by Playwright) walks model -> layer -> unit ->
image and uploads an image. Screenshots go to test-artifacts/viewer/."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.viewer.conftest import ARTIFACTS, serving


@pytest.fixture(scope="module")
def server(viewer_atlas):
    with serving(viewer_atlas) as url:
        yield url


def test_navigate_and_upload(server, browser, tmp_path):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server + "/")
    assert "efficientnet_lite0" in page.title()
    page.screenshot(path=str(ARTIFACTS / "1_model.png"), full_page=True)

    page.click("text=blocks.2")
    page.wait_for_load_state("networkidle")
    assert "layer blocks.2" in page.title()
    cells = page.locator(".cell img")
    assert cells.count() == 40
    assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(ARTIFACTS / "2_layer.png"), full_page=True)

    page.click("text=unit 3")
    page.wait_for_load_state("networkidle")
    assert "blocks.2 unit 3" in page.title()
    assert page.locator("h2", has_text="top images by max").count() == 1
    page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=60000)
    assert page.evaluate("Array.from(document.images).every(i => i.naturalWidth > 0)")
    # the top-K picture is shown at its own size (it scrolls sideways), not shrunk unreadable
    natural, shown = page.locator("img[alt='top-k grid']").first.evaluate(
        "i => [i.naturalWidth, i.getBoundingClientRect().width]"
    )
    assert natural > 460 and shown == natural
    names = page.locator(".cell .name")
    assert names.count() > 0 and all(n.inner_text() == n.get_attribute("title") for n in names.all())
    page.screenshot(path=str(ARTIFACTS / "3_unit.png"), full_page=True)

    page.locator(".cell a").first.click()
    page.wait_for_load_state("networkidle")
    assert page.locator("#predictions tr").count() == 5
    assert page.evaluate("document.getElementById('attribution').naturalWidth") > 0
    page.screenshot(path=str(ARTIFACTS / "4_image.png"), full_page=True)

    upload = tmp_path / "mine.png"
    Image.new("RGB", (96, 96), (200, 40, 40)).save(upload)
    page.set_input_files("#upload", str(upload))
    page.click("text=look at my image")
    page.wait_for_load_state("networkidle")
    assert "your image" in page.title()
    assert page.locator("#predictions tr").count() == 5
    page.screenshot(path=str(ARTIFACTS / "5_upload.png"), full_page=True)
    page.click("table a >> nth=0")
    page.wait_for_load_state("networkidle")
    assert " unit " in page.title()
