"""What the viewer's routes share: the atlas's read-only reader, the model and images it was made
from (loaded on first use), the picture cache and the private folder of uploads."""

from __future__ import annotations

import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from pathlib import Path

from PIL import Image

from convscope.atlas.queries import AtlasReader

MAX_UPLOADS = 200  # uploads kept in the private temporary folder (oldest removed first)


def open_reader(atlas: str | Path) -> AtlasReader:
    """The read-only query reader of ``atlas`` (a one-line error when it is not one)."""
    return AtlasReader(atlas)


def reopen_atlas(reader: AtlasReader, subject=None):
    """The (subject, image source) an atlas was made from, from its stored specs (``subject``:
    one already loaded, whose images are opened again)."""
    return reader.reopen(subject)


class Cache:
    """An LRU of rendered values bounded in bytes; one computation per key at a time (a second
    request for a picture being rendered waits for it instead of rendering it again)."""

    def __init__(self, max_bytes: int = 256 << 20):
        self.max_bytes, self.data, self.lock = max_bytes, OrderedDict(), threading.Lock()
        self.bytes = 0
        self.pending: dict = {}

    def get(self, key, make):
        """The value cached under ``key``, made by ``make()`` on a miss."""
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


class ViewerState:
    """What the routes share: the reader, lazily the model and images, caches, uploads."""

    def __init__(self, atlas: str | Path, device: str = "cpu", upload_limit: int = 8 << 20):
        self.path = Path(atlas).resolve()
        self.reader = open_reader(self.path)
        self.meta = self.reader.meta()
        self.device = device
        self.upload_limit = upload_limit
        self.uploads = Path(tempfile.mkdtemp(prefix="convscope-uploads-"))
        self.cache = Cache()
        self._subject = self._source = self._images = None
        self._lock = threading.Lock()
        # One model, hooked by one Recorder at a time: on-demand work is serialised.
        self.compute = threading.Lock()

    def model_and_images(self):
        """The subject and image source the atlas was made from (loaded on first use)."""
        with self._lock:
            if self._subject is None or self._source is None:
                self._subject, self._source = reopen_atlas(self.reader, self._subject)
                self._subject.to(self.device)
            return self._subject, self._source

    def refresh(self) -> None:
        """After the atlas database was replaced (``scan --overwrite``): read its meta again and
        drop everything derived from the old one — rendered pictures, the image list, and the
        model when the new atlas is of another one."""
        if not self.reader.refresh() or not self.reader.available():
            return
        meta = self.reader.meta()
        with self._lock:
            if meta["model"] != self.meta["model"]:
                self._subject = None
            self._source = self._images = None
            self.meta = meta
            self.cache = Cache(self.cache.max_bytes)

    def source_only(self):
        """The images without loading the model (opened once)."""
        if self._source is not None:
            return self._source
        with self._lock:
            if self._images is None:
                from convscope.inputs.sources import open_spec

                self._images = open_spec(self.meta["source"])
            return self._images

    def save_upload(self, img: Image.Image) -> str:
        """Keep an uploaded image (PNG in the private folder, at most :data:`MAX_UPLOADS`, the
        oldest removed first); returns its token."""
        token = uuid.uuid4().hex
        img.save(self.uploads / f"{token}.png")
        kept = sorted(self.uploads.glob("*.png"), key=lambda p: p.stat().st_mtime)
        for old in kept[:-MAX_UPLOADS]:  # the folder never grows past MAX_UPLOADS images
            old.unlink(missing_ok=True)
        return token

    def upload_path(self, token: str) -> Path:
        """The file of an upload; KeyError for a token that is not one (or no longer kept)."""
        if len(token) != 32 or not all(c in "0123456789abcdef" for c in token):
            raise KeyError(token)
        p = self.uploads / f"{token}.png"
        if not p.exists():
            raise KeyError(token)
        return p

    def close(self) -> None:
        """Remove the uploads (they never outlive the server)."""
        shutil.rmtree(self.uploads, ignore_errors=True)
