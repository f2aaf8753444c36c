"""MaCo (phase-only Fourier parametrisation, fixed natural-image magnitude, transparency map),
cross-checked against the reference implementation, the ``horama`` package."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convscope.preprocess import Preprocess
from convscope.subject import Subject
from convscope.synthesis import Synthesis, evaluate, optimize, visualize_units
from convscope.synthesis import objectives as O
from convscope.synthesis.maco import HORAMA_COLOR, crops, image_from_phase, maco_image, natural_spectrum
from convscope.testing import TinyCNN

CANVAS, INPUT = 64, 32


@pytest.fixture(scope="module")
def subject():
    # mean 0.5, std 0.2 maps [0, 1] onto horama's (-2.5, 2.5): both feed the model the same input
    torch.manual_seed(0)
    pre = Preprocess(size=(INPUT, INPUT), resize=None, mode="squash", mean=(0.5,) * 3, std=(0.2,) * 3)
    return Subject(TinyCNN(10), pre, [f"class{i}" for i in range(10)], name="tiny")


def test_image_maths_equal_horamas():
    maco_fv = pytest.importorskip("horama.maco_fv")
    from convscope.synthesis.param import make_param

    mag = natural_spectrum(CANVAS, CANVAS)
    phase = torch.randn(3, 3, CANVAS, CANVAS // 2 + 1, generator=torch.Generator().manual_seed(1))
    ours = image_from_phase(phase, mag)
    for i in range(3):
        ref = maco_fv.maco_preconditioner(mag, phase[i], (-2.5, 2.5), "cpu")
        assert torch.allclose(ours[i], (ref + 2.5) / 5, atol=1e-5)
    # the same through the parametrisation the engine builds
    _, image_fn = make_param("maco", (3, 3, CANVAS, CANVAS), phase=phase)
    assert torch.allclose(image_fn(), ours, atol=1e-6)
    # horama's colour matrix is Lucid's (synthesis.param's) transposed
    ref = torch.from_numpy(np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]]))
    ref = ref / ref.norm(dim=0).max()
    assert torch.allclose(HORAMA_COLOR.T.double(), ref, atol=1e-6)


def test_crops_equal_horamas_for_the_same_draws():
    common = pytest.importorskip("horama.common")
    x = torch.rand(1, 3, CANVAS, CANVAS, generator=torch.Generator().manual_seed(2))
    ours = crops(INPUT, n=6)(x, torch.Generator().manual_seed(5))
    seen = []
    torch.manual_seed(5)  # horama draws from the global generator, in the same order
    img = (x[0] * 5 - 2.5).requires_grad_(True)
    common.optimization_step(lambda c: seen.append(c.detach()) or c.sum(), img, (0.20, 0.25), 0.05, 6, INPUT)
    assert ours.shape == (6, 3, INPUT, INPUT)
    assert torch.allclose(ours, (seen[0] + 2.5) / 5, atol=1e-5)


def _horama_run(subject, unit, phase, steps, monkeypatch):
    from horama import maco_fv

    from convscope.recorder import Recorder

    mag = natural_spectrum(CANVAS, CANVAS)
    monkeypatch.setattr(maco_fv, "init_maco_buffer", lambda shape, std_deviation=1.0: (mag, phase.clone()))
    torch.manual_seed(0)  # its crop draws: the stream our engine's generator (seed 0) gives

    def objective(x):
        with Recorder(subject, ["conv2"], detach=False, stop=True) as rec:
            subject(x)
        return rec["conv2"][:, unit].mean()  # mean over the crops, as our engine's score

    img, alpha = maco_fv.maco(
        objective, total_steps=steps, image_size=CANVAS, model_input_size=INPUT, device="cpu"
    )
    return (img.detach() + 2.5) / 5, alpha


def test_same_objective_and_transparency_as_horama_at_equal_settings(subject, monkeypatch):
    pytest.importorskip("horama")
    steps, units = 24, [1, 6, 11]
    fixed = crops(INPUT)
    ours_scores, ref_scores = [], []
    for unit in units:
        params, image_fn = maco_image((1, 3, CANVAS, CANVAS), keys=[f"u{unit}"])
        phase = params[0].detach()[0].clone()  # before the engine changes it in place
        syn = optimize(
            subject, O.channel("conv2", unit), param="maco", size=CANVAS, steps=steps, init=(params, image_fn)
        )
        img, alpha = _horama_run(subject, unit, phase, steps, monkeypatch)
        ours = torch.from_numpy(syn.images).permute(0, 3, 1, 2)
        both = torch.cat([ours, img[None]])
        s = evaluate(subject, O.channel("conv2", unit), both, fixed, torch.Generator().manual_seed(9))
        ours_scores.append(float(s[0]))
        ref_scores.append(float(s[1]))
        # |d loss / d image|: ours is in [0, 1] units, horama's in its 5x wider range
        ref_alpha = (alpha.mean(0) * 5).numpy()
        rel = np.abs(syn.transparency[0] - ref_alpha).max() / ref_alpha.max()
        assert rel < 1e-4, rel
    ours_scores, ref_scores = np.array(ours_scores), np.array(ref_scores)
    # the same crop and noise draws (CPU generator, same order): the same trajectory up to float
    # rounding (measured: 4e-6 relative after 24 steps), far inside the "a few %"
    assert np.all(np.abs(ours_scores - ref_scores) <= 1e-4 * np.abs(ref_scores)), (ours_scores, ref_scores)
    start = evaluate(subject, O.channel("conv2", units[0]), image_fn().detach() * 0 + 0.5)
    assert ours_scores[0] > float(start[0])  # it did optimise


def test_only_the_phase_changes(subject):
    params, image_fn = maco_image((2, 3, CANVAS, CANVAS), keys=["a", "b"])
    before = params[0].detach().clone()
    mag = image_fn.magnitude.clone()
    obj = O.channel("conv2", [0, 1])
    syn = optimize(subject, obj, batch=2, param="maco", size=CANVAS, steps=5, init=(params, image_fn))
    assert not torch.allclose(params[0].detach(), before)
    assert torch.equal(image_fn.magnitude, mag)
    # the image's own spectrum (before the sigmoid, in the decorrelated basis) is the magnitude
    # up to one scale per image
    x = torch.from_numpy(syn.images).double().clamp(1e-6, 1 - 1e-6)
    t = torch.logit(x) @ torch.linalg.inv(HORAMA_COLOR.double())
    spec = torch.fft.rfft2(t.permute(0, 3, 1, 2)).abs()
    ratio = (spec / mag.double())[..., 1:-1]  # irfft2 makes columns 0 and W/2 Hermitian
    spread = ratio.std(dim=(1, 2, 3)) / ratio.mean(dim=(1, 2, 3))
    assert torch.all(spread < 1e-3), spread
    assert syn.transparency.shape == (2, CANVAS, CANVAS) and np.all(syn.transparency >= 0)


def test_batch_equals_one_at_a_time_and_seeds_repeat(subject, tmp_path):
    kw = dict(param="maco", size=CANVAS, steps=6, seed=3)
    together = visualize_units(subject, "conv2", [2, 7], batch=2, **kw)
    alone = visualize_units(subject, "conv2", [2, 7], batch=1, **kw)
    np.testing.assert_allclose(together.images, alone.images, atol=1e-4)
    np.testing.assert_allclose(together.transparency, alone.transparency, rtol=1e-3, atol=1e-6)
    again = visualize_units(subject, "conv2", [2, 7], batch=2, **kw)
    np.testing.assert_array_equal(again.images, together.images)
    other = visualize_units(subject, "conv2", [2, 7], batch=2, **{**kw, "seed": 4})
    assert np.abs(other.images - together.images).max() > 0.05
    assert together.info["param"] == "maco" and together.info["lr"] == 1.0
    pic = together.to_image()
    assert pic.width > 3 * CANVAS  # each image beside its transparency-weighted copy
    back = Synthesis.load(together.save(tmp_path / "maco.npz"))
    np.testing.assert_array_equal(back.transparency, together.transparency)


def test_transparency_normalised_per_map_by_its_percentile():
    from convscope.synthesis.maco import ALPHA_PERCENTILE, normalize_transparency

    rng = np.random.default_rng(0)
    raw = rng.exponential(1.0, (2, 3, 16, 16)) * np.array([1.0, 1e-6, 1e4])[None, :, None, None]
    alpha = normalize_transparency(raw)
    assert alpha.shape == raw.shape and alpha.dtype == np.float32
    assert alpha.min() >= 0 and alpha.max() == 1
    for i in range(2):
        for j in range(3):  # each map on its own scale: the top fifth opaque, the rest in proportion
            high = np.percentile(raw[i, j], ALPHA_PERCENTILE)
            np.testing.assert_allclose(alpha[i, j], np.minimum(raw[i, j] / high, 1), rtol=1e-5)
            assert np.mean(alpha[i, j] == 1) == pytest.approx(1 - ALPHA_PERCENTILE / 100, abs=0.01)
    sparse = np.zeros((8, 8))
    sparse[3, 4], sparse[5, 5] = 2.0, 1.0  # zero at the percentile: scaled by its maximum
    np.testing.assert_allclose(normalize_transparency(sparse), sparse / 2)
    assert not normalize_transparency(np.zeros((4, 4))).any()
