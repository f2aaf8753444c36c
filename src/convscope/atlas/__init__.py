"""The atlas: one directory per (model, dataset) holding scans, dissections, empirical receptive
fields and feature folders in SQLite plus renders; this package alone knows its SQL and layout.

Writers that compute and store in one call: :func:`scan_to_atlas`, :func:`features_to_atlas`,
:func:`dissect_to_atlas` (local or Ray ``engine``), :func:`concepts_to_atlas` (learned concept
sets: fit, scan, importance, labels, pictures); readers: :meth:`Atlas.open` (``readonly=True``
for a shared or read-only atlas), :mod:`convscope.atlas.queries` (the viewer's paginated queries).
"""

from convscope.atlas.build import (
    DissectedAtlas,
    compare_dissections,
    compare_scans,
    dissect_to_atlas,
    features_to_atlas,
    render_units,
    reopen,
    scan_to_atlas,
    stored_dissection,
)
from convscope.atlas.concepts_build import ConceptsBuilt, concepts_to_atlas
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
    "ConceptsBuilt",
    "DissectedAtlas",
    "compare_dissections",
    "compare_scans",
    "concepts_to_atlas",
    "dissect_to_atlas",
    "features_to_atlas",
    "is_private_file",
    "render_units",
    "reopen",
    "safe_name",
    "scan_to_atlas",
    "stored_dissection",
]
