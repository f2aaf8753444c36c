"""convscope: see what a convolutional network has learned."""

from convscope.accel import Accel
from convscope.attribution import AttributionMap, explain
from convscope.errors import (
    AmbiguousLayerError,
    ConvscopeError,
    LayerNotFoundError,
    NameNotFoundError,
    WeightsUnavailableError,
)
from convscope.layers import LayerInfo, LayerTable
from convscope.preprocess import Preprocess
from convscope.receptive import ReceptiveField
from convscope.recorder import Recorder, ablate
from convscope.subject import Subject
from convscope.units import Direction, Unit
from convscope.zoo import load

__version__ = "0.1.0"

__all__ = [
    "Accel",
    "AmbiguousLayerError",
    "AttributionMap",
    "ConvscopeError",
    "Direction",
    "LayerInfo",
    "LayerNotFoundError",
    "NameNotFoundError",
    "LayerTable",
    "Preprocess",
    "ReceptiveField",
    "Recorder",
    "Subject",
    "Unit",
    "WeightsUnavailableError",
    "ablate",
    "explain",
    "load",
]
