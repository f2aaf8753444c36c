"""convscope: see what a convolutional network has learned.

One verb per family (:mod:`convscope.verbs`): ``convscope.scan``, ``features``, ``dissect``
(each on a local or a Ray ``engine``), ``explain``, ``evaluate``, ``visualize``, ``class_model``, ``invert``,
``dream``, ``attack``, ``fool``, ``empirical_rf``, ``stimuli``, ``probe``, ``neighbors``,
``project``, ``compare``, ``train``, ``concepts``. ``convscope.scan``, ``convscope.dissect``,
``convscope.train`` and ``convscope.concepts`` are both the verb and the family's subpackage
(calling one runs the verb; ``convscope.scan.ScanResult`` and ``import convscope.scan.patches``
reach the package).
"""

import importlib as _importlib
import inspect as _inspect
import sys as _sys
import types as _types

from convscope.accel import Accel
from convscope.attribution import AttributionMap, Evaluation
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
    dream,
    empirical_rf,
    evaluate,
    explain,
    features,
    fool,
    invert,
    neighbors,
    probe,
    project,
    stimuli,
    visualize,
)
from convscope.version import __version__ as __version__
from convscope.zoo import load

__all__ = [
    "Accel",
    "AmbiguousLayerError",
    "AttributionMap",
    "Evaluation",
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
    "concepts",
    "dissect",
    "dream",
    "empirical_rf",
    "evaluate",
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


class _VerbPackage(_types.ModuleType):
    """A family's subpackage that is also its verb: ``convscope.scan(subject, data, layers)``
    runs the verb, while ``convscope.scan.ScanResult`` and ``import convscope.scan.patches as m``
    reach the package. One object for both, so no import order can shadow either."""

    def __call__(self, *args, **kwargs):
        return self.__verb__(*args, **kwargs)


def _verb_package(name: str):
    package = _importlib.import_module(f"convscope.{name}")
    verb = getattr(_sys.modules["convscope.verbs"], name)
    if not isinstance(package, _VerbPackage):
        package.__class__ = _VerbPackage
        package.__verb__ = verb
        package.__signature__ = _inspect.signature(verb)
        package.__doc__ = f"{package.__doc__ or ''}\n\nCalled as a function: {verb.__doc__ or ''}"
    return package


scan = _verb_package("scan")
dissect = _verb_package("dissect")
train = _verb_package("train")
concepts = _verb_package("concepts")
