"""The images of a dissection: the whole image resized to the model's input (no crop), so that
every pixel of a segmentation has a place in the activation map."""

from __future__ import annotations

import copy

from convscope.preprocess import Preprocess
from convscope.subject import Subject


def dissection_transform(subject: Subject) -> Preprocess:
    """The subject's normalisation after resizing the *whole* image to its input size, so that
    every pixel of the segmentation has a place in the activation map (no crop)."""
    p = subject.preprocess
    return Preprocess(
        size=p.size, resize=None, mode="squash", mean=p.mean, std=p.std, interpolation=p.interpolation
    )


def with_dissection_transform(data, subject: Subject):
    """``data`` itself when it has a transform, else a shallow copy of it with
    :func:`dissection_transform` (the caller's concept data is never changed)."""
    if data.transform is not None:
        return data
    out = copy.copy(data)
    out.transform = dissection_transform(subject)
    return out
