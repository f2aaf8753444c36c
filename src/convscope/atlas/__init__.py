"""The atlas: one directory per (model, dataset) holding scan results in SQLite plus renders."""

from convscope.atlas.build import render_units, reopen, scan_to_atlas, stored_dissection
from convscope.atlas.paths import AtlasPaths, is_private_file, safe_name
from convscope.atlas.store import (
    SCHEMA_VERSION,
    Atlas,
    AtlasConflictError,
    AtlasLockedError,
    AtlasReadOnlyError,
)

__all__ = [
    "SCHEMA_VERSION",
    "Atlas",
    "AtlasPaths",
    "AtlasConflictError",
    "AtlasLockedError",
    "AtlasReadOnlyError",
    "is_private_file",
    "render_units",
    "reopen",
    "safe_name",
    "scan_to_atlas",
    "stored_dissection",
]
