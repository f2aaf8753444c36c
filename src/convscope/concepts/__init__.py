"""Concepts beyond units: dictionaries learned from a layer's activations over a dataset.

:func:`collect_activations` streams a layer's activations (spatial positions as samples, a
seeded uniform reservoir of bounded size); :func:`fit_concepts` factorises them into a
:class:`ConceptSet` by NMF, PCA, ICA or a TopK / BatchTopK sparse autoencoder;
:func:`stability` compares two dictionaries (matched-atom cosine similarity).
"""

from convscope.concepts.activations import Activations, collect_activations
from convscope.concepts.dictionary import METHODS, fit_concepts, fit_dictionary
from convscope.concepts.result import ConceptSet, stability

__all__ = [
    "METHODS",
    "Activations",
    "ConceptSet",
    "collect_activations",
    "fit_concepts",
    "fit_dictionary",
    "stability",
]
