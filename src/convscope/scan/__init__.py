"""Dataset scans: top-K images and patches per unit, random directions, statistics."""

from convscope.scan.result import ScanResult, UnitStats, UnitTopK
from convscope.scan.scanner import resolve_scan_layers, scan
from convscope.scan.state import (
    CRITERIA,
    QUANTILE,
    LayerState,
    ScanMismatchError,
    TopK,
    quantile_thresholds,
    saturation_rule,
)

__all__ = [
    "CRITERIA",
    "QUANTILE",
    "LayerState",
    "ScanMismatchError",
    "ScanResult",
    "TopK",
    "UnitStats",
    "UnitTopK",
    "quantile_thresholds",
    "resolve_scan_layers",
    "saturation_rule",
    "scan",
]
