"""Empirical receptive fields (discrepancy maps) and manufactured-stimulus tests."""

from convscope.empirical.discrepancy import (
    DiscrepancyMap,
    EmpiricalRF,
    discrepancy_map,
    empirical_rf,
    layer_summary,
    peak_position,
)
from convscope.empirical.stimuli import Stimuli, best_patch, stimuli

__all__ = [
    "DiscrepancyMap",
    "EmpiricalRF",
    "Stimuli",
    "best_patch",
    "discrepancy_map",
    "empirical_rf",
    "layer_summary",
    "peak_position",
    "stimuli",
]
