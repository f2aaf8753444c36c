"""What a source holds (ImageRecord) and skips (SkipReport, skip_reason); names shown printably."""

from __future__ import annotations

from dataclasses import dataclass, field

from convscope.inputs.fileio import name_bytes


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


def display_name(name: str) -> str:
    """``name`` printable anywhere: the bytes of a non-UTF-8 file name as ``\\xe9`` escapes (the
    name itself, a surrogate-escaped str, cannot be written to a UTF-8 terminal or file)."""
    return name_bytes(name).decode("utf-8", "backslashreplace")


def skip_reason(e: Exception) -> str:
    """Why an image could not be used, in a few words (``"not an image"``, ``"OSError: ..."``)."""
    from PIL import UnidentifiedImageError

    if isinstance(e, UnidentifiedImageError):
        return "not an image"
    if isinstance(e, OSError) and e.errno is not None and e.strerror:
        return f"{type(e).__name__}: {e.strerror}"  # the name is shown beside the reason
    return f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}".rstrip(": ")
