"""Dataset scans: top-K images and patches per unit, random directions, statistics."""

from convscope.scan.result import SATURATION_WARN, SaturationWarning, ScanResult, UnitStats, UnitTopK
from convscope.scan.scanner import resolve_scan_layers, scan
from convscope.scan.state import (
    CRITERIA,
    QUANTILE,
    SECONDARY,
    LayerState,
    ScanMismatchError,
    TopK,
    quantile_thresholds,
    saturation_rule,
    separating_thresholds,
)

__all__ = [
    "CRITERIA",
    "QUANTILE",
    "SATURATION_WARN",
    "SECONDARY",
    "LayerState",
    "ScanMismatchError",
    "SaturationWarning",
    "ScanResult",
    "TopK",
    "UnitStats",
    "UnitTopK",
    "quantile_thresholds",
    "resolve_scan_layers",
    "saturation_rule",
    "scan",
    "separating_thresholds",
]
