"""The viewer's defences, as pieces the app puts together: the host names it answers (DNS
rebinding), the same-origin test for POSTs, the security headers on every response, and the
upload path (bodies counted as they are read, parsed in memory, decoded and type-checked)."""

from __future__ import annotations

import io
import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

from fastapi import HTTPException, Request
from PIL import Image

ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"}
MAX_PIXELS = 40_000_000  # checked from the header, before decoding
MULTIPART_OVERHEAD = 64 << 10  # form boundaries and part headers allowed on top of the image
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


def host_patterns(hosts: Sequence[str]) -> list[str]:
    """``hosts`` as TrustedHostMiddleware compares them: lower case, IPv6 literals in brackets,
    without a port (``atlas.lan:8000`` is ``atlas.lan``)."""
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


class SecurityHeaders:
    """ASGI middleware: adds :data:`SECURITY_HEADERS` to every HTTP response (errors and
    refusals included), keeping any a response already set."""

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


def same_origin(request: Request) -> bool:
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


def announced_too_large(request: Request, upload_limit: int) -> bool:
    """Whether the request's ``Content-Length`` already says its body passes the upload limit
    (chunked or lying bodies are counted as they are read instead, :func:`read_body`)."""
    size = request.headers.get("content-length", "")
    return size.isascii() and size.isdigit() and int(size) > upload_limit + MULTIPART_OVERHEAD


def megabytes(n: int) -> str:
    """``n`` bytes for a message: ``8 MB``."""
    return f"{n / (1 << 20):.3g} MB"


def too_large(upload_limit: int) -> str:
    """The message of a refused oversized upload."""
    return f"images up to {megabytes(upload_limit)}"


async def read_body(request: Request, upload_limit: int) -> bytes:
    """The request body, counted as it arrives (``Content-Length`` or chunked): a 413 as soon
    as it passes ``upload_limit`` plus the form's overhead, without reading the rest."""
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > upload_limit + MULTIPART_OVERHEAD:
            raise HTTPException(413, too_large(upload_limit), {"Connection": "close"})
    return bytes(buf)


async def parse_upload(request: Request, body: bytes):
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


def decode_upload(data: bytes, upload_limit: int) -> Image.Image:
    """An uploaded file as an RGB image: a 413 past ``upload_limit`` bytes, a 415 unless its
    header names an allowed format of at most :data:`MAX_PIXELS` and it decodes."""
    if len(data) > upload_limit:
        raise HTTPException(413, too_large(upload_limit))
    try:
        with Image.open(io.BytesIO(data)) as probe:  # reads the header only
            fmt, (w, h) = probe.format, probe.size
            if fmt not in ALLOWED_FORMATS or w * h > MAX_PIXELS:
                raise ValueError(fmt)
            probe.verify()
        from convscope.imageops import read_image

        return read_image(data)
    except Exception:
        raise HTTPException(
            415, "not an image convscope can read (JPEG, PNG, WebP, BMP, GIF, TIFF)"
        ) from None
