"""Atomic file writing (a reader never sees half a file, a crash never leaves one) with the
permissions any other file gets, and exclusive locks for folders that one process writes at a
time."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from convscope.errors import UserInputError, first_line


def umask() -> int:
    """The process's file-creation mask (read without changing it where the system allows)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    old = os.umask(0o022)  # no /proc: set and restore (not atomic, but harmless)
    os.umask(old)
    return old


def _final_mode(path: Path) -> int:
    """The mode a file written at ``path`` should have: what ``open()`` would give a new file
    (0o666 less the umask), plus any further bit of the file it replaces (never fewer, so the
    0600 files that earlier versions' atomic writes left behind open up when rewritten)."""
    mode = 0o666 & ~umask()
    with contextlib.suppress(OSError):
        mode |= stat.S_IMODE(os.stat(path).st_mode)
    return mode


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``, unique to this writer; on success it replaces
    ``path`` in one rename, with the mode the umask gives a new file (plus the further bits of
    the file it replaces) (``tempfile.mkstemp`` alone would leave it readable by its owner only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _final_mode(path))
        os.replace(tmp_path, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def save_image(image, path: str | os.PathLike) -> Path:
    """Save a PIL image atomically; the format follows the suffix of ``path``."""
    fmt = Path(path).suffix.lstrip(".").upper() or "PNG"
    fmt = {"JPG": "JPEG"}.get(fmt, fmt)
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt)
    return Path(path)


# -- names ------------------------------------------------------------------------------------
def name_bytes(name: str) -> bytes:
    """The bytes of a name as the file system has them: a non-UTF-8 file name arrives as a
    surrogate-escaped ``str`` (``os.fsdecode(b"caf\\xe9.jpg") == "caf\\udce9.jpg"``) and goes back
    to ``b"caf\\xe9.jpg"``; any other lone surrogate is kept as its UTF-8-like encoding."""
    try:
        return name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogatepass")


def name_from_bytes(raw: bytes) -> str:
    """The name of :func:`name_bytes`'s bytes (``os.fsdecode`` on a UTF-8 system): the same
    file again for every name a file system gave."""
    return raw.decode("utf-8", "surrogateescape")


def is_text(name: str) -> bool:
    """Whether ``name`` can be written as UTF-8 text as it is (no surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# -- locks ------------------------------------------------------------------------------------
class LockedError(UserInputError):
    """Another process holds the exclusive lock of a folder."""

    def __init__(self, message: str, holder: dict):
        super().__init__(message)
        self.holder = holder


def _command() -> str:
    argv = list(sys.argv) or ["python"]
    head = os.path.basename(argv[0])
    if head in ("main.py", "__main__.py", "-m", "-c"):
        head = "convscope"
    text = shlex.join([head, *argv[1:]]).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= 200 else text[:197] + "..."


def describe_holder(holder: dict) -> str:
    """``pid 123 (`convscope scan ...`, started 2025-01-31 12:00:00 on host)``."""
    if not holder.get("pid"):
        return "another process"
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    host = holder.get("host")
    return (
        f"pid {holder['pid']} (`{holder.get('command', '?')}`, started {when}"
        + (f" on {host}" if host and host != socket.gethostname() else "")
        + ")"
    )


class _Held:
    def __init__(self, fd: int, created_dir: Path | None):
        self.fd, self.count, self.created_dir = fd, 1, created_dir


_held: dict[str, _Held] = {}
_held_guard = threading.Lock()


def _read_holder(path: Path) -> dict:
    for _ in range(20):  # the holder writes its line right after it got the lock
        with contextlib.suppress(OSError, ValueError):
            text = path.read_text(encoding="utf-8")
            if text.strip():
                return json.loads(text)
        time.sleep(0.02)
    return {}


@contextlib.contextmanager
def exclusive_lock(
    path: str | os.PathLike, what: str = "this folder", hint: str = "wait for it to finish"
) -> Iterator[dict]:
    """Hold an exclusive advisory lock (``fcntl.flock``) on the lock file ``path`` for the
    duration of the block; the lock file says who holds it (pid, command, start time) and is
    removed on release. Another process that asks for it meanwhile gets :class:`LockedError`
    at once (``"{what} is being written by pid ...; {hint}"``); the same process may nest.
    The folder of ``path`` is created when missing (and removed again if it is left empty)."""
    import fcntl

    path = Path(path)
    folder = path.parent
    key = os.path.abspath(path)
    with _held_guard:
        held = _held.get(key)
        if held is not None:
            held.count += 1
    if held is not None:
        try:
            yield _read_holder(path)
        finally:
            _release(key)
        return
    if folder.exists() and not folder.is_dir():
        raise UserInputError(f"{os.fsdecode(folder)!r} is a file, not a folder")
    created = None
    if not folder.exists():
        missing = folder
        while not missing.parent.exists():
            missing = missing.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except PermissionError:
            raise UserInputError(
                f"cannot make the folder {os.fsdecode(folder)!r}: permission denied"
            ) from None
        created = missing
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # a writer that made the folder for its lock just removed it
            folder.mkdir(parents=True, exist_ok=True)
            continue
        except PermissionError:
            raise UserInputError(f"cannot write in {os.fsdecode(folder)!r}: permission denied") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = _read_holder(path)
            raise LockedError(
                f"{what} is being written by {describe_holder(holder)}; {hint}", holder
            ) from None
        try:  # the file may have been removed by its last holder between open and flock
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    holder = {"pid": os.getpid(), "command": _command(), "started": time.time(), "host": socket.gethostname()}
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(holder) + "\n").encode())
    with _held_guard:
        _held[key] = _Held(fd, created)
    try:
        yield holder
    finally:
        _release(key)


def _release(key: str) -> None:
    with _held_guard:
        held = _held[key]
        held.count -= 1
        if held.count:
            return
        del _held[key]
    path = Path(key)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # while still locked: a waiting opener then sees another inode, retries
    os.close(held.fd)
    if held.created_dir is not None:  # a folder made only for the lock goes again
        folder = path.parent
        with contextlib.suppress(OSError):
            while True:
                folder.rmdir()
                if folder == held.created_dir:
                    break
                folder = folder.parent


def load_weights_only(path: str | os.PathLike, what: str, advice: str, map_location="cpu"):
    """``torch.load(path, weights_only=True)``; a pickled or damaged file is a one-line
    :class:`~convscope.errors.UserInputError` ("cannot resume: PATH is not a readable WHAT
    (...); it is left as it is, ADVICE") and the file is not touched."""
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise UserInputError(
            f"cannot resume: {path} is not a readable {what} ({type(e).__name__}: {first_line(e, 160)}); "
            f"it is left as it is, {advice}"
        ) from None
