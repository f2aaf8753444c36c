"""Attribution and grounding: which pixels a class score or a unit rests on, and how faithful a
map is (:mod:`convscope.attribution.metrics`: pixel flipping, ROAD, faithfulness correlation,
infidelity, max-sensitivity, model randomisation, localisation...)."""

from convscope.attribution import cam, cam_family, gradients, lrp, occlusion, zeiler_fergus  # noqa: F401  (registry)
from convscope.attribution.api import explain, get_method, method_names, method_options, options_for
from convscope.attribution.metrics import METRICS, get_metric, metric_names
from convscope.attribution.result import AttributionMap
from convscope.attribution.targets import Target, resolve_target
from convscope.attribution.trust import Curve, SanityCheck, deletion_insertion, sanity_check

__all__ = [
    "METRICS",
    "AttributionMap",
    "Curve",
    "SanityCheck",
    "Target",
    "deletion_insertion",
    "explain",
    "get_method",
    "get_metric",
    "method_names",
    "method_options",
    "metric_names",
    "options_for",
    "resolve_target",
    "sanity_check",
]
