"""Synthesis: images made by optimising the input (feature visualisation, class models,
inversion, DeepDream, whole layers stored by the microscope, activation atlases)."""

from convscope.synthesis import objectives, param, transforms

# activation_atlas(...) stays in its module, of the same name (an export would shadow the module)
from convscope.synthesis.activation_atlas import ActivationAtlas
from convscope.synthesis.dream import Dream, dream, dream_zoom
from convscope.synthesis.engine import Synthesis, evaluate, optimize
from convscope.synthesis.inversion import Inversion, invert
from convscope.synthesis.layer_visuals import LayerVisuals, visualize_layer
from convscope.synthesis.visualize import class_model, visualize_directions, visualize_units

__all__ = [
    "ActivationAtlas",
    "Dream",
    "Inversion",
    "LayerVisuals",
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
    "visualize_layer",
    "visualize_units",
]
