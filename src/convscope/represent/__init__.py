"""Representations: pooled features over a dataset, post-processing, nearest-neighbour
retrieval and its evaluation, linear probes, 2-D projections and similarity across layers and
models (CKA, RSA)."""

from convscope.represent.features import POOLINGS, FeatureSet, extract_features, pool
from convscope.represent.postprocess import PostProcess, l2_normalize
from convscope.represent.probe import ProbeResult, linear_probe
from convscope.represent.projection import project
from convscope.represent.retrieval import (
    NeighborIndex,
    average_precision,
    evaluate_labels,
    evaluate_oxford,
    load_oxford_gt,
    oxford_ap,
)
from convscope.represent.similarity import linear_cka, rdm, rsa, similarity_matrix

__all__ = [
    "POOLINGS",
    "FeatureSet",
    "NeighborIndex",
    "PostProcess",
    "ProbeResult",
    "average_precision",
    "evaluate_labels",
    "evaluate_oxford",
    "extract_features",
    "l2_normalize",
    "linear_cka",
    "linear_probe",
    "load_oxford_gt",
    "oxford_ap",
    "pool",
    "project",
    "rdm",
    "rsa",
    "similarity_matrix",
]
