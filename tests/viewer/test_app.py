from __future__ import annotations

import contextlib
import io
import sqlite3

import pytest
from PIL import Image

fastapi = pytest.importorskip("fastapi", reason="the viewer needs the web extra")
from fastapi.testclient import TestClient  # noqa: E402

from convscope.viewer.app import create_app  # noqa: E402
from tests.viewer.conftest import TOP_K  # noqa: E402


@pytest.fixture(scope="module")
def client(viewer_atlas):
    return TestClient(create_app(viewer_atlas, upload_limit=200_000), base_url="http://127.0.0.1")


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
    assert len(unit["topk"]["max"]) == TOP_K and unit["concepts"]
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


@pytest.mark.parametrize("name", ["atlas.lock", "scan.ckpt", "atlas.db-journal", ".atlas.db.x1.tmp"])
def test_private_atlas_files_are_not_served(client, viewer_atlas, name):
    # the lock names the writer's pid, host and command line; checkpoints and temporary files
    # are convscope's own
    path = viewer_atlas / name
    existed = path.exists()
    if not existed:
        path.write_text("pid 123 on host: convscope scan /home/me/private")
    try:
        assert client.get(f"/files/{name}").status_code == 404
    finally:
        if not existed:
            path.unlink()


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


# -- issue 17 ---------------------------------------------------------------------------------
def test_unit_page_shows_whole_image_names():
    from convscope.viewer import pages

    names = ["n02124075_Egyptian_cat/n02124075_1042.JPEG", "n02123045_tabby/n02124075_1042.JPEG"]
    tops = {"max": [{"image": i, "name": n, "score": 1.0, "y": 0, "x": 0} for i, n in enumerate(names)]}
    unit = {"unit": 0, "max": 1.0, "mean": 0.1, "std": 0.2, "frac_pos": 0.5, "threshold": None}
    layer = {"name": "blocks.2", "channels": 4}
    html = pages.unit_page({"model": {}}, layer, unit, ["max"], tops, [], None, pages.Links())
    for n in names:  # the class part is shown, and equal suffixes stay apart
        assert f">{n}</span>" in html and f"title='{n}'" in html


def test_errors_of_pages_are_html_and_of_the_api_json(client):
    for url, status in [
        ("/layer/nope", 404),
        ("/unit/blocks.2/999", 404),
        ("/unit/blocks.2/abc", 422),
        ("/no/such/page", 404),
        ("/layer/blocks.2?sort=bogus", 400),
    ]:
        r = client.get(url)
        assert r.status_code == status and r.headers["content-type"].startswith("text/html"), url
        assert r.text.startswith("<!doctype html>") and f"<title>{status} " in r.text, url
    assert "no scanned layer &#x27;nope&#x27;" in client.get("/layer/nope").text
    api = client.get("/api/unit/blocks.2/999")
    assert api.status_code == 404 and api.json() == {"detail": "blocks.2 has no unit 999"}
    assert client.get("/api/unit/blocks.2/abc").headers["content-type"] == "application/json"


def test_serve_help_names_the_web_extra():
    from typer.testing import CliRunner

    from convscope.cli.main import app

    out = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    assert "pip install 'convscope[web]'" in out and "--allow-host" in out


class _Spools:
    """Every spooled temporary file the multipart parser makes, with how much it held."""

    def __init__(self, monkeypatch):
        import tempfile

        import starlette.formparsers as fp

        made = self.made = []

        class Tracked(tempfile.SpooledTemporaryFile):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                made.append(self)

            def close(self):
                self.final = (self.tell(), self._rolled)
                super().close()

        monkeypatch.setattr(fp, "SpooledTemporaryFile", Tracked)

    def sizes(self):
        return [getattr(f, "final", (f.tell(), f._rolled)) for f in self.made]


