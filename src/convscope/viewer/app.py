"""``convscope serve``: a FastAPI app over one atlas — model, layer, unit and image pages, with
thumbnails, top-K grids, predictions and Grad-CAM computed on demand and cached in memory.

Security: the database is opened read-only; files are served only from inside the atlas folder
(anything resolving outside is a 404); uploads are size- and type-checked, decoded, re-encoded
as PNG into a private temporary folder and never written anywhere else; request bodies are
counted as they are read (chunked ones too) and refused past the limit; only the configured
host names are answered (DNS rebinding), cross-origin POSTs are refused, and every response
carries a content security policy that forbids framing and scripts.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import socket
import tempfile
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from convscope.atlas import is_private_file
from convscope.errors import UserInputError
from convscope.viewer import pages
from convscope.viewer.store import AtlasReader

ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"}
MAX_PIXELS = 40_000_000  # checked from the header, before decoding
MAX_UPLOADS = 200  # uploads kept in the private temporary folder (oldest removed first)
MULTIPART_OVERHEAD = 64 << 10  # form boundaries and part headers allowed on top of the image
MAX_INDEX = 2**63 - 1  # SQLite integers: a unit or image number past this cannot exist
MAX_PAGE = 2**31
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        b"script-src 'none'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        b"frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]


def default_hosts(bind: str) -> list[str]:
    """The host names the viewer answers to when bound to ``bind``: this machine's loopback
    names, and for another address that address (for 0.0.0.0 or ::, this machine's name)."""
    hosts = list(LOCAL_HOSTS)
    extra = [socket.gethostname(), socket.getfqdn()] if bind in ("0.0.0.0", "::", "") else [bind]
    return hosts + [h for h in dict.fromkeys(extra) if h and h not in hosts]


def _host_patterns(hosts: Sequence[str]) -> list[str]:
    """``hosts`` as TrustedHostMiddleware compares them: lower case, IPv6 literals in brackets,
    without a port (``atlas.lan:8000`` is ``atlas.lan``)."""
    import ipaddress

    out = []
    for h in hosts:
        h = h.strip().lower()
        try:
            h = f"[{ipaddress.IPv6Address(h.strip('[]'))}]"
        except ValueError:
            h = h.rsplit(":", 1)[0] if h.rsplit(":", 1)[-1].isdigit() else h
        if h:
            out.append(h)
    return out


class _SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every HTTP response (errors and refusals included)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in have]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _same_origin(request: Request) -> bool:
    """Whether a state-changing request comes from a page of this server: its ``Origin`` names
    the host it was sent to (browsers send it on every POST); without one, ``Sec-Fetch-Site``
    must not say cross-site. Clients that send neither (curl, scripts) are no browser attack."""
    origin = request.headers.get("origin")
    if origin is None:
        return request.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")
    host = request.headers.get("host", "")
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return bool(host) and netloc.lower() == host.lower()


def _check_index(value: int, what: str) -> int:
    """A unit or image number that can exist (larger ones would overflow SQLite: a 404)."""
    if not 0 <= value <= MAX_INDEX:
        raise HTTPException(404, f"no {what} {value}")
    return value


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, counted as it arrives (``Content-Length`` or chunked): a 413 as soon
    as it passes ``limit``, without reading the rest."""
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise HTTPException(
                413, f"images up to {_mb(limit - MULTIPART_OVERHEAD)}", {"Connection": "close"}
            )
    return bytes(buf)


async def _parse_upload(request: Request, body: bytes):
    """The ``file`` part of a multipart form already read into memory (parsed in memory too:
    nothing is spooled to disk)."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data") or "boundary=" not in ctype:
        raise HTTPException(400, "send the image as multipart/form-data with a field named file")

    async def stream():
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=1, max_fields=8, max_part_size=64 << 10)
    parser.spool_max_size = len(body) + 1  # the whole part stays in memory
    try:
        form = await parser.parse()
    except (MultiPartException, KeyError, ValueError) as e:
        raise HTTPException(400, f"not a readable upload form ({e})") from None
    file = form.get("file")
    if not isinstance(file, UploadFile):
        raise HTTPException(400, "send the image in a form field named file")
    return file


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.3g} MB"


