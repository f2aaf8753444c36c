"""Concepts beyond units: dictionaries learned from a layer's activations over a dataset.

:func:`collect_activations` streams a layer's activations (spatial positions as samples, a
seeded uniform reservoir of bounded size, resumable from a checkpoint); :func:`fit_concepts`
factorises them into a :class:`ConceptSet` by NMF, PCA, ICA or a TopK / BatchTopK sparse
autoencoder; :func:`stability` compares two dictionaries (matched-atom cosine similarity).
A set's encoder (:meth:`ConceptSet.basis`) turns its concepts into the "units" the scan and the
dissection take (``bases={layer: basis}``): :func:`scan_concepts` finds each concept's top-K
images and patches, :func:`label_concepts` labels concepts by dissection IoU,
:func:`concept_importance` measures each concept's importance per class (gradient x concept
activation, checked against :func:`ablation_importance`), :func:`explain_concepts` draws one
image's concept attribution map, and :func:`compare_bases` sets units, random directions and
concepts side by side (top-K class purity, detector fractions).
"""

from convscope.concepts.activations import Activations, collect_activations
from convscope.concepts.basis import ConceptBasis
from convscope.concepts.compare import BasisComparison, StackedBasis, compare_bases
from convscope.concepts.dictionary import METHODS, fit_concepts, fit_dictionary
from convscope.concepts.explain import ConceptExplanation, explain_concepts
from convscope.concepts.importance import ConceptImportance, ablation_importance, concept_importance
from convscope.concepts.labels import label_concepts
from convscope.concepts.result import ConceptSet, stability
from convscope.concepts.topk import scan_concepts

__all__ = [
    "METHODS",
    "Activations",
    "BasisComparison",
    "ConceptBasis",
    "ConceptExplanation",
    "ConceptImportance",
    "ConceptSet",
    "StackedBasis",
    "ablation_importance",
    "collect_activations",
    "compare_bases",
    "concept_importance",
    "explain_concepts",
    "fit_concepts",
    "fit_dictionary",
    "label_concepts",
    "scan_concepts",
    "stability",
]
