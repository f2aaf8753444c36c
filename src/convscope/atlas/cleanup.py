"""Undoing a failed build: what a writer created at the top of an atlas folder, removed again,
so that a failed or refused build leaves no new atlas (or no new files in an old one) behind."""

from __future__ import annotations

import shutil
from pathlib import Path


def entries(out: Path) -> set[str] | None:
    """The names in the folder ``out`` before a build (None: no folder)."""
    return {p.name for p in out.iterdir()} if out.is_dir() else None


def undo_failed_build(
    out: Path, before: set[str] | None, refused: bool, checkpoints: str | None = None
) -> None:
    """After a failed build, remove what it created at the top of ``out`` (the whole folder when
    it made it; ``before`` is :func:`entries` from before the build): always when it created the
    atlas there, else only on a refusal (a user error: its new files are of settings that will
    change). An interrupted build of a new atlas that left a checkpoint matching the glob
    ``checkpoints`` keeps it all, for ``--resume``."""
    created_atlas = before is None or "atlas.db" not in before
    if not created_atlas and not refused:
        return
    if created_atlas and not refused and checkpoints and any(out.glob(checkpoints)):
        return
    if before is None:
        shutil.rmtree(out, ignore_errors=True)
        return
    for path in out.iterdir() if out.is_dir() else ():
        if path.name in before:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


__all__ = ["entries", "undo_failed_build"]
