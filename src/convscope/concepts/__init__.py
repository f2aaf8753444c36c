"""Concepts beyond units: dictionaries learned from a layer's activations over a dataset.

:func:`collect_activations` streams a layer's activations (spatial positions as samples, a
seeded uniform reservoir of bounded size); :func:`fit_concepts` factorises them into a
:class:`ConceptSet` by NMF, PCA, ICA or a TopK / BatchTopK sparse autoencoder;
:func:`stability` compares two dictionaries (matched-atom cosine similarity); a set's encoder
(:meth:`ConceptSet.basis`) turns its concepts into the "units" the scan, dissection and
attribution machinery take (``bases={layer: basis}``), and :func:`scan_concepts` finds each
concept's top-K images and patches that way.
"""

from convscope.concepts.activations import Activations, collect_activations
from convscope.concepts.basis import ConceptBasis
from convscope.concepts.dictionary import METHODS, fit_concepts, fit_dictionary
from convscope.concepts.result import ConceptSet, stability
from convscope.concepts.topk import scan_concepts

__all__ = [
    "METHODS",
    "Activations",
    "ConceptBasis",
    "ConceptSet",
    "collect_activations",
    "fit_concepts",
    "fit_dictionary",
    "scan_concepts",
    "stability",
]