def _chunked_upload(app, total: int, chunk: int = 64 << 10, image: bytes = b""):
    """POST a multipart body of ``total`` bytes to /upload straight through ASGI, as a chunked
    request (no Content-Length) whose chunks are made only when the server asks for them.
    Returns (status, bytes the server read)."""
    import asyncio

    head = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
        b"Content-Type: image/png\r\n\r\n"
    )
    tail = b"\r\n--XyZ--\r\n"
    body = head + image
    sent = {"bytes": 0, "status": None}

    def chunks():
        yield body
        n = len(body)
        while n < total:
            yield b"\0" * chunk
            n += chunk
        yield tail

    gen = chunks()

    async def receive():
        try:
            data = next(gen)
        except StopIteration:
            return {"type": "http.disconnect"}
        sent["bytes"] += len(data)
        return {"type": "http.request", "body": data, "more_body": data is not tail}

    async def send(message):
        if message["type"] == "http.response.start":
            sent["status"] = message["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/upload",
        "raw_path": b"/upload",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"transfer-encoding", b"chunked"),
            (b"content-type", b"multipart/form-data; boundary=XyZ"),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    asyncio.run(app(scope, receive, send))
    return sent["status"], sent["bytes"]


def test_chunked_upload_is_stopped_at_the_limit(viewer_atlas, monkeypatch):
    limit = 200_000
    app = create_app(viewer_atlas, upload_limit=limit)
    spools = _Spools(monkeypatch)
    status, read = _chunked_upload(app, total=20 << 20)
    assert status == 413
    assert read <= limit + (64 << 10) + (64 << 10) + 200  # the limit, the form overhead, one chunk
    assert all(size <= limit for size, _ in spools.sizes())
    # a body under the limit is still read whole and parsed in memory (nothing on disk)
    status, read = _chunked_upload(app, total=150_000, image=_png())
    assert status == 303 and read > 150_000  # read to the end (the padding follows the PNG)
    assert spools.sizes() and all(size <= limit and not rolled for size, rolled in spools.sizes())


def test_chunked_upload_over_a_socket(viewer_atlas):
    """A real chunked request to uvicorn: the 413 arrives and the connection closes long before
    the client has sent what it meant to."""
    import select
    import socket
    import threading
    import time

    uvicorn = pytest.importorskip("uvicorn")
    limit, total, chunk = 200_000, 64 << 20, 64 << 10
    inner = create_app(viewer_atlas, upload_limit=limit)
    seen = {"bytes": 0, "last": 0}

    async def counting(scope, receive, send):
        async def counted():
            message = await receive()
            seen["last"] = len(message.get("body", b""))
            seen["bytes"] += seen["last"]
            return message

        await inner(scope, counted if scope["type"] == "http" else receive, send)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(counting, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if srv.started:
                break
            time.sleep(0.05)
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=XyZ\r\n\r\n"
        )
        head = b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        sock.sendall(b"%x\r\n" % len(head) + head + b"\r\n")
        piece = b"%x\r\n" % chunk + b"\0" * chunk + b"\r\n"
        sent, reply = len(head), b""
        deadline = time.monotonic() + 30
        while sent < total and time.monotonic() < deadline:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(piece)
            except OSError:  # the server closed the connection
                break
            sent += chunk
        sock.settimeout(5)
        with contextlib.suppress(OSError):
            while data := sock.recv(65536):
                reply += data
        sock.close()
    finally:
        srv.should_exit = True
        thread.join(10)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    # the server stopped reading at the first message past the limit (and the form's 64 KB);
    # how much uvicorn hands over in one message depends on how busy the machine is
    assert seen["bytes"] - seen["last"] <= limit + (64 << 10)
    assert sent < total // 4  # and the client was told long before it finished


