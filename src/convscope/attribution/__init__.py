"""Attribution and grounding: which pixels a class score or a unit rests on."""

from convscope.attribution import cam, cam_family, gradients, occlusion, zeiler_fergus  # noqa: F401  (registry)
from convscope.attribution.api import explain, get_method, method_names, method_options, options_for
from convscope.attribution.result import AttributionMap
from convscope.attribution.targets import Target, resolve_target
from convscope.attribution.trust import Curve, SanityCheck, deletion_insertion, sanity_check

__all__ = [
    "AttributionMap",
    "Curve",
    "SanityCheck",
    "Target",
    "deletion_insertion",
    "explain",
    "get_method",
    "method_names",
    "method_options",
    "options_for",
    "resolve_target",
    "sanity_check",
]
