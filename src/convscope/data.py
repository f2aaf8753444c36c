"""Image sources: folders, file lists and tar archives, decoded robustly and batched.

Every source lists its images in a deterministic order (sorted paths). Files that cannot be
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

import io
import os
import posixpath
import tarfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, ImageOps

from convscope.accel import PREFETCH
from convscope.errors import DataError
from convscope.fileio import name_bytes

Transform = Callable[[Image.Image], torch.Tensor]
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def read_image(source: str | os.PathLike | bytes | Image.Image) -> Image.Image:
    """Decode a file path or bytes to an RGB PIL image: EXIF orientation applied, then
    :func:`to_rgb`. Raises on unreadable data."""
    if isinstance(source, Image.Image):
        return to_rgb(source)
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    with Image.open(fp) as img:
        img.load()
        return to_rgb(ImageOps.exif_transpose(img))


_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB copy of ``img``, for every mode Pillow opens files in:

    - 16-bit grey (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``): the high byte, ``value >> 8``,
      which is how Pillow itself reduces 16-bit RGB, RGBA and grey+alpha PNGs and TIFFs;
    - 32-bit integers (``I``, Pillow's mode for 16-bit PGM/PPM and 32-bit integer TIFFs): taken
      as 16-bit values, clipped to 0..65535, then ``>> 8``;
    - 32-bit floats (``F``): intensities in 0..1, clipped (NaN as 0), times 255, rounded;
    - transparency (``RGBA``, ``LA``, ``PA``, premultiplied ``La``/``RGBa``, a palette's alpha, a
      PNG transparency colour key) composited onto white;
    - CIE L*a*b* (``LAB``, from TIFFs): to sRGB relative to the D65 white, by the CIE formulas
      (Pillow's own conversion is off by tens of levels for some in-gamut colours);
    - everything else (``1``, ``L``, ``P``, ``RGB``, ``RGBX``, ``CMYK``, ``YCbCr``, ``HSV``) by
      Pillow's own conversion.
    """
    if img.mode in _WIDE_MODES:
        img = _wide_to_grey(img)
    elif img.mode == "LAB":
        return _lab_to_rgb(img)
    elif img.mode in ("La", "RGBa"):  # premultiplied: Pillow converts La to nothing but LA
        img = img.convert("LA" if img.mode == "La" else "RGBA")
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


_XYZ_TO_SRGB = np.array(
    [
        [3.2404542, -1.5371385, -0.4985314],
        [-0.9692660, 1.8760108, 0.0415560],
        [0.0556434, -0.2040259, 1.0572252],
    ]
)
_D65 = np.array([0.95047, 1.0, 1.08883])


def _lab_to_rgb(img: Image.Image) -> Image.Image:
    """sRGB of a Pillow ``LAB`` image (L* scaled to 0..255, a* and b* signed bytes), D65 white."""
    raw = np.asarray(img)
    lum = raw[..., 0].astype(np.float64) * (100.0 / 255.0)
    ab = raw[..., 1:].view(np.int8).astype(np.float64)
    fy = (lum + 16.0) / 116.0
    f = np.stack([fy + ab[..., 0] / 500.0, fy, fy - ab[..., 1] / 200.0], axis=-1)
    delta = 6.0 / 29.0
    xyz = np.where(f > delta, f**3, 3 * delta**2 * (f - 4.0 / 29.0)) * _D65
    lin = (xyz @ _XYZ_TO_SRGB.T).clip(0.0, 1.0)  # out-of-gamut colours clipped in RGB
    srgb = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)
    return Image.fromarray(np.round(srgb * 255).astype(np.uint8))


def _wide_to_grey(img: Image.Image) -> Image.Image:
    """An 8-bit ``L`` (``LA`` with a transparency key) image of a 16-bit, 32-bit integer or
    float image, by the rules of :func:`to_rgb` (Pillow would clip every value above 255)."""
    raw = np.asarray(img)
    if img.mode == "F":
        grey = np.round(np.nan_to_num(raw.astype(np.float64), nan=0.0).clip(0.0, 1.0) * 255)
    else:
        grey = raw.astype(np.int64).clip(0, 65535) >> 8
    out = Image.fromarray(grey.astype(np.uint8))
    key = img.info.get("transparency")
    if isinstance(key, (int, float)) and not isinstance(key, bool):
        alpha = Image.fromarray(np.where(raw == key, 0, 255).astype(np.uint8))
        out = Image.merge("LA", (out, alpha))
    return out


@dataclass(frozen=True)
class ImageRecord:
    """One image of a source: position, name (path relative to the source) and class index."""

    index: int
    name: str
    label: int | None = None


