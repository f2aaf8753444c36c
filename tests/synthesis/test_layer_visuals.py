"""Feature visualisations of whole layers: batched equals one at a time, the negative image lowers
what the positive raises, the diversity term spreads a set, the forward pass stops at the layer,
out-of-memory halves the batch, and the result saves and draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import convscope.synthesis.layer_visuals as LV
from convscope.errors import UserInputError
from convscope.synthesis import evaluate
from convscope.synthesis import objectives as O
from convscope.synthesis.layer_visuals import LayerVisuals, visualize_layer
from convscope.testing import tiny_subject

from ..conftest import hook_count

SETTINGS = {"steps": 16, "size": 32, "seed": 3}


@pytest.fixture(scope="module")
def subject():
    return tiny_subject()


@pytest.mark.parametrize("param", ["fft", "maco"])
def test_batched_equals_one_unit_at_a_time(subject, param):
    opts = {**SETTINGS, "size": 48, "steps": 6} if param == "maco" else SETTINGS
    units = [0, 3, 5]
    together = visualize_layer(subject, "conv2", units, diversity=2, batch=16, param=param, **opts)
    assert together.images.shape == (3, 4, opts["size"], opts["size"], 3)
    assert together.images.dtype == np.uint8
    for r, u in enumerate(units):
        alone = visualize_layer(subject, "conv2", [u], diversity=2, batch=1, param=param, **opts)
        diff = np.abs(alone.images[0].astype(int) - together.images[r].astype(int))
        # float rounding only: a batched convolution sums in another order. On some CPUs (seen
        # on one VM kind, not on another) MaCo's amplitude rescaling moves a few pixels by 3/255
        assert diff.max() <= (3 if param == "maco" else 1) and (diff > 1).mean() < 1e-3, diff.max()
        rtol = 1e-3 if param == "maco" else 1e-4  # maco: 4.5e-4 seen on that VM kind
        np.testing.assert_allclose(alone.objectives[0], together.objectives[r], rtol=rtol, atol=1e-6)


def test_negative_is_below_positive_and_values_are_the_channel_mean(subject):
    vis = visualize_layer(subject, "conv2", range(6), **SETTINGS)
    assert vis.slots == [("positive", 0), ("negative", 0)]
    pos, neg = vis.objectives[:, 0], vis.objectives[:, 1]
    assert np.all(neg < pos), (pos, neg)
    # the stored value is the plain channel mean on the (unquantised) final image
    img = torch.as_tensor(vis.image(2, "negative") / 255.0, dtype=torch.float32).permute(2, 0, 1)[None]
    again = evaluate(subject, O.channel("conv2", 2), img).item()
    assert again == pytest.approx(vis.objectives[2, 1], abs=2e-3)


def test_diversity_term_spreads_the_set(subject):
    def similarity(weight):
        vis = visualize_layer(
            subject, "conv2", [1], kinds=(), diversity=3, diversity_weight=weight, **SETTINGS
        )
        imgs = torch.as_tensor(vis.images[0] / 255.0, dtype=torch.float32).permute(0, 3, 1, 2)
        return -evaluate(subject, O.diversity("conv2"), imgs).mean().item()

    assert similarity(100.0) < similarity(0.0) - 0.01


def test_forward_stops_at_the_layer(subject):
    calls = []
    handle = subject.model.fc.register_forward_hook(lambda *a: calls.append(1))
    try:
        visualize_layer(subject, "conv2", [0, 1], diversity=2, steps=3, size=32)
    finally:
        handle.remove()
    assert calls == [] and hook_count(subject.model) == 0


def test_out_of_memory_halves_the_batch_and_gives_the_same_images(subject, monkeypatch):
    fixed = visualize_layer(subject, "conv2", range(4), batch=2, **SETTINGS)
    real = LV._run
    tried = []

    def small_memory(subject, layer, units, slots, chunk, param, steps, *args, **kwargs):
        n = sum(len(j) for j in chunk)
        tried.append((n, steps))
        if n > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(subject, layer, units, slots, chunk, param, steps, *args, **kwargs)

    monkeypatch.setattr(LV, "_run", small_memory)
    monkeypatch.setattr(LV, "memory_budget", lambda device: 1e12)  # the probe allows all 8
    auto = visualize_layer(subject, "conv2", range(4), batch=None, **SETTINGS)
    optimised = [n for n, steps in tried if steps == SETTINGS["steps"]]  # not the 1-step probes
    assert optimised[:3] == [8, 4, 2] and auto.settings["batch"] == 2
    np.testing.assert_array_equal(auto.images, fixed.images)
    with pytest.raises(RuntimeError, match="out of memory"):  # a fixed batch is the user's choice
        visualize_layer(subject, "conv2", range(4), batch=8, **SETTINGS)


def test_auto_batch_fits_the_budget_and_the_jobs(subject, monkeypatch):
    per = LV.image_bytes(subject, "conv2", size=32)
    bigger = LV.image_bytes(subject, "conv2", size=64)
    assert per > 0 and 3 * per < bigger < 5 * per  # activations grow with the canvas area
    monkeypatch.setattr(LV, "CPU_MAX_BATCH", 1000)
    sizes = []
    for share in (40.5, 9.5, 3.5, 1.5, 0.2):
        monkeypatch.setattr(LV, "memory_budget", lambda device, share=share: share * per)
        sizes.append(LV.auto_batch(subject, "conv2", size=32, images=30))
    assert sizes == [30, 9, 3, 1, 1]  # at most the jobs, then budget // bytes per image, at least 1
    monkeypatch.setattr(LV, "memory_budget", lambda device: 1e15)
    monkeypatch.setattr(LV, "CPU_MAX_BATCH", 5)
    assert LV.auto_batch(subject, "conv2", size=32) == 5  # where a CPU stops gaining

    def no_room(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(LV, "_run", no_room)  # even the probe of 1 and 2 images does not fit
    assert LV.auto_batch(subject, "conv2", size=48) == 1


def test_auto_batch_gives_the_images_of_batch_one(subject, monkeypatch):
    per = LV.image_bytes(subject, "conv2", size=32)
    monkeypatch.setattr(LV, "memory_budget", lambda device: 3.5 * per)
    seen = []
    auto = visualize_layer(
        subject, "conv2", [1, 4], diversity=2, progress=lambda d, t: seen.append(d), **SETTINGS
    )
    assert auto.settings["batch"] == 3  # the 2 single images, then the set of 2 (never split)
    one = visualize_layer(subject, "conv2", [1, 4], diversity=2, batch=1, **SETTINGS)
    assert np.abs(one.images.astype(int) - auto.images.astype(int)).max() <= 1
    assert seen[0] == 0 and seen[-1] == 8 and seen == sorted(seen)
    assert any(d != int(d) for d in seen)  # the images advance within a batch, step by step


def test_precision_and_layout_reach_the_optimisation_and_the_scores(subject, monkeypatch):
    from convscope.accel import Accel

    got = []
    for name in ("optimize", "evaluate"):
        real = getattr(LV, name)
        monkeypatch.setattr(
            LV,
            name,
            lambda *a, real=real, name=name, **k: got.append((name, k.get("accel"))) or real(*a, **k),
        )
    accel = Accel(precision="bf16", channels_last=True)
    vis = visualize_layer(subject, "conv2", [0, 2], steps=3, size=32, batch=4, accel=accel)
    assert {name for name, a in got if a is accel} == {"optimize", "evaluate"}
    assert vis.images.shape == (2, 2, 32, 32, 3) and np.isfinite(vis.objectives).all()
    assert vis.settings["precision"] == "bf16" and vis.settings["channels_last"] is True
    assert "accel" not in vis.settings.get("other", [])
    plain = visualize_layer(subject, "conv2", [0], steps=3, size=32)
    assert plain.settings["precision"] == "fp32" and plain.settings["channels_last"] is False
    wanted = LV.run_settings("fft", 3, 32, 0, 100.0, {"accel": accel})
    assert wanted["precision"] == "bf16"
    assert "precision" not in LV.run_settings("fft", 3, 32, 0, 100.0, {"accel": Accel(channels_last=True)})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_batch_on_cuda_measures_the_allocator(subject):
    cuda = tiny_subject().to("cuda")
    per = LV.image_bytes(cuda, "conv2", size=64)
    assert per > 0
    n = LV.auto_batch(cuda, "conv2", size=64, budget=10.5 * per)
    assert n == 10


def test_save_load_and_picture(subject, tmp_path):
    vis = visualize_layer(subject, "conv2", [0, 2], diversity=2, steps=2, size=32)
    back = LayerVisuals.load(vis.save(tmp_path / "v.npz"))
    assert back.slots == vis.slots and back.layer == "conv2"
    np.testing.assert_array_equal(back.images, vis.images)
    pic = vis.to_image()
    assert pic.width > 4 * 32 and pic.height > 2 * 32
    assert "2 unit(s) of conv2" in vis.headline()


def test_refusals(subject):
    with pytest.raises(UserInputError, match="units 0..15"):
        visualize_layer(subject, "conv2", [16])
    with pytest.raises(UserInputError, match="unknown kind"):
        visualize_layer(subject, "conv2", [0], kinds=("max",))
    with pytest.raises(UserInputError, match="at least 2"):
        visualize_layer(subject, "conv2", [0], diversity=1)
    with pytest.raises(UserInputError, match="nothing to visualise"):
        visualize_layer(subject, "conv2", [0], kinds=())


def test_maco_keeps_each_images_transparency_and_saves_it(subject, tmp_path):
    opts = {"size": 48, "steps": 4, "seed": 1}
    vis = visualize_layer(subject, "conv2", [1, 4], param="maco", **opts)
    assert vis.alpha.shape == (2, 2, 48, 48) and vis.alpha.dtype == np.float32
    assert vis.alpha.min() >= 0 and vis.alpha.max() == 1 and vis.alpha.std() > 0.05
    # each image's own map: the same whatever batch it ran in
    alone = visualize_layer(subject, "conv2", [4], kinds=("negative",), param="maco", batch=1, **opts)
    np.testing.assert_allclose(alone.alpha[0, 0], vis.alpha[1, 1], atol=1e-3)
    assert not np.allclose(vis.alpha[0, 0], vis.alpha[1, 0], atol=0.05)
    back = LayerVisuals.load(vis.save(tmp_path / "maco.npz"))
    np.testing.assert_array_equal(back.alpha, vis.alpha)
    # the picture: each image followed by itself through its transparency, on white
    pic = np.asarray(vis.to_image(cell=48).convert("RGB"))
    assert pic.shape[1] > 4 * 48
    fft = visualize_layer(subject, "conv2", [1], steps=2, size=32)
    assert fft.alpha is None and LayerVisuals.load(fft.save(tmp_path / "fft.npz")).alpha is None
    assert fft.to_image(cell=48).width < vis.to_image(cell=48).width
