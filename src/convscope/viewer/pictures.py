"""The viewer's pictures that are more than one library call, shared by the server and the static
export: a unit's best patch and its empirical receptive field, and image encoding."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

PATCH_SIZE = 112  # px, the longer side of a unit's patch thumbnail
RF_SIZE = 160  # px, the side of an empirical receptive field picture


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    """``img`` as RGB ``fmt`` bytes (JPEG at quality 88)."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format=fmt, quality=88)
    return buf.getvalue()


def opaque(data: bytes) -> bytes:
    """A PNG's bytes without its alpha channel: the colours as they are, fully opaque (an RGB
    PNG comes back re-encoded the same)."""
    with Image.open(io.BytesIO(data)) as img:
        return encode(img.convert("RGB"))


def thumbnail(img: Image.Image, size: int, fmt: str = "JPEG") -> bytes:
    """``img`` shrunk to fit ``size`` x ``size`` px (aspect kept, never enlarged), encoded."""
    img = img.convert("RGB")
    img.thumbnail((size, size))
    return encode(img, fmt)


def unit_patch(subject, source, info, top: dict) -> bytes:
    """The JPEG thumbnail of a unit's best image (``info``: its layer's ``LayerInfo``; ``top``:
    its rank-0 top-K row with ``image``, ``y``, ``x``), cropped to the receptive field of the
    winning position for spatial layers."""
    from convscope.render.topk import patch_from_original

    img = source.read(top["image"])
    if info.rf is not None and not info.rf.is_global and info.is_map:
        img = patch_from_original(img, subject.preprocess, info.rf.box(top["y"], top["x"]))
    return thumbnail(img, PATCH_SIZE)


def rf_picture(row: dict) -> Image.Image:
    """An empirical receptive field (``row["average"]``: its side x side map) as a heat map on
    grey, normalised to its maximum, :data:`RF_SIZE` px square."""
    from convscope.render.topk import heat_overlay

    avg = row["average"] / max(float(row["average"].max()), 1e-12)
    grey = np.full((*avg.shape, 3), 128, np.uint8)
    return heat_overlay(grey, avg, alpha=1.0).resize((RF_SIZE, RF_SIZE), Image.NEAREST)


def concept_topk(subject, source, concepts, top, cell: int = 96) -> Image.Image:
    """The top-K grid of one learned concept (``concepts``: its
    :class:`~convscope.concepts.ConceptSet`; ``top``: the concept's
    :class:`~convscope.scan.result.UnitTopK`, ``unit`` being the concept): each hit's best patch
    and the concept's heat map (its codes on the layer's grid) over the image the model saw."""
    from convscope.scan.patches import render_topk

    images = [source.read(int(i)) for i in top.images]
    maps = concepts.heatmaps(subject, images)[:, top.unit]
    title = f"{concepts.layer} {concepts.method} concept {top.unit} - top {len(top)} by {top.criterion}"
    return render_topk(subject, source, top, cell=cell, maps=maps, title=title)