@dataclass
class SkipReport:
    """Files that could not be used, with the reason for each."""

    items: list[tuple[str, str]] = field(default_factory=list)

    def add(self, name: str, reason: str) -> None:
        self.items.append((name, reason))

    @property
    def count(self) -> int:
        return len(self.items)

    def summary(self, limit: int = 5) -> str:
        """One line, e.g. ``"skipped 2 files: a.jpg (truncated), notes.txt (not an image)"``."""
        if not self.items:
            return "skipped 0 files"
        shown = ", ".join(f"{display_name(n)} ({display_name(r)})" for n, r in self.items[:limit])
        more = f", +{self.count - limit} more" if self.count > limit else ""
        return f"skipped {self.count} file{'s' * (self.count != 1)}: {shown}{more}"


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

    def read(self, i: int) -> Image.Image:
        """Decoded RGB image ``i`` (raises if it cannot be decoded)."""
        return read_image(self._reader(self.records[i].name))

    def __getitem__(self, i: int):
        try:
            img = self.read(i)
            return (self.transform(img) if self.transform else img), i, None
        except Exception as e:  # a bad file must never end a run
            return None, i, _reason(e)

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


def display_name(name: str) -> str:
    """``name`` printable anywhere: the bytes of a non-UTF-8 file name as ``\\xe9`` escapes (the
    name itself, a surrogate-escaped str, cannot be written to a UTF-8 terminal or file)."""
    return name_bytes(name).decode("utf-8", "backslashreplace")


def _reason(e: Exception) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(e, UnidentifiedImageError):
        return "not an image"
    if isinstance(e, OSError) and e.errno is not None and e.strerror:
        return f"{type(e).__name__}: {e.strerror}"  # the name is shown beside the reason
    return f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}".rstrip(": ")


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
    from convscope.samples import sample_view, sample_view_names

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


# --- batching ------------------------------------------------------------------------------


@dataclass
class ImageBatch:
    """A batch: ``images`` (B, 3, H, W), their source ``indices`` (B,), and what was skipped."""

    images: torch.Tensor
    indices: torch.Tensor
    skipped: list[tuple[int, str]]

    def pin_memory(self) -> ImageBatch:
        """The batch in page-locked memory (the DataLoader calls this with ``pin_memory=True``;
        without it a custom batch type is silently left unpinned)."""
        return ImageBatch(self.images.pin_memory(), self.indices.pin_memory(), self.skipped)


def collate(items) -> ImageBatch:
    """DataLoader collate that drops undecodable items and keeps their reasons."""
    good = [(t, i) for t, i, err in items if err is None]
    skipped = [(i, err) for t, i, err in items if err is not None]
    if good:
        images = torch.stack([t for t, _ in good])
        indices = torch.tensor([i for _, i in good], dtype=torch.long)
    else:
        images = torch.empty(0)
        indices = torch.empty(0, dtype=torch.long)
    return ImageBatch(images, indices, skipped)


class Batches:
    """Iterate a source in batches through a DataLoader (``workers`` processes decode).

    Batch ``j`` holds positions ``j * batch_size ...`` of the read order, minus the files that
    could not be decoded (so a batch may be empty). ``report`` collects every skipped file;
    ``indices`` (optional) restricts and orders the images read. With ``decode="device"`` the
    workers only read bytes and :mod:`convscope.decode` decodes each batch on ``device`` (the
    batch's images are then already there).
    """

    def __init__(
        self,
        source: ImageSource,
        batch_size: int = 32,
        workers: int = 0,
        indices: Sequence[int] | None = None,
        pin_memory: bool = False,
        decode: str = "cpu",
        device: torch.device | str = "cpu",
    ):
        if source.transform is None:
            raise DataError("the image source needs a transform (e.g. subject.transform)")
        self.source = source
        self.batch_size = batch_size
        self.workers = workers
        self.indices = list(indices) if indices is not None else None
        self.pin_memory = pin_memory
        self.decode = decode
        self.device = torch.device(device)
        self.report = SkipReport()
        if decode == "device":
            from convscope.decode import device_transform

            self._preprocess = device_transform(source)
        elif decode != "cpu":
            raise DataError(f"decode must be cpu or device, not {decode!r}")

    def __len__(self) -> int:
        n = len(self.indices) if self.indices is not None else len(self.source)
        return (n + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[ImageBatch]:
        on_device = self.decode == "device"
        if on_device:
            from convscope.decode import RawImages, decode_batch

            dataset = RawImages(self.source)
        else:
            dataset = self.source
        if self.indices is not None:
            dataset = torch.utils.data.Subset(dataset, self.indices)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.workers,
            collate_fn=_collate_raw if on_device else collate,
            pin_memory=self.pin_memory and not on_device,
            persistent_workers=False,
            prefetch_factor=PREFETCH if self.workers else None,
        )
        for batch in loader:
            if on_device:
                good, skipped = batch
                images, order, bad = decode_batch(good, self._preprocess, self.device)
                batch = ImageBatch(images, torch.tensor(order, dtype=torch.long), skipped + bad)
            for i, reason in batch.skipped:
                self.report.add(self.source.records[i].name, reason)
            yield batch


def _collate_raw(items):
    return (
        [(t, i) for t, i, err in items if err is None],
        [(i, err) for t, i, err in items if err is not None],
    )
