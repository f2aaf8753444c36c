"""Empirical receptive fields (discrepancy maps), manufactured-stimulus tests, and theoretical
receptive fields checked against gradient support."""

from convscope.empirical.discrepancy import (
    DiscrepancyMap,
    EmpiricalRF,
    discrepancy_map,
    empirical_rf,
    layer_summary,
    peak_position,
)
from convscope.empirical.stimuli import Stimuli, best_patch, stimuli
from convscope.empirical.support import SupportCheck, gradient_support, gradient_supports

__all__ = [
    "DiscrepancyMap",
    "EmpiricalRF",
    "Stimuli",
    "SupportCheck",
    "best_patch",
    "discrepancy_map",
    "empirical_rf",
    "gradient_support",
    "gradient_supports",
    "layer_summary",
    "peak_position",
    "stimuli",
]
