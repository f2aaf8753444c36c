"""Network dissection: units labelled by the concepts their activations segment.

Concept data: :class:`BrodenDataset` (Broden format), :class:`ColorConcepts` (automatic colour
names for any image folder), :func:`make_synthetic_broden` (planted shapes, colours, textures).
:func:`dissect` scores every unit against every concept; :class:`Dissection` holds the result.
"""

from convscope.dissect.broden import BrodenDataset, decode_segmentation
from convscope.dissect.colors import COLOR_NAMES, ColorConcepts, ColorNamer
from convscope.dissect.concepts import Concept, ConceptItem
from convscope.dissect.dissection import dissect
from convscope.dissect.open import open_concept_data
from convscope.dissect.result import Dissection, LayerDissection, LayerSummary, UnitLabel
from convscope.dissect.synthetic import make_synthetic_broden
from convscope.dissect.transform import dissection_transform

__all__ = [
    "COLOR_NAMES",
    "BrodenDataset",
    "ColorConcepts",
    "ColorNamer",
    "Concept",
    "ConceptItem",
    "Dissection",
    "LayerDissection",
    "LayerSummary",
    "UnitLabel",
    "decode_segmentation",
    "dissect",
    "dissection_transform",
    "make_synthetic_broden",
    "open_concept_data",
]
