"""Pure rendering functions: arrays in, PIL images or matplotlib figures out. No file I/O."""

from convscope.render.grid import filters_to_images, image_grid, to_uint8
from convscope.render.plots import figure_to_image, predictions_figure, receptive_fields_figure

__all__ = [
    "figure_to_image",
    "filters_to_images",
    "image_grid",
    "predictions_figure",
    "receptive_fields_figure",
    "to_uint8",
]
