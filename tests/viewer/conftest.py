from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from convscope.cli.main import main

TOP_K = 8  # wider than the old 460 px cap of the top-K picture (8 tiles of 100 px)
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "viewer"  # the screenshots
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def viewer_atlas(tmp_path_factory):
    """An atlas of efficientnet_lite0 over the bundled photos starting with c (and their crops),
    with two random directions, a synthetic-concept dissection and one empirical receptive field."""
    out = tmp_path_factory.mktemp("viewer") / "atlas"
    scan = (
        "scan --data convscope:samples --pattern c* --layers blocks.2,blocks.4 --directions 2 "
        f"--k {TOP_K} --threshold-sample 8 --batch-size 12"
    ).split()
    assert main([*scan, "--out", str(out)]) == 0
    dissect = ["dissect", "--concepts", "synthetic", "--synthetic-images", "8", "--layers", "blocks.2"]
    dissect += ["--show", "0"]
    assert main([*dissect, "--out", str(out)]) == 0
    assert main(["rf", str(out), "--layer", "blocks.2", "--units", "0", "--top", "1", "--stride", "16"]) == 0
    return out


@contextlib.contextmanager
def serving(atlas: Path) -> Iterator[str]:
    """The viewer of ``atlas`` served by uvicorn on a free loopback port in a thread of this
    process (so a test's monkeypatching reaches its handlers); yields its base URL."""
    uvicorn = pytest.importorskip("uvicorn", reason="the viewer needs the web extra")
    from convscope.viewer.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(atlas), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium driven by Playwright (skipped, saying why, without either)."""
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); browser tests skipped")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()
