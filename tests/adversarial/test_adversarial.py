from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.adversarial import PixelModel, fgsm, fool, minimal, pgd
from convscope.errors import UserInputError
from convscope.inputs.samples import sample_images

torchattacks = pytest.importorskip("torchattacks")


@pytest.fixture(scope="module")
def pixels(default_subject):
    imgs = [img for _, img in sample_images()[:4]]
    return default_subject.preprocess.denormalize(default_subject.load_images(imgs)).clamp(0, 1)


def _labels(subject, x):
    with torch.no_grad():
        return subject.model(subject.preprocess.normalize(x)).argmax(-1)


def test_fgsm_matches_torchattacks(default_subject, pixels):
    labels = _labels(default_subject, pixels)
    ours = fgsm(default_subject, pixels, eps=2 / 255, labels=labels.tolist())
    ref = torchattacks.FGSM(PixelModel(default_subject).eval(), eps=2 / 255)(pixels, labels)
    assert np.allclose(ours.adversarial, ref.permute(0, 2, 3, 1).numpy(), atol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_matches_torchattacks(default_subject, pixels, norm):
    x = pixels[:2]
    labels = _labels(default_subject, x)
    model = PixelModel(default_subject).eval()
    if norm == "linf":
        ref = torchattacks.PGD(model, eps=4 / 255, alpha=1 / 255, steps=5, random_start=False)
        eps, alpha = 4 / 255, 1 / 255
    else:
        ref = torchattacks.PGDL2(model, eps=0.5, alpha=0.1, steps=5, random_start=False)
        eps, alpha = 0.5, 0.1
    theirs = ref(x, labels).permute(0, 2, 3, 1).numpy()
    ours = pgd(default_subject, x, eps=eps, alpha=alpha, steps=5, norm=norm, labels=labels.tolist())
    assert np.abs(ours.adversarial - theirs).max() < 1e-5
    if norm == "linf":
        assert ours.linf.max() <= 4 + 1e-3
    else:
        assert ours.l2.max() <= 0.5 + 1e-4


def test_targeted_pgd_matches_torchattacks(default_subject, pixels):
    x = pixels[:2]
    target = torch.tensor([413, 413])
    atk = torchattacks.PGD(
        PixelModel(default_subject).eval(), eps=4 / 255, alpha=1 / 255, steps=4, random_start=False
    )
    atk.set_mode_targeted_by_label(quiet=True)
    theirs = atk(x, target).permute(0, 2, 3, 1).numpy()
    ours = pgd(default_subject, x, eps=4 / 255, alpha=1 / 255, steps=4, target=413)
    assert np.abs(ours.adversarial - theirs).max() < 1e-5


def test_pgd_flips_every_bundled_sample(default_subject):
    imgs = [img for _, img in sample_images()]
    res = pgd(default_subject, imgs, eps=2 / 255, steps=10)
    assert res.success.all(), [default_subject.label(int(i)) for i in res.after[0][:, 0]]
    assert res.linf.max() <= 2 + 1e-3
    assert res.before[0].shape == (18, 5) and res.after[1].shape == (18, 5)


def test_szegedy_minimal_perturbation(default_subject):
    from skimage import data

    x = torch.as_tensor(data.coffee()).permute(2, 0, 1)[None].float() / 255
    x = torch.nn.functional.interpolate(x, size=(112, 112), mode="bilinear", align_corners=False)
    res = minimal(default_subject, x, target=413, lambdas=[1e2, 1e4, 1e6], steps=40, lr=0.01)
    assert res.success[0] and res.after[0][0, 0] == 413
    assert "lambda" in res.method and res.linf[0] < 40


def test_random_start_is_seeded(default_subject, pixels):
    a = pgd(default_subject, pixels[:1], eps=2 / 255, steps=2, random_start=True, seed=1)
    b = pgd(default_subject, pixels[:1], eps=2 / 255, steps=2, random_start=True, seed=1)
    assert np.array_equal(a.adversarial, b.adversarial)


def test_bad_arguments(default_subject, pixels):
    with pytest.raises(UserInputError):
        pgd(default_subject, pixels[:1], target=1000)
    with pytest.raises(UserInputError):
        pgd(default_subject, pixels[:1], norm="l1")
    with pytest.raises(UserInputError, match="out of range"):
        fool(default_subject, 1000)


def test_panel(default_subject, pixels, tmp_path):
    res = fgsm(default_subject, pixels[:1])
    img = Image.open(res.to_png(tmp_path / "p.png"))
    assert img.width > 3 * 224


# Budgets at about twice what the runs need: the path of an optimisation or evolution depends
# on the last bits of every forward pass (torch version, CPU, thread count), so a budget at
# the edge passes on one machine and not on another (30 steps gave espresso 0.9937 on 1 thread
# and 0.9905 on 2; a fresh clone elsewhere saw a fooling test end at 0.9859). Measured on 2
# threads: gradient ascent first reaches 0.99 at step 23 (Egyptian cat) and 30 (espresso) and
# ends at 0.9992 and 0.9981 after 60, the method's default; the CPPN evolution first reaches
# it at generation 47, 30 and 31 with seeds 0, 1 and 2 (0.9968-0.9979 after 90).
@pytest.mark.parametrize("cls", [285, 967])
def test_gradient_fooling_images_reach_99_percent(default_subject, cls):
    res = fool(default_subject, cls, "gradient", steps=60)
    assert res.confidence[0] >= 0.99 and res.top1[0] == default_subject.label(cls)


def test_cppn_fooling_image_reaches_99_percent(default_subject):
    # "rock beauty": random CPPN patterns already score high on it, as Nguyen et al. found
    # for some classes.
    res = fool(
        default_subject, 392, "cppn", generations=90, population=12, elite=3, sigma=0.5, rate=0.2, seed=0
    )
    assert res.confidence[0] >= 0.99
    assert np.all(np.diff(res.history) >= 0)  # elitism: the best never gets worse


def test_direct_encoding_evolution_improves_and_is_seeded(default_subject):
    kw = dict(generations=6, population=8, elite=2, genome=8, size=64, seed=3)
    a = fool(default_subject, 916, "evolve", **kw)
    b = fool(default_subject, 916, "evolve", **kw)
    assert np.array_equal(a.images, b.images)
    assert a.history[-1] > a.history[0]
