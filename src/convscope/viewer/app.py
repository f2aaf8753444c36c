"""``convscope serve``: a FastAPI app over one atlas — model, layer, unit and image pages, with
thumbnails, top-K grids, predictions and Grad-CAM computed on demand and cached in memory.

This module holds the routes only: each handler parses its request, calls a query of the
atlas reader or a function of :mod:`~convscope.viewer.analysis` / :mod:`~convscope.viewer.pictures`,
and returns HTML, JSON or a picture. What they share is a :class:`~convscope.viewer.state.ViewerState`;
the defences are in :mod:`~convscope.viewer.security`.

Security: the database is opened read-only; files are served only from inside the atlas folder
(anything resolving outside is a 404); uploads are size- and type-checked, decoded, re-encoded
as PNG into a private temporary folder and never written anywhere else; request bodies are
counted as they are read (chunked ones too) and refused past the limit; only the configured
host names are answered (DNS rebinding), cross-origin POSTs are refused, and every response
carries a content security policy that forbids framing and scripts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from convscope.atlas import is_private_file
from convscope.atlas.queries import SORTS
from convscope.errors import NameNotFoundError, UserInputError, close_matches
from convscope.viewer import activation_atlas as aa
from convscope.viewer import pages
from convscope.viewer.analysis import analyse_image
from convscope.viewer.concepts import concept_cells, concept_view
from convscope.viewer.evaluations import FILE_KINDS, evaluation_page, evaluation_view, evaluations_page
from convscope.viewer.pictures import concept_topk, encode, rf_picture, thumbnail, unit_patch
from convscope.viewer.pictures import opaque as opaque_png
from convscope.viewer.search import search_page
from convscope.viewer.security import (
    SecurityHeaders,
    announced_too_large,
    decode_upload,
    default_hosts,
    host_patterns,
    parse_upload,
    read_body,
    same_origin,
    too_large,
)
from convscope.viewer.state import ViewerState

__all__ = ["create_app", "default_hosts", "serve"]

MAX_INDEX = 2**63 - 1  # SQLite integers: a unit or image number past this cannot exist
MAX_PAGE = 2**31
SOURCE_SIZES = (112, 224, 448, 1024)  # px: few sizes of a source image, so the cache stays bounded
MEDIA = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".json": "application/json",
    ".csv": "text/csv",
    ".gif": "image/gif",
}

ErrorResponse = Callable[..., Response]


def create_app(
    atlas: str | Path,
    device: str = "cpu",
    upload_limit: int = 8 << 20,
    allowed_hosts: Sequence[str] | None = None,
) -> FastAPI:
    """The FastAPI application for ``atlas``. ``allowed_hosts``: the ``Host`` names it answers
    (default: this machine's loopback names, see :func:`default_hosts`; ``"*"``: any)."""
    st = ViewerState(atlas, device, upload_limit)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        st.close()  # uploads never outlive the server

    app = FastAPI(
        title="convscope viewer", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.viewer = st
    links = pages.Links()
    error = error_responder(st, links)
    add_error_handlers(app, error)
    add_middleware(app, st, error, default_hosts("127.0.0.1") if allowed_hosts is None else allowed_hosts)
    for router in (page_routes(st, links), analysis_routes(st, links), image_routes(st), api_routes(st)):
        app.include_router(router)
    return app


def serve(
    atlas: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    upload_limit: int = 8 << 20,
    device: str = "cpu",
    allow_hosts: Sequence[str] = (),
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve ``atlas`` on ``host:port`` until interrupted, answering this machine's names, the
    ``host`` address and ``allow_hosts``; ``ready(url)`` is called once the app is built."""
    try:
        import uvicorn
    except ImportError:
        raise UserInputError("the viewer needs the web extra: pip install 'convscope[web]'") from None
    hosts = default_hosts(host) + list(allow_hosts)
    app = create_app(atlas, device=device, upload_limit=upload_limit, allowed_hosts=hosts)
    if ready is not None:
        ready(f"http://{host}:{port}/")
    uvicorn.run(app, host=host, port=port, log_level="warning")


# -- errors and middleware --------------------------------------------------------------------
def error_responder(st: ViewerState, links: pages.Links) -> ErrorResponse:
    """``respond(request, status, message, headers=None)``: JSON for the API, an HTML page
    (status kept) for everything else."""

    def respond(request: Request, status: int, message: str, headers=None) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": message}, status_code=status, headers=headers)
        html = pages.error_page(status, message, st.meta, links)
        return HTMLResponse(html, status_code=status, headers=headers)

    return respond


def add_error_handlers(app: FastAPI, error: ErrorResponse) -> None:
    """HTTP errors, bad parameters (422) and user errors (400; an unknown name: 404) as one-line
    messages in the page or JSON."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error(request, exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if request.url.path.startswith("/api/"):
            return await request_validation_exception_handler(request, exc)
        first = errors[0] if errors else {}
        where = " ".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        return error(request, 422, f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(NameNotFoundError)
    async def unknown_name(request: Request, exc: NameNotFoundError):
        return error(request, 404, str(exc))

    @app.exception_handler(UserInputError)
    async def user_error(request: Request, exc: UserInputError):
        return error(request, 400, str(exc))


def add_middleware(app: FastAPI, st: ViewerState, error: ErrorResponse, allowed_hosts: Sequence[str]) -> None:
    """Outermost first: security headers on every response, only ``allowed_hosts`` answered,
    then per request: a replaced atlas reopened (503 while it is missing), cross-origin
    state-changing requests refused (403), bodies announced past the upload limit refused (413)."""

    @app.middleware("http")
    async def guard(request: Request, call_next):
        st.refresh()  # a replaced atlas database (scan --overwrite) is reopened, caches dropped
        if not st.reader.available():
            return error(request, 503, "the atlas is being rewritten; reload in a moment")
        if request.method not in ("GET", "HEAD", "OPTIONS") and not same_origin(request):
            return error(request, 403, "cross-origin request refused")
        if announced_too_large(request, st.upload_limit):
            return error(request, 413, too_large(st.upload_limit), {"Connection": "close"})
        return await call_next(request)

    app.add_middleware(TrustedHostMiddleware, allowed_hosts=host_patterns(allowed_hosts))
    app.add_middleware(SecurityHeaders)


# -- request checks ---------------------------------------------------------------------------
def _check_index(value: int, what: str) -> int:
    """A unit or image number that can exist (larger ones would overflow SQLite: a 404)."""
    if not 0 <= value <= MAX_INDEX:
        raise HTTPException(404, f"no {what} {value}")
    return value


def _layer_or_404(st: ViewerState, name: str) -> dict:
    try:
        return st.reader.layer(name)
    except KeyError:  # NameNotFoundError too
        close = close_matches(name, [r["name"] for r in st.reader.layers()])
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise HTTPException(404, f"no scanned layer {name!r}{hint}") from None


def _unit_or_404(st: ViewerState, layer: str, unit: int, kind: str = "channel", what: str = "unit") -> dict:
    """The stored statistics of a unit (``kind="direction"``: of a random direction)."""
    row = st.reader.unit(layer, _check_index(unit, what), kind)
    if row is None:
        raise HTTPException(404, f"{layer} has no {what} {unit}")
    return row


def _paging(page: int, per_page: int, sort: str) -> tuple[int, int]:
    if sort not in SORTS:
        raise HTTPException(400, "sort must be unit, max, iou or label")
    if page > MAX_PAGE:
        raise HTTPException(400, f"page must be at most {MAX_PAGE}")
    return max(page, 0), min(max(per_page, 1), 500)


def _clean(obj):
    """JSON-safe: non-finite floats become null."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _picture(data: bytes, media: str = "image/png") -> Response:
    return Response(data, media_type=media, headers={"Cache-Control": "max-age=3600"})


def _concept_or_404(st: ViewerState, name: str, concept: int) -> dict:
    """The summary of dictionary ``name`` when it has ``concept`` (unknown names: 404 with the
    close ones, through NameNotFoundError)."""
    info = st.reader.dictionary(name)
    if not 0 <= concept < info["n"]:
        raise HTTPException(404, f"concept set {name!r} has no concept {concept} (0..{info['n'] - 1})")
    return info


def _live(st: ViewerState) -> bool:
    """Whether the viewer has (or can load) the atlas's model and images, for pictures that
    need them; a model that cannot be loaded again leaves them out."""
    try:
        st.model_and_images()
    except Exception:
        return False
    return True


def _upload_or_404(st: ViewerState, token: str) -> Path:
    try:
        return st.upload_path(token)
    except KeyError:
        raise HTTPException(404, "no such upload") from None


def _weight_neighbors(st: ViewerState, layer: str, unit: int) -> list[tuple[int, float]]:
    from convscope.viewer.weights import weight_neighbors

    try:
        subject, _ = st.model_and_images()
        return st.cache.get(("nn", layer, unit), lambda: weight_neighbors(subject, layer, unit))
    except Exception:  # a model that cannot be loaded again: the page shows without them
        return []


# -- routes -----------------------------------------------------------------------------------
def page_routes(st: ViewerState, links: pages.Links) -> APIRouter:
    """The model, layer and unit pages."""
    r = APIRouter()

    @r.get("/", response_class=HTMLResponse)
    def model():
        return pages.model_page(
            st.meta,
            st.reader.layers(),
            st.reader.dissection_summary(),
            st.reader.empirical_summary(),
            st.reader.n_images(),
            links,
            st.reader.dictionaries(),
            st.reader.evaluations(),
        )

    @r.get("/layer/{layer}", response_class=HTMLResponse)
    def layer(layer: str, page: int = 0, sort: str = "unit", label: str | None = None, per_page: int = 100):
        info = _layer_or_404(st, layer)
        layer = info["name"]  # an alias (conv5) shows the scanned layer
        page, per_page = _paging(page, per_page, sort)
        units, total = st.reader.units(layer, page, per_page, sort, label)
        visuals = st.reader.visual_objectives(layer)  # stored feature visualisations: {} when none
        stored = {a["layer"] for a in st.reader.activation_atlases()}
        atlas_link = aa.page_url(links, layer) if layer in stored else None
        return pages.layer_page(
            st.meta, info, units, total, page, per_page, sort, label, links, visuals,
            activation_atlas=atlas_link,
        )  # fmt: skip

    @r.get("/unit/{layer}/{unit}", response_class=HTMLResponse)
    def unit(layer: str, unit: int, direction: bool = False):
        info = _layer_or_404(st, layer)
        layer = info["name"]  # an alias (conv5) shows the scanned layer
        kind = "direction" if direction else "channel"
        row = _unit_or_404(st, layer, unit, kind, what=kind)
        crits = st.reader.criteria(layer)
        tops = {c: st.reader.topk(layer, unit, c, kind) for c in crits}
        if direction:
            return pages.unit_page(st.meta, info, row, crits, tops, [], None, links, direction=True)
        concepts, rf = st.reader.concepts(layer, unit), st.reader.empirical_rf(layer, unit)
        neighbors = _weight_neighbors(st, layer, unit)
        visuals = st.reader.visual_rows(layer, unit)
        return pages.unit_page(
            st.meta, info, row, crits, tops, concepts, rf, links, neighbors, visuals=visuals
        )

    @r.get("/activation-atlas/{layer}", response_class=HTMLResponse)
    def activation_atlas(layer: str):
        summary = st.reader.activation_atlas(layer)  # none stored: a 404 with close names
        cells = st.reader.activation_atlas_cells(layer)
        try:
            back = links.layer(_layer_or_404(st, layer)["name"])
        except HTTPException:  # an atlas without a scan of that layer
            back = None
        patches = aa.same_images(st.reader, layer)
        return aa.activation_atlas_page(st.meta, summary, cells, links, patches, back)

    @r.get("/concepts", response_class=HTMLResponse)
    def dictionaries():
        return pages.dictionaries_page(st.meta, st.reader.dictionaries(), links)

    @r.get("/concepts/{name}", response_class=HTMLResponse)
    def dictionary(name: str):
        info = st.reader.dictionary(name)  # unknown: NameNotFoundError, a 404 with close names
        return pages.dictionary_page(st.meta, info, concept_cells(st.reader, info), links)

    @r.get("/concepts/{name}/{concept}", response_class=HTMLResponse)
    def concept(name: str, concept: int):
        info = _concept_or_404(st, name, concept)
        v = concept_view(st.reader, name, concept)
        # the grid reads the hits from the atlas's images and needs the model: only then shown
        live = v["atlas_hits"] and _live(st)
        return pages.concept_page(
            st.meta,
            info,
            concept,
            v["stats"],
            v["label"],
            v["importance"],
            v["tops"],
            links,
            picture=v["picture"],
            live=live,
        )

    @r.get("/search", response_class=HTMLResponse)
    def search(q: str | None = None, page: int = 0):
        if page > MAX_PAGE:
            raise HTTPException(400, f"page must be at most {MAX_PAGE}")
        return search_page(st.reader, st.meta, q, page, links)

    @r.get("/evaluations", response_class=HTMLResponse)
    def evaluations():
        return evaluations_page(st.meta, st.reader.evaluations(), links)

    @r.get("/evaluations/{name}", response_class=HTMLResponse)
    def evaluation(name: str):
        info, report, files = evaluation_view(st.reader, name)  # unknown: a 404 with close names
        return evaluation_page(st.meta, info, report, files, links)

    @r.get("/evaluations/{name}/files/{kind}")
    def evaluation_file(name: str, kind: str):
        if kind not in FILE_KINDS:
            raise HTTPException(404, "no such file")
        path = st.reader.evaluation_file(name, kind)  # a symlink or a missing file: None
        if path is None:
            raise HTTPException(404, f"the evaluation {name!r} has no stored {kind} file")
        media = MEDIA.get(path.suffix.lower(), "application/octet-stream")
        return Response(path.read_bytes(), media_type=media)

    return r


def analysis_routes(st: ViewerState, links: pages.Links) -> APIRouter:
    """Image pages (a scanned image or an upload): predictions, the most active units, Grad-CAM."""
    r = APIRouter()

    def analyse(img: Image.Image):
        subject, _ = st.model_and_images()
        with st.compute:
            return analyse_image(subject, img, st.reader)

    @r.get("/image/{idx}", response_class=HTMLResponse)
    def image(idx: int):
        row = st.reader.image(_check_index(idx, "image"))
        if row is None or row["status"] != "ok":
            raise HTTPException(404, f"no readable image {idx}")
        _, source = st.model_and_images()
        found = analyse(source.read(idx))
        big, attr = links.source_image(idx, 448), f"/img/attr/image/{idx}"
        concepts = st.reader.image_concepts(idx)
        return pages.image_page(
            st.meta, row["name"], big, found.predictions, attr, found.units, links, concepts
        )

    @r.post("/upload")
    async def upload(request: Request):
        # read and parsed in memory, never more than the limit: no spooling to disk
        body = await read_body(request, st.upload_limit)
        file = await parse_upload(request, body)
        token = st.save_upload(decode_upload(await file.read(), st.upload_limit))
        return RedirectResponse(f"/upload/{token}", status_code=303)

    @r.get("/upload/{token}", response_class=HTMLResponse)
    def uploaded(token: str):
        found = analyse(Image.open(_upload_or_404(st, token)).convert("RGB"))
        shown, attr = f"/img/upload/{token}", f"/img/attr/upload/{token}"
        return pages.image_page(st.meta, "your image", shown, found.predictions, attr, found.units, links)

    @r.get("/img/attr/{kind}/{ident}")
    def attribution(kind: str, ident: str):
        # ASCII digits only: int() also reads other scripts' digits, and "²".isdigit() is True
        number = ident.isascii() and ident.isdigit() and int(ident) <= MAX_INDEX
        if kind == "image" and number and st.reader.image(int(ident)):

            def read():
                return st.model_and_images()[1].read(int(ident))
        elif kind == "upload":
            path = _upload_or_404(st, ident)

            def read():
                return Image.open(path).convert("RGB")
        else:
            raise HTTPException(404, "no such image")

        def make():
            from convscope.attribution import explain

            subject, _ = st.model_and_images()
            img = read()
            with st.compute:
                return encode(explain(subject, [img], "gradcam", target="top").to_image(0))

        return _picture(st.cache.get(("attr", kind, ident), make))

    return r


def image_routes(st: ViewerState) -> APIRouter:
    """Pictures (source thumbnails, patches, top-K grids, feature visualisations, receptive
    fields, uploads) and the files of the atlas folder."""
    r = APIRouter()

    @r.get("/img/source/{idx}")
    def source_image(idx: int, size: int = 112):
        if st.reader.image(_check_index(idx, "image")) is None:
            raise HTTPException(404, "no such image")
        size = min(SOURCE_SIZES, key=lambda s: abs(s - size))
        data = st.cache.get(("src", idx, size), lambda: thumbnail(st.source_only().read(idx), size))
        return _picture(data, "image/jpeg")

    @r.get("/img/patch/{layer}/{unit}")
    def patch(layer: str, unit: int):
        layer = _layer_or_404(st, layer)["name"]
        top = st.reader.topk(layer, _check_index(unit, "unit"), "max")
        if not top:
            raise HTTPException(404, "no top images")

        def make():
            subject, source = st.model_and_images()
            with st.compute:
                info = subject.layer(layer)
            return unit_patch(subject, source, info, top[0])

        return _picture(st.cache.get(("patch", layer, unit), make), "image/jpeg")

    @r.get("/img/topk/{layer}/{unit}/{criterion}")
    def topk(layer: str, unit: int, criterion: str, direction: bool = False):
        layer = _layer_or_404(st, layer)["name"]
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
                return encode(render_topk(subject, source, top, direction=vec, cell=96))

        return _picture(st.cache.get(("topk", layer, unit, criterion, direction), make))

    @r.get("/img/visual/{layer}/{unit}/{kind}/{index}")
    def stored_visual(layer: str, unit: int, kind: str, index: int, opaque: bool = False):
        layer = _layer_or_404(st, layer)["name"]
        path = st.reader.visual_tile(layer, _check_index(unit, "unit"), kind, _check_index(index, "image"))
        if path is None:  # also an unknown kind, a symlink or a tile of an unfinished batch
            raise HTTPException(404, "no stored feature visualisation")
        return _picture(opaque_png(path.read_bytes()) if opaque else path.read_bytes())

    @r.get("/img/fv/{layer}/{unit}")
    def feature_visualization(layer: str, unit: int):
        layer = _layer_or_404(st, layer)["name"]
        _unit_or_404(st, layer, unit)
        if st.reader.visual_layers():  # an atlas with stored visuals never optimises on request
            path = st.reader.visual_tile(layer, unit, "positive", 0)
            if path is None:
                raise HTTPException(404, "no stored feature visualisation of this unit")
            return _picture(path.read_bytes())

        def make():
            from convscope.synthesis import visualize_units

            subject, _ = st.model_and_images()
            with st.compute:
                result = visualize_units(subject, layer, [unit], steps=64, size=128, seed=0)
            return encode(result.to_image())

        return _picture(st.cache.get(("fv", layer, unit), make))

    @r.get("/img/concept/picture/{name}/{concept}")
    def concept_picture(name: str, concept: int):
        _concept_or_404(st, name, concept)
        path = st.reader.dictionary_picture(name, concept)
        if path is None:
            raise HTTPException(404, "no picture stored for this concept")
        return _picture(path.read_bytes())

    @r.get("/img/concept/topk/{name}/{concept}/{criterion}")
    def concept_topk_grid(name: str, concept: int, criterion: str):
        _concept_or_404(st, name, concept)
        scanned = st.reader.dictionary_scan(name)
        if scanned is None or criterion not in scanned["criteria"]:
            raise HTTPException(404, "no such criterion")
        rows = st.reader.dictionary_topk(name, concept, criterion)
        if not rows or any(r["atlas_image"] is None for r in rows):
            raise HTTPException(404, "the concept's top images are not the atlas's images")
        if not _live(st):
            raise HTTPException(404, "the viewer cannot load the atlas's model for heat maps")

        def make():
            subject, source = st.model_and_images()
            cs = st.cache.get(("dictionary", name), lambda: st.reader.dictionary_set(name))
            top = st.reader.dictionary_unit_topk(name, concept, criterion)
            with st.compute:
                return encode(concept_topk(subject, source, cs, top))

        return _picture(st.cache.get(("concept-topk", name, concept, criterion), make))

    @r.get("/img/activation-atlas/{layer}/tile/{cell}")
    def activation_atlas_tile(layer: str, cell: int):
        path = st.reader.activation_atlas_file(layer, "tile", _check_index(cell, "cell"))
        if path is None:
            raise HTTPException(404, "no such tile")
        return _picture(path.read_bytes())

    @r.get("/img/activation-atlas/{layer}/patch/{cell}/{k}")
    def activation_atlas_patch(layer: str, cell: int, k: int):
        cells = st.reader.activation_atlas_cells(layer)
        cell, k = _check_index(cell, "cell"), _check_index(k, "patch")
        if cell >= len(cells) or k >= len(cells[cell]["typical"]) or not aa.same_images(st.reader, layer):
            raise HTTPException(404, "no such patch")
        where = cells[cell]["typical"][k]

        def make():
            subject, source = st.model_and_images()
            with st.compute:
                info = subject.layer(layer)
            return aa.cell_patch(subject, source, info, where)

        return _picture(st.cache.get(("aa-patch", layer, cell, k), make), "image/jpeg")

    @r.get("/img/rf/{layer}/{unit}")
    def rf(layer: str, unit: int):
        row = st.reader.empirical_rf(layer, _check_index(unit, "unit"))
        if row is None:
            raise HTTPException(404, "no empirical receptive field")
        return _picture(encode(rf_picture(row)))

    @r.get("/img/upload/{token}")
    def upload_image(token: str):
        return _picture(_upload_or_404(st, token).read_bytes())

    @r.get("/files/{path:path}")
    def files(path: str):
        try:  # a NUL byte or an over-long name is no file either
            target = (st.path / path).resolve()
            found = target.is_relative_to(st.path) and target.is_file()
        except (ValueError, OSError):
            found = False
        if not found or is_private_file(target.name):
            raise HTTPException(404, "not found")
        return Response(
            target.read_bytes(), media_type=MEDIA.get(target.suffix.lower(), "application/octet-stream")
        )

    return r


def api_routes(st: ViewerState) -> APIRouter:
    """JSON: the layers, a page of a layer's units, one unit with its top-K and concepts."""
    r = APIRouter(prefix="/api")

    @r.get("/layers")
    def api_layers():
        return _clean({"meta": st.meta, "layers": st.reader.layers(), "images": st.reader.n_images()})

    @r.get("/layer/{layer}")
    def api_layer(
        layer: str, page: int = 0, sort: str = "unit", label: str | None = None, per_page: int = 100
    ):
        layer = _layer_or_404(st, layer)["name"]
        page, per_page = _paging(page, per_page, sort)
        units, total = st.reader.units(layer, page, per_page, sort, label)
        return _clean({"total": total, "units": units})

    @r.get("/unit/{layer}/{unit}")
    def api_unit(layer: str, unit: int):
        layer = _layer_or_404(st, layer)["name"]
        row = _unit_or_404(st, layer, unit)
        topk = {c: st.reader.topk(layer, unit, c) for c in st.reader.criteria(layer)}
        return _clean({"unit": row, "topk": topk, "concepts": st.reader.concepts(layer, unit)})

    @r.get("/evaluations")
    def api_evaluations():
        return _clean({"evaluations": st.reader.evaluations()})

    @r.get("/evaluations/{name}")
    def api_evaluation(name: str):
        info, report, _ = evaluation_view(st.reader, name)
        return _clean({"evaluation": info, "report": report})

    @r.get("/concepts")
    def api_dictionaries():
        return _clean({"dictionaries": st.reader.dictionaries()})

    @r.get("/concepts/{name}/{concept}")
    def api_concept(name: str, concept: int):
        info = _concept_or_404(st, name, concept)
        scanned = st.reader.dictionary_scan(name)
        topk = {c: st.reader.dictionary_topk(name, concept, c) for c in (scanned or {}).get("criteria", [])}
        labels = [lab for lab in st.reader.dictionary_labels(name) if lab["concept"] == concept]
        imp = st.reader.dictionary_importance(name)
        importance = (
            None
            if imp is None
            else {
                "method": imp["method"],
                "classes": imp["classes"],
                "values": imp["matrix"][:, concept].tolist(),
            }
        )
        return _clean(
            {
                "dictionary": info,
                "concept": concept,
                "topk": topk,
                "label": labels[0] if labels else None,
                "importance": importance,
            }
        )

    return r