def test_only_known_hosts_are_answered(viewer_atlas):
    app = create_app(viewer_atlas)
    for host in ("127.0.0.1:8000", "localhost", "[::1]:8000"):
        assert TestClient(app, base_url=f"http://{host}").get("/").status_code == 200, host
    for host in ("evil.example", "attacker.test:8000", "127.0.0.1.evil.example"):
        r = TestClient(app, base_url=f"http://{host}").get("/api/layers")
        assert r.status_code == 400 and "layers" not in r.text, host
    lan = create_app(viewer_atlas, allowed_hosts=["atlas.lan:8000", "FE80:0::1"])
    assert TestClient(lan, base_url="http://atlas.lan:8000").get("/").status_code == 200
    assert TestClient(lan, base_url="http://[fe80::1]").get("/").status_code == 200
    assert TestClient(lan, base_url="http://127.0.0.1").get("/").status_code == 400
    anyhost = create_app(viewer_atlas, allowed_hosts=["*"])
    assert TestClient(anyhost, base_url="http://whatever.example").get("/").status_code == 200


def test_default_hosts_follow_the_bind_address():
    import socket

    from convscope.viewer.app import default_hosts

    assert default_hosts("127.0.0.1") == ["127.0.0.1", "localhost", "::1"]
    assert default_hosts("192.168.1.20") == ["127.0.0.1", "localhost", "::1", "192.168.1.20"]
    assert socket.gethostname() in default_hosts("0.0.0.0")


def test_serve_passes_the_allowed_hosts(viewer_atlas, monkeypatch):
    pytest.importorskip("uvicorn")
    import uvicorn

    import convscope.viewer.app as viewer_app
    from convscope.cli.main import main

    made = {}
    real = viewer_app.create_app

    def spy(*a, **kw):
        made.update(kw)
        return real(*a, **kw)

    monkeypatch.setattr(viewer_app, "create_app", spy)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: made.update(app=app, bind=kw["host"]))
    args = ["serve", str(viewer_atlas), "--host", "10.1.2.3", "--allow-host", "atlas.lan"]
    assert main(args) == 0
    assert made["allowed_hosts"] == ["127.0.0.1", "localhost", "::1", "10.1.2.3", "atlas.lan"]
    assert TestClient(made["app"], base_url="http://atlas.lan").get("/").status_code == 200
    assert TestClient(made["app"], base_url="http://10.1.2.3:8000").get("/").status_code == 200
    assert TestClient(made["app"], base_url="http://evil.example").get("/").status_code == 400


def test_cross_origin_posts_are_refused(client):
    png = {"file": ("cat.png", _png(), "image/png")}
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1:9999"},
        {"Sec-Fetch-Site": "cross-site"},
    ):
        r = client.post("/upload", files=png, headers=headers, follow_redirects=False)
        assert r.status_code == 403, headers
    ok = client.post("/upload", files=png, headers={"Origin": "http://127.0.0.1"}, follow_redirects=False)
    assert ok.status_code == 303


def test_security_headers(client):
    for url in ("/", "/img/source/0", "/layer/nope", "/api/layers"):
        h = client.get(url).headers
        assert "frame-ancestors 'none'" in h["content-security-policy"], url
        assert h["x-content-type-options"] == "nosniff" and h["x-frame-options"] == "DENY", url
    refused = TestClient(client.app, base_url="http://evil.example").get("/")
    assert refused.headers["x-content-type-options"] == "nosniff"


BIG = str(2**63)
HUGE = str(10**30)


@pytest.mark.parametrize(
    "url",
    [
        f"/layer/blocks.2?page={BIG}",
        f"/api/layer/blocks.2?page={HUGE}",
        f"/unit/blocks.2/{BIG}",
        f"/unit/blocks.2/{HUGE}?direction=1",
        f"/api/unit/blocks.2/{HUGE}",
        f"/img/topk/blocks.2/{HUGE}/max",
        f"/img/patch/blocks.2/{HUGE}",
        f"/img/fv/blocks.2/{HUGE}",
        f"/img/rf/blocks.2/{HUGE}",
        f"/image/{HUGE}",
        f"/img/source/{HUGE}",
        f"/img/attr/image/{HUGE}",
        "/files/render%00/x.png",
        "/files/a%00b",
        "/files/" + "x" * 5000,
        "/api/layer/blocks.2?sort=bogus",
        "/layer/blocks.2?sort=bogus",
        "/unit/blocks.2/%D9%A1",  # ١ (ARABIC-INDIC DIGIT ONE)
        "/image/%D9%A1",
        "/img/attr/image/%C2%B2",  # ² (str.isdigit() is True, int() fails)
        "/img/attr/image/%D9%A1",
        "/layer/blocks%002",
    ],
)
def test_odd_input_gets_a_4xx(client, url):
    r = client.get(url)
    assert 400 <= r.status_code < 500, (url, r.status_code)


