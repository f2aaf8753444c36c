"""Network dissection: units labelled by the concepts their activations segment.

Work in progress (issue 8): Broden reader, synthetic Broden-format data and the IoU engine
exist; automatic colour concepts, the report, the atlas storage, the CLI and the benchmark do
not yet."""

from convscope.dissect.broden import BrodenDataset, Concept, decode_segmentation
from convscope.dissect.dissection import Dissection, LayerDissection, dissect
from convscope.dissect.synthetic import make_synthetic_broden

__all__ = ["BrodenDataset", "Concept", "Dissection", "LayerDissection", "decode_segmentation",
           "dissect", "make_synthetic_broden"]
