"""``convscope serve``: a FastAPI app over one atlas — model, layer, unit and image pages, with
thumbnails, top-K grids, predictions and Grad-CAM computed on demand and cached in memory.

Security: the database is opened read-only; files are served only from inside the atlas folder
(anything resolving outside is a 404); uploads are size- and type-checked, decoded, re-encoded
as PNG into a private temporary folder and never written anywhere else.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from pathlib import Path

import numpy as np
from fastapi import FastAPI, HTTPException, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from PIL import Image

from convscope.viewer import pages
from convscope.viewer.store import AtlasReader

ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"}
MAX_PIXELS = 40_000_000  # checked from the header, before decoding
MAX_UPLOADS = 200  # uploads kept in the private temporary folder (oldest removed first)


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
            if self._subject is None:
                from convscope.viewer.store import reopen_from_meta

                self._subject, self._source = reopen_from_meta(self.meta)
                self._subject.to(self.device)
            return self._subject, self._source

    def source_only(self):
        """The images without loading the model (opened once)."""
        if self._source is not None:
            return self._source
        with self._lock:
            if self._images is None:
                from convscope.data import open_spec

                self._images = open_spec(self.meta["source"])
            return self._images

    def upload_path(self, token: str) -> Path:
        if len(token) != 32 or not all(c in "0123456789abcdef" for c in token):
            raise KeyError(token)
        p = self.uploads / f"{token}.png"
        if not p.exists():
            raise KeyError(token)
        return p


def create_app(atlas: str | Path, device: str = "cpu", upload_limit: int = 8 << 20):
    """The FastAPI application for ``atlas``."""
    st = ViewerState(atlas, device, upload_limit)
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        shutil.rmtree(st.uploads, ignore_errors=True)  # uploads never outlive the server

    app = FastAPI(title="convscope viewer", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.viewer = st

    @app.middleware("http")
    async def limit_body(request, call_next):
        # refuse oversized bodies before they are read (multipart overhead allowed for)
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > st.upload_limit + (64 << 10):
            return Response(f"images up to {st.upload_limit >> 20} MB", status_code=413)
        return await call_next(request)

    links = pages.Links()

    def layer_or_404(name: str) -> dict:
        try:
            return st.reader.layer(name)
        except KeyError:
            raise HTTPException(404, f"no scanned layer {name!r}") from None

    def unit_or_404(layer: str, unit: int) -> dict:
        row = st.reader.unit(layer, unit)
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

    @app.get("/layer/{layer}", response_class=HTMLResponse)
    def layer(layer: str, page: int = 0, sort: str = "unit", label: str | None = None, per_page: int = 100):
        info = layer_or_404(layer)
        if sort not in ("unit", "max", "iou", "label"):
            raise HTTPException(400, "sort must be unit, max, iou or label")
        per_page = min(max(per_page, 1), 500)
        units, total = st.reader.units(layer, max(page, 0), per_page, sort, label)
        return pages.layer_page(st.meta, info, units, total, max(page, 0), per_page, sort, label, links)

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
        row = st.reader.unit(layer, unit, kind)
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
        row = st.reader.image(idx)
        if row is None or row["status"] != "ok":
            raise HTTPException(404, f"no readable image {idx}")
        _, source = st.model_and_images()
        preds, units = analyse(source.read(idx))
        return pages.image_page(
            st.meta, row["name"], links.source_image(idx, 448), preds, f"/img/attr/image/{idx}", units, links
        )

    @app.post("/upload")
    async def upload(file: UploadFile):
        data = await file.read(st.upload_limit + 1)
        if len(data) > st.upload_limit:
            raise HTTPException(413, f"images up to {st.upload_limit >> 20} MB")
        try:
            with Image.open(io.BytesIO(data)) as probe:  # reads the header only
                fmt, (w, h) = probe.format, probe.size
                if fmt not in ALLOWED_FORMATS or w * h > MAX_PIXELS:
                    raise ValueError(fmt)
                probe.verify()
            from convscope.data import read_image

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
        if st.reader.image(idx) is None:
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
        top = st.reader.topk(layer, unit, "max")
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
        if st.reader.unit(layer, unit, "direction" if direction else "channel") is None:
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
        r = st.reader.empirical_rf(layer, unit)
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
        if kind == "image" and ident.isdigit() and st.reader.image(int(ident)):

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
        target = (st.path / path).resolve()
        if not target.is_relative_to(st.path) or not target.is_file() or target.name.startswith("atlas.db"):
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
        units, total = st.reader.units(layer, max(page, 0), min(max(per_page, 1), 500), sort, label)
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
