"""Attribution and grounding: which pixels a class score or a unit rests on, and how faithful a
map is (:mod:`convscope.attribution.metrics`: pixel flipping, ROAD, faithfulness correlation,
infidelity, max-sensitivity, model randomisation, localisation...)."""

from convscope.attribution import (  # noqa: F401  (registry)
    baselines,
    blackbox,
    cam,
    cam_family,
    gradients,
    lrp,
    occlusion,
    zeiler_fergus,
)
from convscope.attribution.api import explain, get_method, method_names, method_options, options_for
from convscope.attribution.evaluation import Evaluation
from convscope.attribution.evaluator import evaluate
from convscope.attribution.metrics import METRICS, get_metric, metric_names
from convscope.attribution.result import AttributionMap
from convscope.attribution.targets import Target, resolve_target
from convscope.attribution.trust import Curve, SanityCheck, deletion_insertion, sanity_check

__all__ = [
    "METRICS",
    "AttributionMap",
    "Curve",
    "Evaluation",
    "SanityCheck",
    "Target",
    "deletion_insertion",
    "evaluate",
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
