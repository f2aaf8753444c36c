"""A concept's top-K images come from the scan with the concept encoder as the units."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convscope.concepts import fit_dictionary
from convscope.concepts.topk import scan_concepts
from convscope.errors import ConvscopeError, UserInputError
from convscope.inputs.sources import open_images
from tests.concepts.conftest import LAYER


@pytest.fixture(scope="module")
def nmf(acts):
    return fit_dictionary(acts.x, "nmf", 3, layer=LAYER, seed=0)


def test_concept_top_k_matches_brute_force_over_the_heat_maps(subject, folder, nmf):
    res = scan_concepts(subject, folder, nmf, k=4, batch_size=5, workers=0, threshold_sample=1000)
    src = open_images(folder, transform=subject.transform)
    x = torch.stack([src[i][0] for i in range(len(src))])
    maps = nmf.heatmaps(subject, x)  # (N, 3, H, W)
    assert res.channels[LAYER] == 3 and res.config["bases"][LAYER] == nmf.basis().fingerprint
    for crit, score in {"max": maps.flatten(2).amax(2), "mean": maps.flatten(2).mean(2)}.items():
        for c in range(3):
            top = res.topk(LAYER, c, crit)
            best = np.sort(score[:, c].numpy())[::-1][:4]
            assert np.allclose(top.scores, best, atol=1e-4), (crit, c)
            assert np.allclose(score[top.images, c].numpy(), top.scores, atol=1e-4)
    top = res.topk(LAYER, 1, "max")
    m = maps[int(top.images[0]), 1]
    assert m[top.ys[0], top.xs[0]] == m.max()
    stats = res.stats(LAYER)
    assert np.allclose(stats.max, maps.amax(dim=(0, 2, 3)).numpy(), atol=1e-4)


def test_directions_stay_in_channel_space_and_resume_refuses_another_basis(
    subject, folder, nmf, acts, tmp_path
):
    res = scan_concepts(subject, folder, nmf, k=2, directions=2, workers=0, criteria=("max",))
    assert res.directions[LAYER].shape == (2, 8)  # directions of the 8 channels
    assert len(res.topk(LAYER, 1, "max", direction=True)) == 2
    ckpt = tmp_path / "scan.pt"
    scan_concepts(subject, folder, nmf, k=2, workers=0, criteria=("max",), checkpoint=ckpt)
    other = fit_dictionary(acts.x, "pca", 3, layer=LAYER)
    with pytest.raises(ConvscopeError, match="other settings"):
        scan_concepts(subject, folder, other, k=2, workers=0, criteria=("max",), checkpoint=ckpt, resume=True)


def test_a_basis_of_the_wrong_width_is_refused(subject, folder, acts):
    from convscope.scan.scanner import scan

    cs = fit_dictionary(acts.x[:, :4], "pca", 2, layer=LAYER)
    src = open_images(folder, transform=subject.transform)
    with pytest.raises(UserInputError, match="4 channels"):
        scan(subject, src, [LAYER], bases={LAYER: cs.basis()})


def test_a_basis_key_naming_several_layers_is_refused(subject, folder, acts):
    from convscope.scan.scanner import scan

    cs = fit_dictionary(acts.x, "pca", 2, layer=LAYER)
    src = open_images(folder, transform=subject.transform)
    with pytest.raises(UserInputError, match=r"names \d+ layers"):
        scan(subject, src, [LAYER], bases={"*": cs.basis()})
