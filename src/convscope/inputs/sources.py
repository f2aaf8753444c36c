"""Every source lists its images in a deterministic order (sorted paths). Files that cannot be
decoded are skipped, never fatal: each batch says which indices it skipped and why, and
:class:`Batches` adds them up into a :class:`SkipReport` for the end-of-run summary.
Labels follow ImageFolder: when every image lies in a sub-folder below the images' common
folder, the first sub-folder name is its class.

Names are kept losslessly: a file name that is not valid UTF-8 (``b"caf\\xe9.jpg"``) is the
surrogate-escaped ``str`` that :func:`os.listdir` and :func:`os.fsdecode` give
(``"caf\\udce9.jpg"``), in folders, list files and tar archives alike, and opens again by that
name; :func:`display_name` shows it printably. A source that holds no file at all is a
:class:`~convscope.errors.DataError`.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
import threading
from collections.abc import Callable, Sequence
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

import torch
from PIL import Image

from convscope.errors import DataError
from convscope.imageops import read_image
from convscope.inputs.images import ImageRecord, display_name, skip_reason

Transform = Callable[[Image.Image], torch.Tensor]
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


class ImageSource(torch.utils.data.Dataset):
    """A map-style dataset of images; item ``i`` is ``(tensor | None, i, error | None)``.

    Use :func:`open_images` to build one. ``transform`` turns a PIL image into a tensor
    (typically ``subject.transform``); without one, items hold the PIL image.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        classes: Sequence[str],
        reader,
        description: str,
        transform: Transform | None = None,
    ):
        self.records = list(records)
        self.classes = list(classes)
        self._reader = reader
        self.description = description
        self.transform = transform
        # How to open this source again (set by open_images).
        self.spec: dict = {"description": description}

    def __len__(self) -> int:
        return len(self.records)

    def read_bytes(self, i: int) -> bytes:
        """The stored bytes of image ``i`` (its file or archive member), undecoded."""
        return self._reader(self.records[i].name)

    def read(self, i: int) -> Image.Image:
        """Decoded RGB image ``i`` (raises if it cannot be decoded)."""
        return read_image(self.read_bytes(i))

    def __getitem__(self, i: int):
        try:
            img = self.read(i)
            return (self.transform(img) if self.transform else img), i, None
        except Exception as e:  # a bad file must never end a run
            return None, i, skip_reason(e)

    def with_transform(self, transform: Transform | None) -> ImageSource:
        out = ImageSource(self.records, self.classes, self._reader, self.description, transform)
        out.spec = self.spec
        return out

    def subset(self, indices: Sequence[int]) -> ImageSource:
        """The images at ``indices``, renumbered from 0 in that order."""
        recs = [ImageRecord(j, self.records[i].name, self.records[i].label) for j, i in enumerate(indices)]
        return ImageSource(recs, self.classes, self._reader, self.description, self.transform)

    def __repr__(self) -> str:
        return f"ImageSource({self.description!r}, {len(self)} images, {len(self.classes)} classes)"


def open_images(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    transform: Transform | None = None,
    pattern: str | None = None,
) -> ImageSource:
    """Open a folder (recursive), a tar archive, a text file listing paths, a list of paths, or
    ``"convscope:samples"`` (the bundled scikit-image photos and five crops of each, labelled by
    photo).

    ``pattern`` keeps only images whose relative name matches the glob (e.g. ``"test/*"`` in an
    archive of ``train/`` and ``test/``). Hidden files are ignored; every other file is tried (a
    broken or looping symbolic link too: it is skipped and counted). A source with no file to
    try raises :class:`~convscope.errors.DataError`.
    """
    src = _open(source, transform, pattern)
    if isinstance(source, (str, os.PathLike)):
        where = source if source == "convscope:samples" else str(Path(source).resolve())
        src.spec = {"description": src.description, "source": where, "pattern": pattern, "images": len(src)}
    else:
        src.spec = {
            "description": src.description,
            "files": [str(p) for p in source],
            "pattern": pattern,
            "images": len(src),
        }
    return src


def open_spec(spec: dict, transform: Transform | None = None) -> ImageSource:
    """Open again the images an :attr:`ImageSource.spec` describes (as atlases and feature
    folders record it)."""
    where = spec.get("source") or spec.get("files")
    if where is None:
        raise DataError(f"{spec.get('description', 'the image source')} does not say where its images are")
    return open_images(where, transform=transform, pattern=spec.get("pattern"))


def _open(source, transform, pattern) -> ImageSource:
    if isinstance(source, str) and source == "convscope:samples":
        return _nonempty(_from_samples(transform, pattern), "the bundled samples", pattern)
    if not isinstance(source, (str, os.PathLike)):
        paths = [Path(p) for p in source]
        src = _from_paths(paths, None, f"{len(paths)} files", transform, pattern)
        return _nonempty(src, "the list of paths given", pattern, "it is empty")
    path = Path(source)
    if not path.exists():
        link = " (a symbolic link that leads nowhere)" if path.is_symlink() else ""
        raise DataError(f"image source {_quoted(path)} does not exist{link}")
    hidden = "hidden files are ignored; every other file is tried as an image"
    if path.is_dir():
        # files, and links that lead nowhere (looping, dangling): tried, so skipped and counted
        files = [
            p
            for p in path.rglob("*")
            if (p.is_file() or (p.is_symlink() and not p.is_dir()))
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        ]
        src = _from_paths(files, path, os.fspath(path), transform, pattern)
        return _nonempty(
            src, f"folder {_quoted(path)}", pattern, "it holds no file, nor do its sub-folders", hidden
        )
    if path.name.endswith(_TAR_SUFFIXES) or (path.is_file() and tarfile.is_tarfile(path)):
        src = _from_tar(path, transform, pattern)
        return _nonempty(src, f"archive {_quoted(path)}", pattern, "it holds no file", hidden)
    if path.suffix in (".txt", ".lst"):
        base = path.parent
        # bytes decoded as file names are (os.fsdecode): a non-UTF-8 name stays the same file
        data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
        lines = [os.fsdecode(ln.strip()) for ln in data.splitlines()]
        paths = [
            Path(ln) if Path(ln).is_absolute() else base / ln for ln in lines if ln and not ln.startswith("#")
        ]
        src = _from_paths(paths, None, os.fspath(path), transform, pattern)
        return _nonempty(
            src,
            f"list file {_quoted(path)}",
            pattern,
            "it names no file",
            "one path per line; # starts a comment",
        )
    return _from_paths([path], None, os.fspath(path), transform, pattern)