def test_label_filter_is_literal(client):
    def count(label):
        return client.get("/api/layer/blocks.2", params={"label": label, "per_page": 500}).json()["total"]

    labels = [u["label"] for u in client.get("/api/layer/blocks.2?per_page=500").json()["units"]]
    assert count("") == len(labels) == 40
    assert count("%") == count("_") == count("e_") == 0  # no concept name holds % or _
    assert count("re") == sum("re" in lab for lab in labels) > 0


def test_replaced_atlas_is_reopened(viewer_atlas, tmp_path):
    import shutil

    atlas = tmp_path / "atlas"
    atlas.mkdir()
    with sqlite3.connect(viewer_atlas / "atlas.db") as src, sqlite3.connect(atlas / "atlas.db") as dst:
        src.backup(dst)
    dst.close()
    client = TestClient(create_app(atlas), base_url="http://127.0.0.1")
    st = client.app.state.viewer
    old = [r["name"] for r in client.get("/api/layers").json()["layers"]]
    assert old == ["blocks.2", "blocks.4"]
    assert client.get("/img/rf/blocks.2/0").status_code == 200
    st.cache.get(("src", 0, 112), lambda: b"old picture")
    before = [client.get("/unit/blocks.2/1").text for _ in range(4)]  # connections in several threads

    # what `scan --overwrite` does: delete atlas.db, write a new one in its place
    new = tmp_path / "new.db"
    shutil.copy(atlas / "atlas.db", new)
    with sqlite3.connect(new) as con:
        con.execute("DELETE FROM layers WHERE name = 'blocks.4'")
        con.execute("UPDATE images SET name = 'replaced-' || name")
    con.close()
    (atlas / "atlas.db").unlink()
    shutil.copy(new, atlas / "atlas.db")

    for _ in range(6):  # every thread's connection sees the new file
        assert [r["name"] for r in client.get("/api/layers").json()["layers"]] == ["blocks.2"]
        assert "replaced-" in client.get("/unit/blocks.2/1").text
    assert all("replaced-" not in b for b in before)
    assert ("src", 0, 112) not in st.cache.data  # pictures of the old atlas are gone
    (atlas / "atlas.db").unlink()
    missing = client.get("/")
    assert missing.status_code == 503 and "rewritten" in missing.text


def test_unknown_names_are_a_404_with_a_one_line_hint(client, monkeypatch):
    from convscope.errors import NameNotFoundError

    page = client.get("/layer/block.2")
    assert page.status_code == 404 and "did you mean blocks.2" in page.text
    detail = client.get("/api/layer/block.4").json()["detail"]
    assert detail.startswith("no scanned layer 'block.4'; did you mean blocks.4") and "\n" not in detail

    # an unknown name the atlas reader reports (a layer, a unit, a concept set) is a 404, not a 400
    def unknown(*args, **kwargs):
        raise NameNotFoundError("stripes", ["stripe", "dots"], "concept set")

    monkeypatch.setattr(client.app.state.viewer.reader, "concepts", unknown)
    api = client.get("/api/unit/blocks.2/1")
    assert api.status_code == 404 and api.json() == {
        "detail": "unknown concept set 'stripes'; did you mean stripe?"
    }
    html = client.get("/unit/blocks.2/1")
    assert html.status_code == 404 and "unknown concept set &#x27;stripes&#x27;" in html.text
