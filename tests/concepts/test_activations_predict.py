"""``collect_activations(predict=True)``: the same rows as without it, and each image's top-1
class from the same (whole) forward pass, checked against one forward per image; resumable."""

from __future__ import annotations

import pytest
import torch

from convscope.concepts import collect_activations
from convscope.concepts.activations import as_source
from convscope.errors import ConvscopeError

from .conftest import LAYER

SETTINGS = dict(per_image=8, max_samples=40, seed=3, batch_size=2, workers=0)


class Stop(Exception):
    pass


def test_predict_keeps_the_rows_and_gives_each_images_class(subject, folder):
    plain = collect_activations(subject, folder, LAYER, **SETTINGS)
    both = collect_activations(subject, folder, LAYER, predict=True, **SETTINGS)
    assert plain.predicted is None
    assert torch.equal(both.x, plain.x) and torch.equal(both.where, plain.where)
    assert (both.seen, both.images, both.grid) == (plain.seen, plain.images, plain.grid)
    source = as_source(subject, folder)
    want = {}
    for i in range(len(source)):
        img = source[i]
        img = img[0] if isinstance(img, tuple) else img
        with torch.no_grad():
            want[i] = int(subject(img[None]).argmax())
    assert both.predicted == want
    assert len(set(want.values())) > 1  # the check can fail: not one class for all


def test_predict_resumes_and_is_part_of_the_settings(subject, folder, tmp_path):
    whole = collect_activations(subject, folder, LAYER, predict=True, **SETTINGS)
    ckpt = tmp_path / "acts.ckpt"

    def stop(done, total):
        if done >= 6:
            raise Stop

    with pytest.raises(Stop):
        collect_activations(
            subject,
            folder,
            LAYER,
            predict=True,
            checkpoint=ckpt,
            checkpoint_every=0,
            progress=stop,
            **SETTINGS,
        )
    with pytest.raises(ConvscopeError, match="predict"):
        collect_activations(subject, folder, LAYER, checkpoint=ckpt, resume=True, **SETTINGS)
    resumed = collect_activations(
        subject, folder, LAYER, predict=True, checkpoint=ckpt, resume=True, **SETTINGS
    )
    assert torch.equal(resumed.x, whole.x) and resumed.predicted == whole.predicted