class _Cache:
    """An LRU of rendered values bounded in bytes; one computation per key at a time (a second
    request for a picture being rendered waits for it instead of rendering it again)."""

    def __init__(self, max_bytes: int = 256 << 20):
        self.max_bytes, self.data, self.lock = max_bytes, OrderedDict(), threading.Lock()
        self.bytes = 0
        self.pending: dict = {}

    def get(self, key, make):
        with self.lock:
            if key in self.data:
                self.data.move_to_end(key)
                return self.data[key]
            gate = self.pending.setdefault(key, threading.Lock())
        with gate:
            with self.lock:
                if key in self.data:
                    return self.data[key]
            value = make()
            size = len(value) if isinstance(value, (bytes, bytearray)) else 1024
            with self.lock:
                self.data[key] = value
                self.bytes += size
                while self.bytes > self.max_bytes and len(self.data) > 1:
                    _, old = self.data.popitem(last=False)
                    self.bytes -= len(old) if isinstance(old, (bytes, bytearray)) else 1024
                self.pending.pop(key, None)
        return value


def _clean(obj):
    """JSON-safe: non-finite floats become null."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _png(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format=fmt, quality=88)
    return buf.getvalue()


class ViewerState:
    """What the routes share: the reader, lazily the model and images, caches, uploads."""

    def __init__(self, atlas: str | Path, device: str = "cpu", upload_limit: int = 8 << 20):
        self.path = Path(atlas).resolve()
        self.reader = AtlasReader(self.path)
        self.meta = self.reader.meta()
        self.device = device
        self.upload_limit = upload_limit
        self.uploads = Path(tempfile.mkdtemp(prefix="convscope-uploads-"))
        self.cache = _Cache()
        self._subject = self._source = self._images = None
        self._lock = threading.Lock()
        # One model, hooked by one Recorder at a time: on-demand work is serialised.
        self.compute = threading.Lock()

    def model_and_images(self):
        """The subject and image source the atlas was made from (loaded on first use)."""
        with self._lock:
            if self._subject is None or self._source is None:
                from convscope.viewer.store import reopen_from_meta

                self._subject, self._source = reopen_from_meta(self.meta, self._subject)
                self._subject.to(self.device)
            return self._subject, self._source

    def refresh(self) -> None:
        """After ``atlas.db`` was replaced (``scan --overwrite``): read its meta again and drop
        everything derived from the old one — rendered pictures, the image list, and the model
        when the new atlas is of another one."""
        if not self.reader.refresh() or not self.reader.available():
            return
        meta = self.reader.meta()
        with self._lock:
            if meta["model"] != self.meta["model"]:
                self._subject = None
            self._source = self._images = None
            self.meta = meta
            self.cache = _Cache(self.cache.max_bytes)

    def source_only(self):
        """The images without loading the model (opened once)."""
        if self._source is not None:
            return self._source
        with self._lock:
            if self._images is None:
                from convscope.inputs.sources import open_spec

                self._images = open_spec(self.meta["source"])
            return self._images

    def upload_path(self, token: str) -> Path:
        if len(token) != 32 or not all(c in "0123456789abcdef" for c in token):
            raise KeyError(token)
        p = self.uploads / f"{token}.png"
        if not p.exists():
            raise KeyError(token)
        return p


def create_app(
    atlas: str | Path,
    device: str = "cpu",
    upload_limit: int = 8 << 20,
    allowed_hosts: Sequence[str] | None = None,
):
    """The FastAPI application for ``atlas``. ``allowed_hosts``: the ``Host`` names it answers
    (default: this machine's loopback names, see :func:`default_hosts`; ``"*"``: any)."""
    st = ViewerState(atlas, device, upload_limit)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        shutil.rmtree(st.uploads, ignore_errors=True)  # uploads never outlive the server

    app = FastAPI(
        title="convscope viewer", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.viewer = st
    links = pages.Links()

    def error_response(request: Request, status: int, message: str, headers=None) -> Response:
        """JSON for the API, an HTML page (status kept) for everything else."""
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": message}, status_code=status, headers=headers)
        html = pages.error_page(status, message, st.meta, links)
        return HTMLResponse(html, status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error_response(request, exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if request.url.path.startswith("/api/"):
            return await request_validation_exception_handler(request, exc)
        first = errors[0] if errors else {}
        where = " ".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        return error_response(request, 422, f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(UserInputError)
    async def user_error(request: Request, exc: UserInputError):
        return error_response(request, 400, str(exc))

    @app.middleware("http")
    async def guard(request: Request, call_next):
        st.refresh()  # a replaced atlas.db (scan --overwrite) is reopened, caches dropped
        if not st.reader.available():
            return error_response(request, 503, "the atlas is being rewritten; reload in a moment")
        if request.method not in ("GET", "HEAD", "OPTIONS") and not _same_origin(request):
            return error_response(request, 403, "cross-origin request refused")
        # refuse bodies announced as oversized before reading them; chunked or lying ones are
        # counted as they are read (_read_body)
        size = request.headers.get("content-length", "")
        if size.isascii() and size.isdigit() and int(size) > st.upload_limit + MULTIPART_OVERHEAD:
            msg = f"images up to {_mb(st.upload_limit)}"
            return error_response(request, 413, msg, {"Connection": "close"})
        return await call_next(request)

    app.add_middleware(
        TrustedHostMiddleware,
        allowed_hosts=_host_patterns(default_hosts("127.0.0.1") if allowed_hosts is None else allowed_hosts),
    )
    app.add_middleware(_SecurityHeaders)

    def layer_or_404(name: str) -> dict:
        try:
            return st.reader.layer(name)
        except KeyError:
            raise HTTPException(404, f"no scanned layer {name!r}") from None

    def unit_or_404(layer: str, unit: int) -> dict:
        row = st.reader.unit(layer, _check_index(unit, "unit"))
        if row is None:
            raise HTTPException(404, f"{layer} has no unit {unit}")
        return row

    @app.get("/", response_class=HTMLResponse)
    def model():
        return pages.model_page(
            st.meta,
            st.reader.layers(),
            st.reader.dissection_summary(),
            st.reader.empirical_summary(),
            st.reader.n_images(),
            links,
        )

    def paging(page: int, per_page: int, sort: str) -> tuple[int, int]:
        if sort not in ("unit", "max", "iou", "label"):
            raise HTTPException(400, "sort must be unit, max, iou or label")
        if page > MAX_PAGE:
            raise HTTPException(400, f"page must be at most {MAX_PAGE}")
        return max(page, 0), min(max(per_page, 1), 500)

    @app.get("/layer/{layer}", response_class=HTMLResponse)
    def layer(layer: str, page: int = 0, sort: str = "unit", label: str | None = None, per_page: int = 100):
        info = layer_or_404(layer)
        page, per_page = paging(page, per_page, sort)
        units, total = st.reader.units(layer, page, per_page, sort, label)
        return pages.layer_page(st.meta, info, units, total, page, per_page, sort, label, links)

    def weight_neighbors(layer: str, unit: int) -> list[tuple[int, float]]:
        from convscope.viewer.weights import weight_neighbors as find

        try:
            subject, _ = st.model_and_images()
            return st.cache.get(("nn", layer, unit), lambda: find(subject, layer, unit))
        except Exception:  # a model that cannot be loaded again: the page shows without them
            return []

    @app.get("/unit/{layer}/{unit}", response_class=HTMLResponse)
    def unit(layer: str, unit: int, direction: bool = False):
        info = layer_or_404(layer)
        kind = "direction" if direction else "channel"
        row = st.reader.unit(layer, _check_index(unit, kind), kind)
        if row is None:
            raise HTTPException(404, f"{layer} has no {kind} {unit}")
        crits = st.reader.criteria(layer)
        tops = {c: st.reader.topk(layer, unit, c, kind) for c in crits}
        if direction:
            return pages.unit_page(st.meta, info, row, crits, tops, [], None, links, direction=True)
        return pages.unit_page(
            st.meta,
            info,
            row,
            crits,
            tops,
            st.reader.concepts(layer, unit),
            st.reader.empirical_rf(layer, unit),
            links,
            weight_neighbors(layer, unit),
        )

    def analyse(img: Image.Image) -> tuple[list[dict], list[dict]]:
        """Predictions and the units (of the scanned layers) most active relative to their
        dataset maximum, for one image."""
        subject, _ = st.model_and_images()
        with st.compute:
            return _analyse(subject, img)

    def _analyse(subject, img):
        import torch

        x = subject.load_images([img])
        preds = []
        if subject.num_outputs and subject.labels is not None:
            p = subject.predict(x, k=5)
            preds = [{"label": lab, "prob": float(pr)} for lab, pr in zip(p.names(0), p.probs[0])]
        names = [r["name"] for r in st.reader.layers()]
        with subject.record(names, stop=True) as rec, torch.inference_mode():
            subject(x)
        rows = []
        for n in names:
            a = rec[n].float()[0]
            peak = a.flatten(1).amax(1) if a.dim() == 3 else a
            maxima = np.array(
                [
                    r[0] or 1.0
                    for r in st.reader.con().execute(
                        "SELECT max FROM units WHERE layer = ? AND kind = 'channel' ORDER BY unit", (n,)
                    )
                ]
            )
            rel = peak.cpu().numpy() / np.maximum(np.abs(maxima[: len(peak)]), 1e-12)
            for u in np.argsort(-rel)[:8]:
                rows.append({"layer": n, "unit": int(u), "score": float(peak[u]), "relative": float(rel[u])})
        rows.sort(key=lambda r: -r["relative"])
        return preds, rows[:24]

    @app.get("/image/{idx}", response_class=HTMLResponse)
    def image(idx: int):
        row = st.reader.image(_check_index(idx, "image"))
        if row is None or row["status"] != "ok":
            raise HTTPException(404, f"no readable image {idx}")
        _, source = st.model_and_images()
        preds, units = analyse(source.read(idx))
        return pages.image_page(
            st.meta, row["name"], links.source_image(idx, 448), preds, f"/img/attr/image/{idx}", units, links
        )

    @app.post("/upload")
    async def upload(request: Request):
        # read and parsed in memory, never more than the limit: no spooling to disk
        body = await _read_body(request, st.upload_limit + MULTIPART_OVERHEAD)
        file = await _parse_upload(request, body)
        data = await file.read()
        if len(data) > st.upload_limit:
            raise HTTPException(413, f"images up to {_mb(st.upload_limit)}")
        try:
            with Image.open(io.BytesIO(data)) as probe:  # reads the header only
                fmt, (w, h) = probe.format, probe.size
                if fmt not in ALLOWED_FORMATS or w * h > MAX_PIXELS:
                    raise ValueError(fmt)
                probe.verify()
            from convscope.imageops import read_image

            img = read_image(data)
        except Exception:
            raise HTTPException(
                415, "not an image convscope can read (JPEG, PNG, WebP, BMP, GIF, TIFF)"
            ) from None
        token = uuid.uuid4().hex
        img.save(st.uploads / f"{token}.png")
        kept = sorted(st.uploads.glob("*.png"), key=lambda p: p.stat().st_mtime)
        for old in kept[:-MAX_UPLOADS]:  # the folder never grows past MAX_UPLOADS images
            old.unlink(missing_ok=True)
        return RedirectResponse(f"/upload/{token}", status_code=303)

    @app.get("/upload/{token}", response_class=HTMLResponse)
    def uploaded(token: str):
        try:
            path = st.upload_path(token)
        except KeyError:
            raise HTTPException(404, "no such upload") from None
        preds, units = analyse(Image.open(path).convert("RGB"))
        return pages.image_page(
            st.meta, "your image", f"/img/upload/{token}", preds, f"/img/attr/upload/{token}", units, links
        )

    # -- images -----------------------------------------------------------------------------
    def image_response(data: bytes, media: str = "image/png") -> Response:
        return Response(data, media_type=media, headers={"Cache-Control": "max-age=3600"})

    @app.get("/img/source/{idx}")
    def source_image(idx: int, size: int = 112):
        if st.reader.image(_check_index(idx, "image")) is None:
            raise HTTPException(404, "no such image")
        size = min((112, 224, 448, 1024), key=lambda s: abs(s - size))  # few sizes: bounded cache

        def make():
            img = st.source_only().read(idx)
            img.thumbnail((size, size))
            return _png(img, "JPEG")

        return image_response(st.cache.get(("src", idx, size), make), "image/jpeg")

    @app.get("/img/patch/{layer}/{unit}")
    def patch(layer: str, unit: int):
        layer_or_404(layer)
        top = st.reader.topk(layer, _check_index(unit, "unit"), "max")
        if not top:
            raise HTTPException(404, "no top images")

        def make():
            from convscope.render.topk import patch_from_original

            subject, source = st.model_and_images()
            with st.compute:
                info = subject.layer(layer)
            img = source.read(top[0]["image"])
            if info.rf is not None and not info.rf.is_global and info.is_map:
                img = patch_from_original(img, subject.preprocess, info.rf.box(top[0]["y"], top[0]["x"]))
            img.thumbnail((112, 112))
            return _png(img, "JPEG")

        return image_response(st.cache.get(("patch", layer, unit), make), "image/jpeg")

    @app.get("/img/topk/{layer}/{unit}/{criterion}")
    def topk(layer: str, unit: int, criterion: str, direction: bool = False):
        layer_or_404(layer)
        if criterion not in st.reader.criteria(layer):
            raise HTTPException(404, "no such criterion")
        kind = "direction" if direction else "channel"
        if st.reader.unit(layer, _check_index(unit, kind), kind) is None:
            raise HTTPException(404, "no such unit")

        def make():
            from convscope.scan.patches import render_topk

            subject, source = st.model_and_images()
            top = st.reader.unit_topk(layer, unit, criterion, direction)
            vec = st.reader.direction_vector(layer, unit) if direction else None
            with st.compute:
                return _png(render_topk(subject, source, top, direction=vec, cell=96))

        return image_response(st.cache.get(("topk", layer, unit, criterion, direction), make))

    @app.get("/img/fv/{layer}/{unit}")
    def feature_visualization(layer: str, unit: int):
        layer_or_404(layer)
        unit_or_404(layer, unit)

        def make():
            from convscope.synthesis import visualize_units

            subject, _ = st.model_and_images()
            with st.compute:
                result = visualize_units(subject, layer, [unit], steps=64, size=128, seed=0)
            return _png(result.to_image())

        return image_response(st.cache.get(("fv", layer, unit), make))

    @app.get("/img/rf/{layer}/{unit}")
    def rf(layer: str, unit: int):
        r = st.reader.empirical_rf(layer, _check_index(unit, "unit"))
        if r is None:
            raise HTTPException(404, "no empirical receptive field")
        from convscope.render.topk import heat_overlay

        avg = r["average"] / max(float(r["average"].max()), 1e-12)
        grey = np.full((*avg.shape, 3), 128, np.uint8)
        return image_response(_png(heat_overlay(grey, avg, alpha=1.0).resize((160, 160), Image.NEAREST)))

    @app.get("/img/upload/{token}")
    def upload_image(token: str):
        try:
            return image_response(st.upload_path(token).read_bytes())
        except KeyError:
            raise HTTPException(404, "no such upload") from None

    @app.get("/img/attr/{kind}/{ident}")
    def attribution(kind: str, ident: str):
        # ASCII digits only: int() also reads other scripts' digits, and "²".isdigit() is True
        number = ident.isascii() and ident.isdigit() and int(ident) <= MAX_INDEX
        if kind == "image" and number and st.reader.image(int(ident)):

            def read():
                return st.model_and_images()[1].read(int(ident))
        elif kind == "upload":
            try:
                path = st.upload_path(ident)
            except KeyError:
                raise HTTPException(404, "no such upload") from None

            def read():
                return Image.open(path).convert("RGB")
        else:
            raise HTTPException(404, "no such image")

        def make():
            from convscope.attribution import explain

            subject, _ = st.model_and_images()
            img = read()
            with st.compute:
                return _png(explain(subject, [img], "gradcam", target="top").to_image(0))

        return image_response(st.cache.get(("attr", kind, ident), make))

    @app.get("/files/{path:path}")
    def files(path: str):
        try:  # a NUL byte or an over-long name is no file either
            target = (st.path / path).resolve()
            found = target.is_relative_to(st.path) and target.is_file()
        except (ValueError, OSError):
            found = False
        if not found or is_private_file(target.name):
            raise HTTPException(404, "not found")
        media = {
            ".png": "image/png",
            ".jpg": "image/jpeg",
            ".json": "application/json",
            ".csv": "text/csv",
            ".gif": "image/gif",
        }.get(target.suffix.lower(), "application/octet-stream")
        return Response(target.read_bytes(), media_type=media)

    # -- JSON -------------------------------------------------------------------------------
    @app.get("/api/layers")
    def api_layers():
        return _clean({"meta": st.meta, "layers": st.reader.layers(), "images": st.reader.n_images()})

    @app.get("/api/layer/{layer}")
    def api_layer(
        layer: str, page: int = 0, sort: str = "unit", label: str | None = None, per_page: int = 100
    ):
        layer_or_404(layer)
        page, per_page = paging(page, per_page, sort)
        units, total = st.reader.units(layer, page, per_page, sort, label)
        return _clean({"total": total, "units": units})

    @app.get("/api/unit/{layer}/{unit}")
    def api_unit(layer: str, unit: int):
        layer_or_404(layer)
        row = unit_or_404(layer, unit)
        return _clean(
            {
                "unit": row,
                "topk": {c: st.reader.topk(layer, unit, c) for c in st.reader.criteria(layer)},
                "concepts": st.reader.concepts(layer, unit),
            }
        )

    return app
