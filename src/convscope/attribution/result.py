"""AttributionMap: per-pixel importance for a batch of images, with its rendering."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from convscope.results import Result


@dataclass
class AttributionMap(Result):
    """Result of :func:`convscope.explain`.

    ``maps`` (N, H, W) is the per-pixel importance at model-input resolution (higher = more
    important; signed for methods whose output is signed); ``raw`` (N, 3, H, W) holds the
    per-channel attribution where the method has one (gradients, deconvnet, occlusion);
    ``images`` (N, H, W, 3) in [0, 1] are the inputs as the model saw them; ``targets`` name
    what was explained for each image.
    """

    method: str
    maps: np.ndarray
    images: np.ndarray
    targets: list[str]
    raw: np.ndarray | None = None
    signed: bool = False
    options: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.maps)

    def normalized(self, i: int, percentile: float = 99.5) -> np.ndarray:
        """Map ``i`` scaled for display to [0, 1] ([-1, 1] if signed) by its ``percentile`` of
        |values| and clipped, so that a few extreme gradients do not wash out the rest."""
        from convscope.render.attribution import OFFSET_METHODS

        m = self.maps[i].astype(np.float64)
        if self.method in OFFSET_METHODS and not self.signed:
            m = m - m.min()
        if not self.signed:
            m = np.clip(m, 0, None)
        top = np.percentile(np.abs(m), percentile)
        if top <= 0:
            top = np.abs(m).max()
        if top <= 0:
            return np.zeros_like(m)
        return np.clip(m / top, -1 if self.signed else 0, 1)

    def headline(self) -> str:
        return f"{self.method} on {len(self)} image(s): {', '.join(self.targets[:4])}"

    def to_image(self, i: int = 0) -> Image.Image:
        """Image, map and overlay side by side for image ``i`` (gradient images such as guided
        backprop's as RGB around grey), with the map's colour bar."""
        from convscope.render.attribution import OFFSET_METHODS, RGB_METHODS, attribution_panel

        rgb = self.raw[i] if self.method in RGB_METHODS and self.raw is not None else None
        return attribution_panel(
            self.images[i],
            self.maps[i],
            self.signed,
            f"{self.method}: {self.targets[i]}",
            rgb=rgb,
            floor=float(self.maps[i].min()) if self.method in OFFSET_METHODS else None,
        )
