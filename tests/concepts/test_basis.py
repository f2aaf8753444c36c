"""The concept encoder as a basis of units: torch codes equal to the fitted methods' own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convscope.concepts import fit_dictionary
from convscope.concepts.basis import fingerprint


def test_nmf_codes_solve_the_same_problem_as_scikit_learn_with_penalties(acts):
    from sklearn.decomposition import non_negative_factorization

    cs = fit_dictionary(acts.x, "nmf", 5, seed=1, alpha_W=0.01, l1_ratio=0.5, max_iter=500, tol=1e-6)
    x = acts.x.double().numpy()
    theirs, _, _ = non_negative_factorization(
        x,
        H=cs.dictionary.double().numpy(),
        n_components=5,
        init="custom",
        update_H=False,
        alpha_W=0.01,
        l1_ratio=0.5,
        max_iter=2000,
        tol=1e-8,
    )
    ours = cs.encode(acts.x).double().numpy()
    assert (ours >= 0).all()
    # the same convex problem: equal codes, and an unpenalised fit would differ (the penalty counts)
    assert np.abs(ours - theirs).max() < 1e-3 * max(1.0, float(np.abs(theirs).max()))
    plain, _, _ = non_negative_factorization(
        x, H=cs.dictionary.double().numpy(), n_components=5, init="custom", update_H=False, max_iter=2000
    )
    assert np.abs(plain - theirs).max() > 1e-2


@pytest.mark.parametrize("method", ["nmf", "pca", "ica", "sae-topk", "sae-batchtopk"])
def test_maps_and_rows_agree_and_codes_match_the_fit(acts, method):
    options = {"steps": 100, "batch_size": 64} if method.startswith("sae") else {}
    cs = fit_dictionary(acts.x, method, 4, seed=0, **options)
    basis = cs.basis()
    rows = basis(acts.x)
    assert rows.shape == (len(acts.x), 4)
    # the fit's own codes (usage = their mean) come back from the basis
    assert torch.allclose(rows.mean(dim=0), cs.usage, atol=1e-3, rtol=1e-3)
    maps = acts.x[:64].reshape(4, 4, 4, -1).permute(0, 3, 1, 2)  # (B, C, H, W)
    codes = basis(maps)
    assert codes.shape == (4, 4, 4, 4)
    assert torch.allclose(codes.permute(0, 2, 3, 1).reshape(64, 4), rows[:64], atol=1e-5)


def test_fingerprint_tells_dictionaries_apart(acts):
    a = fit_dictionary(acts.x, "pca", 3)
    b = fit_dictionary(acts.x, "pca", 4)
    assert fingerprint(a) == fingerprint(fit_dictionary(acts.x, "pca", 3)) != fingerprint(b)
    with pytest.raises(Exception, match="encode"):
        a.basis()(torch.zeros(2, 3))


def test_heatmaps_work_on_a_fresh_subject(acts, folder):
    from convscope.testing import tiny_subject

    cs = fit_dictionary(acts.x, "nmf", 3, layer="block")
    fresh = tiny_subject(size=32)  # layers not traced yet: the recorder traces them first
    maps = cs.heatmaps(fresh, sorted(folder.iterdir())[:2])
    assert maps.shape == (2, 3, 8, 8) and (maps >= 0).all()


def test_directions_are_the_normalised_dictionary_rows(acts):
    cs = fit_dictionary(acts.x, "nmf", 3, layer="block")
    d = cs.directions([2, 0])
    assert [x.name for x in d] == ["concept2", "concept0"] and d[0].layer == "block"
    assert torch.allclose(d[0].vector * cs.dictionary[2].norm(), cs.dictionary[2], atol=1e-6)
    with pytest.raises(Exception, match="0..2"):
        cs.directions([3])


@pytest.mark.parametrize("method", ["ica", "sae-topk"])
def test_directions_are_what_the_codes_read(acts, method):
    options = {"steps": 30, "batch_size": 64} if method.startswith("sae") else {}
    cs = fit_dictionary(acts.x, method, 3, layer="block", seed=0, **options)
    basis = cs.basis()
    x0 = acts.x[:5]
    for d in cs.directions():
        i = int(d.name.removeprefix("concept"))
        step = 0.5 * d.vector
        # a step along the concept's direction raises its code the most a unit step can
        # (Cauchy-Schwarz: 0.5 |unmixing_i|); the mixing row (the dictionary) raises it less
        if method == "ica":
            gain = basis(x0 + step)[:, i] - basis(x0)[:, i]
            best = 0.5 * cs.state["unmixing"][i].norm()
            assert torch.allclose(gain, best.expand(5), rtol=1e-3)
        else:
            w = cs.state["encoder_weight"][:, i]
            assert torch.allclose(d.vector, w / w.norm(), atol=1e-6)
