"""convscope: see what a convolutional network has learned.

One verb per family (:mod:`convscope.verbs`): ``convscope.scan``, ``features``, ``dissect``
(each on a local or a Ray ``engine``), ``explain``, ``visualize``, ``class_model``, ``invert``,
``dream``, ``attack``, ``fool``, ``empirical_rf``, ``stimuli``, ``probe``, ``neighbors``,
``project``, ``compare``, ``train``. ``convscope.scan`` and ``convscope.dissect`` (and
``train``) are the verbs even after ``import convscope.scan.scanner``: import the families'
classes from their modules (``from convscope.scan import ScanResult``).
"""

import sys as _sys
import types as _types

from convscope.accel import Accel
from convscope.attribution import AttributionMap
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
from convscope.verbs import (
    attack,
    class_model,
    compare,
    dissect,
    dream,
    empirical_rf,
    explain,
    features,
    fool,
    invert,
    neighbors,
    probe,
    project,
    scan,
    stimuli,
    train,
    visualize,
)
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
    "attack",
    "class_model",
    "compare",
    "dissect",
    "dream",
    "empirical_rf",
    "explain",
    "features",
    "fool",
    "invert",
    "load",
    "neighbors",
    "probe",
    "project",
    "scan",
    "stimuli",
    "train",
    "visualize",
]

_VERBS = frozenset(_sys.modules["convscope.verbs"].__all__)


class _Package(_types.ModuleType):
    """The package module: importing a subpackage that shares a verb's name for the first time
    (``import convscope.scan.scanner``) sets ``convscope.scan`` to that subpackage; the verb stays."""

    def __setattr__(self, name, value):
        if name in _VERBS and isinstance(value, _types.ModuleType) and callable(self.__dict__.get(name)):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
