from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import convscope
from convscope.errors import UserInputError
from convscope.inputs.sources import open_images
from convscope.scan import scan
from convscope.synthesis import (
    class_model,
    dream,
    dream_zoom,
    evaluate,
    invert,
    optimize,
    visualize_directions,
    visualize_units,
)
from convscope.synthesis import objectives as O
from convscope.synthesis.param import fft_image, pixel_image
from convscope.testing import tiny_subject

from ..conftest import hook_count


def test_unit_visualisations_beat_the_best_dataset_image(default_subject):
    units = [0, 1, 2, 3]
    default_subject.model.zero_grad(set_to_none=True)  # peers' tests call .backward() on it
    syn = visualize_units(default_subject, "blocks.4", units, steps=40, size=112, seed=0)
    assert syn.images.shape == (4, 112, 112, 3) and syn.labels[0] == "blocks.4:0"
    src = open_images("convscope:samples", transform=default_subject.transform)
    res = scan(default_subject, src, ["blocks.4"], k=1, criteria=["mean"], batch_size=36)
    best = np.array([res.topk("blocks.4", u, "mean").scores[0] for u in units])
    assert np.all(syn.scores > 2 * best), (syn.scores, best)
    assert hook_count(default_subject.model) == 0
    assert all(p.grad is None for p in default_subject.model.parameters())


def test_batch_item_i_optimises_unit_i(default_subject):
    syn = visualize_units(default_subject, "blocks.3", [5, 9], steps=24, size=96)
    imgs = torch.as_tensor(syn.images).permute(0, 3, 1, 2)
    s5 = evaluate(default_subject, O.channel("blocks.3", 5), imgs).numpy()
    s9 = evaluate(default_subject, O.channel("blocks.3", 9), imgs).numpy()
    assert s5[0] > s5[1] and s9[1] > s9[0]


def test_class_models_are_classified_as_their_class(default_subject):
    syn = class_model(default_subject, [285, 967], steps=64, size=224, seed=0)
    # the synthesised model input itself, as Simonyan et al. classify it
    x = default_subject.preprocess.normalize(torch.from_numpy(syn.images).permute(0, 3, 1, 2).float())
    direct = default_subject.predict(x, k=1)
    assert direct.indices[:, 0].tolist() == [285, 967]
    assert np.all(direct.probs[:, 0] > 0.9), direct.probs
    # saved as 8-bit pictures and read back through the eval preprocessing (short side to 256,
    # central 224 crop: the picture is enlarged and its border cut), still the class
    pics = [Image.fromarray((img * 255).round().astype(np.uint8)) for img in syn.images]
    preds = default_subject.predict(pics, k=1)
    assert preds.indices[:, 0].tolist() == [285, 967]
    with pytest.raises(UserInputError, match="0..999"):
        class_model(default_subject, [1000])


def test_plain_simonyan_class_model_runs(default_subject):
    syn = class_model(default_subject, [1], regularized=False, l2=1.0, steps=3, size=64)
    assert syn.info["param"] == "pixel" and syn.images.shape == (1, 64, 64, 3)


def test_inversion_from_an_early_layer(default_subject):
    from skimage import data

    inv = invert(default_subject, data.chelsea(), ["bn1", "blocks.1"], restarts=2, steps=100)
    assert inv.errors[0] < 0.1, inv.errors
    assert inv.errors[1] > inv.errors[0]  # deeper layers keep less of the image
    assert inv.restart_errors.shape == (2, 2)
    assert inv.to_image().width > 3 * 224


def test_same_seed_same_image():
    subject = tiny_subject()
    kw = dict(batch=2, size=32, steps=5, seed=7)
    a = optimize(subject, O.channel("block", [0, 1]), **kw)
    b = optimize(subject, O.channel("block", [0, 1]), **kw)
    c = optimize(subject, O.channel("block", [0, 1]), **{**kw, "seed": 8})
    assert np.array_equal(a.images, b.images) and not np.array_equal(a.images, c.images)


def test_objective_algebra():
    subject = tiny_subject()
    img = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ch = evaluate(subject, O.channel("conv2", 3), img)
    tv = evaluate(subject, O.total_variation(), img)
    combo = evaluate(subject, 2 * O.channel("conv2", 3) - 0.5 * O.total_variation() + 1, img)
    assert torch.allclose(combo, 2 * ch - 0.5 * tv + 1)
    assert torch.allclose(evaluate(subject, -O.l2(), img), -((img - 0.5) ** 2).mean((1, 2, 3)))
    logit = evaluate(subject, O.class_logit([3, 4]), img)
    with torch.no_grad():
        out = subject.model(subject.preprocess.normalize(img))
    assert torch.allclose(logit, out[[0, 1], [3, 4]])
    d = evaluate(subject, O.diversity("conv2"), img)
    assert d.shape == (2,) and torch.all(d <= 0)
    with pytest.raises(UserInputError, match="3 entries"):
        evaluate(subject, O.channel("conv2", [0, 1, 2]), img)


def test_parametrisations_make_valid_images():
    g = torch.Generator().manual_seed(0)
    for build in (pixel_image, fft_image):
        params, fn = build((2, 3, 24, 20), generator=g)
        img = fn()
        assert img.shape == (2, 3, 24, 20) and img.min() >= 0 and img.max() <= 1
        assert all(p.requires_grad for p in params)


def test_directions_and_neurons(default_subject):
    dirs = convscope.Direction.random("blocks.2", 40, 2, seed=1)
    syn = visualize_directions(default_subject, dirs, steps=8, size=64)
    assert syn.labels == ["blocks.2:random0", "blocks.2:random1"]
    syn = visualize_units(default_subject, "blocks.2", [3], neuron=True, steps=8, size=64)
    assert syn.scores.shape == (1,)
    with pytest.raises(UserInputError):
        visualize_units(default_subject, "blocks.2", [40])


def test_deepdream_amplifies_the_layer(default_subject):
    from skimage import data

    img = default_subject.preprocess.denormalize(default_subject.load_images([data.coffee()]))
    d = dream(default_subject, img, "blocks.3", octaves=2, steps=4)
    after = torch.as_tensor(d.image).permute(2, 0, 1)[None]
    norm = O.layer_norm("blocks.3")
    assert evaluate(default_subject, norm, after) > 1.2 * evaluate(default_subject, norm, img)


def test_dream_zoom_frames_and_gif(default_subject, tmp_path):
    img = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    d = dream_zoom(default_subject, img, "blocks.1", frames=3, octaves=1, steps=2)
    assert d.frames.shape == (3, 64, 64, 3)
    gif = Image.open(d.to_gif(tmp_path / "z.gif"))
    assert gif.n_frames == 3


def test_frames_on_request():
    subject = tiny_subject()
    syn = optimize(subject, O.channel("conv1", 0), size=32, steps=6, frames=[2, 4, 6])
    assert syn.frames.shape == (3, 1, 32, 32, 3)
