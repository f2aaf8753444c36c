"""The atlas: one directory per (model, dataset) holding scans, dissections, empirical receptive
fields and feature folders in SQLite plus renders; this package alone knows its SQL and layout.

Writers that compute and store in one call: :func:`scan_to_atlas`, :func:`features_to_atlas`,
:func:`dissect_to_atlas` (local or Ray ``engine``), :func:`concepts_to_atlas` (learned concept
sets: fit, scan, importance, labels, pictures), :func:`evaluate_to_atlas` (attribution methods x
metrics), :func:`visuals_to_atlas` (stored feature visualisations of whole layers),
:func:`activation_atlas_to_atlas` and :func:`microscope_to_atlas` (all of them as recorded,
resumable stages); readers: :meth:`Atlas.open` (``readonly=True``
for a shared or read-only atlas), :mod:`convscope.atlas.queries` (the viewer's paginated queries).
"""

from convscope.atlas.activation_atlas_build import ActivationAtlasesBuilt, activation_atlas_to_atlas
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
from convscope.atlas.evaluate_build import EvaluationStored, evaluate_to_atlas
from convscope.atlas.microscope_build import MicroscopeBuilt, MicroscopeStageError, microscope_to_atlas
from convscope.atlas.paths import AtlasPaths, is_private_file, safe_name
from convscope.atlas.store import (
    SCHEMA_VERSION,
    Atlas,
    AtlasConflictError,
    AtlasLockedError,
    AtlasReadOnlyError,
)
from convscope.atlas.visuals_build import VisualsBuilt, visuals_to_atlas

__all__ = [
    "SCHEMA_VERSION",
    "ActivationAtlasesBuilt",
    "EvaluationStored",
    "MicroscopeBuilt",
    "MicroscopeStageError",
    "VisualsBuilt",
    "activation_atlas_to_atlas",
    "evaluate_to_atlas",
    "microscope_to_atlas",
    "visuals_to_atlas",
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
