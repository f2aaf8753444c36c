"""Streamed activations and concept dictionaries (issue 20, items 1-2) on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import convscope
from convscope.concepts import ConceptSet, collect_activations, fit_concepts, fit_dictionary, stability
from convscope.concepts.activations import Reservoir
from convscope.errors import UserInputError
from tests.concepts.conftest import LAYER


def test_the_reservoir_is_bounded_seeded_and_true_to_the_layer(subject, folder):
    seen = []
    a = collect_activations(
        subject,
        folder,
        LAYER,
        per_image=16,
        max_samples=19,
        seed=3,
        workers=0,
        batch_size=5,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert a.seen == 12 * 16 >= 10 * 19  # ten times more positions offered than kept
    assert a.x.shape == (19, 8) and a.x.dtype == torch.float32 and a.where.shape == (19, 3)
    assert seen == [(5, 12), (10, 12), (12, 12)]
    b = collect_activations(
        subject, folder, LAYER, per_image=16, max_samples=19, seed=3, workers=0, batch_size=5
    )
    assert torch.equal(a.x, b.x) and torch.equal(a.where, b.where)
    c = collect_activations(
        subject, folder, LAYER, per_image=16, max_samples=19, seed=4, workers=0, batch_size=5
    )
    assert not torch.equal(a.where, c.where)
    # every row is the layer's activation at the position it says it came from
    paths = sorted(folder.glob("*.png"))
    with torch.inference_mode(), subject.record([LAYER]) as rec:
        subject(subject.load_images(paths))
    maps = rec[LAYER]
    i, y, x = a.where.T
    assert torch.allclose(a.x, maps[i, :, y, x], atol=1e-6)
    assert len(set(map(tuple, a.where.tolist()))) == 19  # no position twice


def test_reservoir_sampling_is_uniform_over_the_stream():
    hits = torch.zeros(1000)
    for trial in range(200):
        r = Reservoir(100, 1, torch.Generator().manual_seed(trial))
        for start in range(0, 1000, 37):
            rows = torch.arange(start, min(start + 37, 1000)).float()[:, None]
            r.add(rows, torch.zeros(len(rows), 3, dtype=torch.int64))
        x, _ = r.rows()
        assert len(x) == 100 and len(x.unique()) == 100
        hits[x[:, 0].long()] += 1
    share = hits / 200  # each of the 1000 rows should be kept with probability 0.1
    deciles = share.reshape(10, 100).mean(dim=1)  # early rows are not favoured over late ones
    assert (deciles - 0.1).abs().max() < 0.01, deciles


def test_nmf_objective_matches_scikit_learn_at_equal_settings(subject, folder, acts):
    from sklearn.decomposition import NMF

    cs = fit_concepts(
        subject,
        folder,
        LAYER,
        "nmf",
        4,
        per_image=16,
        max_samples=150,
        seed=0,
        workers=0,
        init="random",
        max_iter=300,
    )
    x = acts.x.double().numpy()
    sk = NMF(n_components=4, init="random", solver="cd", max_iter=300, random_state=0).fit(x)
    theirs = sk.reconstruction_err_ / np.linalg.norm(x)
    assert cs.samples == 150 and cs.dictionary.shape == (4, 8)
    assert abs(cs.error - theirs) <= 0.01 * theirs
    # the encoder is NMF's transform: codes solved with the fitted components held fixed
    assert np.allclose(cs.encode(acts.x[:20]).numpy(), sk.transform(x[:20]), atol=1e-3)
    assert 0 < cs.sparsity <= 1 and cs.usage.shape == (4,)


def test_pca_reconstruction_matches_scikit_learn(acts):
    from sklearn.decomposition import PCA

    cs = fit_dictionary(acts.x, "pca", 5, layer=LAYER)
    x = acts.x.double().numpy()
    sk = PCA(n_components=5).fit(x)
    theirs = sk.inverse_transform(sk.transform(x))
    ours = cs.decode(cs.encode(acts.x)).double().numpy()
    assert np.allclose(ours, theirs, atol=1e-4)
    assert cs.error == pytest.approx(np.linalg.norm(x - theirs) / np.linalg.norm(x), rel=1e-4)
    more = fit_dictionary(acts.x, "pca", 7, layer=LAYER)
    assert more.error < cs.error


@pytest.mark.parametrize("method", ["nmf", "pca", "ica", "sae-topk"])
def test_save_load_round_trip_encodes_equally(acts, method, tmp_path):
    options = {"steps": 20, "batch_size": 64, "k": 2} if method.startswith("sae") else {}
    cs = fit_dictionary(acts.x, method, 4, layer=LAYER, seed=1, **options)
    back = ConceptSet.load(cs.save(tmp_path / "c.npz"))
    assert back.method == method and back.n == 4 and back.error == cs.error
    assert torch.equal(back.dictionary, cs.dictionary)
    assert torch.allclose(back.encode(acts.x), cs.encode(acts.x), atol=1e-6)
    assert np.load(tmp_path / "c.npz", allow_pickle=False)["dictionary"].shape == (4, 8)


def test_stability_is_one_for_the_same_set_and_less_across_seeds(acts):
    a = fit_dictionary(acts.x, "nmf", 4, layer=LAYER, seed=0, init="random", max_iter=50)
    b = fit_dictionary(acts.x, "nmf", 4, layer=LAYER, seed=1, init="random", max_iter=50)
    assert stability(a, a) == pytest.approx(1.0)
    shuffled = ConceptSet(LAYER, "nmf", 4, a.dictionary[[2, 0, 3, 1]])
    assert stability(a, shuffled) == pytest.approx(1.0)  # the order of atoms does not matter
    assert stability(a, b) < 1 - 1e-4


def test_heatmaps_and_picture(subject, folder, acts):
    cs = fit_dictionary(acts.x, "nmf", 4, layer=LAYER)
    paths = sorted(folder.glob("*.png"))[:3]
    maps = cs.heatmaps(subject, paths)
    assert maps.shape == (3, 4, 8, 8)
    rows = acts.where[acts.where[:, 0] < 3]
    i, y, x = rows.T
    codes = cs.encode(acts.x[acts.where[:, 0] < 3])
    assert torch.allclose(maps[i, :, y, x], codes, atol=1e-4)
    pixels = np.asarray(cs.to_image())
    assert pixels.shape[0] > 100 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 8


def test_nmf_refuses_negative_activations_unless_clipped(subject, folder):
    a = collect_activations(subject, folder, "conv2", per_image=4, max_samples=40, workers=0)
    assert a.x.min() < 0  # conv2 is before its ReLU
    with pytest.raises(UserInputError, match="post-activation") as err:
        fit_dictionary(a.x, "nmf", 3, layer="conv2")
    assert "\n" not in str(err.value)
    clipped = fit_dictionary(a.x, "nmf", 3, layer="conv2", clip=True)
    assert clipped.settings["clip"] is True and clipped.encode(a.x).min() >= 0


def test_the_verb(subject, folder):
    seen = []
    cs = convscope.concepts(
        subject,
        folder,
        LAYER,
        method="pca",
        n=3,
        per_image=8,
        max_samples=50,
        workers=0,
        progress=lambda d, t: seen.append(d),
    )
    same = fit_concepts(subject, folder, LAYER, "pca", 3, per_image=8, max_samples=50, workers=0)
    assert isinstance(cs, ConceptSet) and torch.equal(cs.dictionary, same.dictionary)
    assert seen[-1] == 12 and cs.model == "tiny"
    sae = convscope.concepts(
        subject,
        folder,
        LAYER,
        method="sae-batchtopk",
        n=8,
        per_image=8,
        max_samples=50,
        workers=0,
        device="cpu",
        steps=10,
        sae_batch_size=32,
        k=2,
    )
    assert sae.settings["batch_size"] == 32 and len(sae.curve) == 10 and sae.settings["threshold"] > 0
    assert sae.encode(torch.zeros(1, 8)).shape == (1, 8)
    with pytest.raises(convscope.LayerNotFoundError):
        convscope.concepts(subject, folder, "blokc", n=3)
    with pytest.raises(UserInputError, match="one layer"):
        convscope.concepts(subject, folder, "block,conv2", n=3)
    with pytest.raises(UserInputError, match="did you mean 'nmf'"):
        convscope.concepts(subject, folder, LAYER, method="nnmf", n=3)


def test_the_reservoir_grows_only_as_rows_come():
    res = Reservoir(100_000, 4, torch.Generator().manual_seed(0))
    res.add(torch.ones(10, 4), torch.zeros(10, 3, dtype=torch.int64))
    assert res.x.shape[0] <= 4096  # not the whole capacity for ten rows
    big = torch.arange(20_000 * 4, dtype=torch.float32).reshape(20_000, 4)
    res.add(big, torch.zeros(20_000, 3, dtype=torch.int64))
    x, _ = res.rows()
    assert len(x) == 20_010 and torch.equal(x[10:], big) and res.x.shape[0] <= 100_000


def test_nmf_with_another_loss_is_refused_before_the_fit(acts):
    with pytest.raises(UserInputError, match="Frobenius"):
        fit_dictionary(acts.x, "nmf", 3, beta_loss="kullback-leibler", solver="mu")


def test_fit_progress_counts_the_sae_steps_and_one_step_otherwise(subject, folder):
    sae_calls, pca_calls = [], []
    options = dict(per_image=4, workers=0)
    sae = fit_concepts(
        subject, folder, LAYER, "sae-topk", 2, steps=7, sae_batch_size=16, **options,
        fit_progress=lambda d, t: sae_calls.append((d, t)),
    )  # fmt: skip
    pca = fit_concepts(
        subject, folder, LAYER, "pca", 2, fit_progress=lambda d, t: pca_calls.append((d, t)), **options
    )
    assert sae_calls == [(i, 7) for i in range(1, 8)]
    assert pca_calls == [(0, 1), (1, 1)]
    assert "progress" not in sae.settings and "progress" not in pca.settings


def test_nmf_refuses_more_concepts_than_channels_and_the_repr_is_one_line(acts):
    with pytest.raises(UserInputError, match="at most 8 concepts"):
        fit_dictionary(acts.x, "nmf", 9)
    wide = fit_dictionary(acts.x, "sae-topk", 12, steps=5, sae_k=2, sae_batch_size=32)  # overcomplete is fine
    assert wide.dictionary.shape == (12, 8) and wide.settings["k"] == 2
    text = repr(fit_dictionary(acts.x, "pca", 3))
    assert text.startswith("ConceptSet(") and "\n" not in text and "tensor" not in text