def _quoted(path: Path) -> str:
    return f"'{display_name(os.fspath(path))}'"


def _nonempty(
    src: ImageSource, where: str, pattern: str | None, empty: str = "", hint: str = ""
) -> ImageSource:
    """``src``, or a one-line DataError saying what was looked for where, when it is empty."""
    if len(src):
        return src
    what = f"no file name matches the pattern {pattern!r}" if pattern else empty
    raise DataError(f"no images in {where}: {what}" + (f" ({hint})" if hint else ""))


def _from_paths(paths, root, description, transform, pattern) -> ImageSource:
    if root is None:
        names = [os.fspath(p) for p in paths]
    else:
        names = [p.relative_to(root).as_posix() for p in paths]
    if pattern:
        names = [n for n in names if fnmatch(n, pattern)]
    names.sort()
    reader = _FileReader(Path(root) if root is not None else None)
    return _make(names, reader, description, transform, labels_from_dirs=root is not None)


def _from_tar(path: Path, transform, pattern) -> ImageSource:
    try:
        with tarfile.open(path) as tf:
            members = [
                m.name
                for m in tf.getmembers()
                if (m.isfile() or m.issym() or m.islnk())
                and not any(p.startswith(".") for p in PurePosixPath(m.name).parts)
            ]
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"cannot read archive {path}: {e}") from e
    if pattern:
        members = [n for n in members if fnmatch(n, pattern)]
    members.sort()
    return _make(members, _TarReader(path), os.fspath(path), transform, labels_from_dirs=True)


def _from_samples(transform, pattern) -> ImageSource:
    from convscope.inputs.samples import sample_view, sample_view_names

    names = sample_view_names()
    if pattern:
        names = [n for n in names if fnmatch(n, pattern)]
    classes = sorted({n.split("/")[0] for n in names})
    index = {c: i for i, c in enumerate(classes)}
    records = [ImageRecord(i, n, index[n.split("/")[0]]) for i, n in enumerate(names)]
    return ImageSource(records, classes, sample_view, "convscope:samples", transform)


class _FileReader:
    """Reads files by name below ``base`` (or by full path); a module-level class, so that
    sources pickle into DataLoader workers started with spawn or forkserver."""

    def __init__(self, base: Path | None):
        self.base = base

    def __call__(self, name: str) -> bytes:
        return (self.base / name if self.base is not None else Path(name)).read_bytes()


class _TarReader:
    """Reads members by name; each process (DataLoader worker) opens its own handle, and threads
    of one process (the viewer's) take turns on it: a tar handle has one file position."""

    def __init__(self, path: Path):
        self.path = path
        self._pid = None
        self._tar = None
        self._members = None
        self._lock = threading.Lock()

    def __call__(self, name: str) -> bytes:
        with self._lock:
            if self._pid != os.getpid():
                self._tar = tarfile.open(self.path)  # noqa: SIM115 - kept open for the process
                self._members = {m.name: m for m in self._tar.getmembers()}
                self._pid = os.getpid()
            f = self._tar.extractfile(self._resolve(name))
            return f.read()

    def _resolve(self, name: str) -> tarfile.TarInfo:
        """The regular member that ``name`` is or links to (tarfile would recurse forever on a
        link to itself)."""
        member, seen = self._members[name], set()
        while member.issym() or member.islnk():
            if member.name in seen or len(seen) > 40:
                raise OSError("symbolic link loop in the archive")
            seen.add(member.name)
            target = (
                member.linkname
                if member.islnk()
                else posixpath.normpath(posixpath.join(posixpath.dirname(member.name), member.linkname))
            )
            if target not in self._members:
                raise FileNotFoundError(f"link target {display_name(target)!r} is not in the archive")
            member = self._members[target]
        return member

    def __getstate__(self):
        return {"path": self.path, "_pid": None, "_tar": None, "_members": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()


def _make(names, reader, description, transform, labels_from_dirs) -> ImageSource:
    classes: list[str] = []
    labels: list[int | None] = [None] * len(names)
    if labels_from_dirs and names:
        parts = [PurePosixPath(n).parts for n in names]
        common = 0
        while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
            common += 1
        if all(len(p) > common + 1 for p in parts):
            classes = sorted({p[common] for p in parts})
            index = {c: i for i, c in enumerate(classes)}
            labels = [index[p[common]] for p in parts]
    records = [ImageRecord(i, n, lab) for i, (n, lab) in enumerate(zip(names, labels))]
    return ImageSource(records, classes, reader, description, transform)
