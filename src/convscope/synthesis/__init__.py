"""Synthesis: images made by optimising the input (feature visualisation, class models,
inversion, DeepDream)."""

from convscope.synthesis import objectives, param, transforms
from convscope.synthesis.dream import Dream, dream, dream_zoom
from convscope.synthesis.engine import Synthesis, evaluate, optimize
from convscope.synthesis.inversion import Inversion, invert
from convscope.synthesis.visualize import class_model, visualize_directions, visualize_units

__all__ = [
    "Dream",
    "Inversion",
    "Synthesis",
    "class_model",
    "dream",
    "dream_zoom",
    "evaluate",
    "invert",
    "objectives",
    "param",
    "optimize",
    "transforms",
    "visualize_directions",
    "visualize_units",
]
