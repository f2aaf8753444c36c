"""Dataset scans: top-K images and patches per unit, random directions, statistics."""

from convscope.scan.result import SATURATION_WARN, SaturationWarning, ScanResult, UnitStats, UnitTopK
from convscope.scan.scanner import scan
from convscope.scan.state import CRITERIA, SECONDARY, LayerState, ScanMismatchError, TopK

__all__ = [
    "CRITERIA",
    "SATURATION_WARN",
    "SECONDARY",
    "LayerState",
    "ScanMismatchError",
    "SaturationWarning",
    "ScanResult",
    "TopK",
    "UnitStats",
    "UnitTopK",
    "scan",
]
