"""Activation atlases on the tiny model: binning, counts, tiles, top classes and seeds checked
against brute-force computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.concepts import collect_activations
from convscope.errors import UserInputError
from convscope.represent.projection import project
from convscope.synthesis import visualize_directions
from convscope.synthesis.activation_atlas import activation_atlas, unit_square
from convscope.testing import tiny_subject
from convscope.units import Direction

LAYER = "block"
SETTINGS = dict(samples_per_image=8, max_samples=80, layout="pca", grid=4, min_count=2, steps=6, size=24)


@pytest.fixture(scope="module")
def subject():
    return tiny_subject(size=32)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("atlas-images")
    rng = np.random.default_rng(0)
    for i in range(12):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        pixels[: 4 * (i % 8)] //= 3
        Image.fromarray(pixels).save(out / f"im{i:02d}.png")
    (out / "broken.png").write_bytes(b"not a png")
    return out


@pytest.fixture(scope="module")
def atlas(subject, folder):
    return activation_atlas(subject, folder, LAYER, seed=3, workers=0, **SETTINGS)


def test_binning_and_counts_match_brute_force(subject, folder, atlas):
    acts = collect_activations(subject, folder, LAYER, per_image=8, max_samples=80, seed=3, workers=0)
    assert np.array_equal(atlas.where, acts.where.numpy())
    pts = project(acts.x.numpy(), "pca", seed=3)
    lo, hi = pts.min(0), pts.max(0)
    counts: dict[tuple[int, int], int] = {}
    for u, v in (pts - lo) / (hi - lo):
        r, c = min(int(v * 4), 3), min(int(u * 4), 3)
        counts[(r, c)] = counts.get((r, c), 0) + 1
    drawn = {k: n for k, n in counts.items() if n >= 2}
    assert {tuple(map(int, rc)): int(n) for rc, n in zip(atlas.cells, atlas.counts)} == drawn
    assert [tuple(rc) for rc in atlas.cells] == sorted(drawn)  # row-major
    assert np.allclose(atlas.points, unit_square(pts), atol=1e-6)
    # every vector is in one cell: drawn cells plus the sparse ones sum to all samples
    assert atlas.counts.sum() + (atlas.sample_cell < 0).sum() == len(atlas.points) == 80
    assert atlas.counts.sum() == sum(drawn.values())
    for i in range(len(atlas.cells)):
        assert (atlas.sample_cell == i).sum() == atlas.counts[i]
    # the mean vector's norm
    x = acts.x.numpy()
    for i in range(len(atlas.cells)):
        assert atlas.norms[i] == pytest.approx(np.linalg.norm(x[atlas.sample_cell == i].mean(0)), rel=1e-5)


def test_unreadable_images_counted(atlas):
    assert len(atlas.skipped) == 1 and atlas.info["images"] == 12
    assert 0 not in set(atlas.where[:, 0])  # broken.png sorts first


def test_tile_is_the_visualisation_of_the_mean_direction(subject, folder, atlas):
    acts = collect_activations(subject, folder, LAYER, per_image=8, max_samples=80, seed=3, workers=0)
    x = acts.x
    dirs = []
    for i in range(len(atlas.cells)):
        m = x[torch.from_numpy(atlas.sample_cell == i)].mean(0)
        dirs.append(Direction(LAYER, m / m.norm()))
    ref = visualize_directions(subject, dirs, steps=6, size=24, seed=3)
    # equal up to the float32 rounding of the mean (NumPy's pairwise sum against torch's)
    assert np.abs(atlas.tiles - ref.images).max() < 1e-5
    assert np.allclose(atlas.scores, ref.scores, rtol=1e-4)
    other = visualize_directions(subject, dirs[::-1], steps=6, size=24, seed=3)
    assert np.abs(atlas.tiles[0] - other.images[0]).max() > 1e-3  # the check can fail
    # the big picture holds each tile at its cell, the rest white
    big = atlas.image
    r, c = atlas.cells[0]
    assert np.array_equal(big[r * 24 : (r + 1) * 24, c * 24 : (c + 1) * 24], atlas.tiles[0])
    empty = [(r, c) for r in range(4) for c in range(4) if (r, c) not in {tuple(x) for x in atlas.cells}]
    if empty:
        r, c = empty[0]
        assert (big[r * 24 : (r + 1) * 24, c * 24 : (c + 1) * 24] == 1).all()


def test_top_class_is_the_most_frequent_prediction(subject, folder, atlas):
    from convscope.concepts.activations import as_source

    source = as_source(subject, folder)
    pred = {}
    for i in np.unique(atlas.where[:, 0]):
        img = source[int(i)]
        img = img[0] if isinstance(img, tuple) else img
        with torch.no_grad():
            pred[int(i)] = int(subject(img[None]).argmax())
    assert [pred[int(i)] for i in atlas.where[:, 0]] == atlas.predicted.tolist()
    for k in range(len(atlas.cells)):
        classes = [pred[int(i)] for i in atlas.where[atlas.sample_cell == k, 0]]
        best = max(sorted(set(classes)), key=classes.count)  # ties: the smaller index
        assert atlas.top_class[k] == best
        assert atlas.top_label[k] == subject.label(best)
        assert atlas.top_share[k] == pytest.approx(classes.count(best) / len(classes))


def test_typical_vectors_are_the_nearest_to_the_mean(subject, folder, atlas):
    acts = collect_activations(subject, folder, LAYER, per_image=8, max_samples=80, seed=3, workers=0)
    x, where = acts.x.numpy(), acts.where.numpy()
    for k in range(len(atlas.cells)):
        members = np.flatnonzero(atlas.sample_cell == k)
        d = np.linalg.norm(x[members] - x[members].mean(0), axis=1)
        want = where[members[np.argsort(d, kind="stable")[:8]]]
        got = atlas.typical[k][atlas.typical[k, :, 0] >= 0]
        assert np.array_equal(got, want)


def test_seeded(subject, folder, atlas):
    again = activation_atlas(subject, folder, LAYER, seed=3, workers=0, **SETTINGS)
    assert np.array_equal(again.tiles, atlas.tiles) and np.array_equal(again.where, atlas.where)
    other = activation_atlas(subject, folder, LAYER, seed=4, workers=0, **SETTINGS)
    assert not np.array_equal(other.where, atlas.where)


def test_progress_per_stage(subject, folder):
    seen = []
    activation_atlas(
        subject, folder, LAYER, seed=0, workers=0, progress=lambda d, t, s: seen.append(s), **SETTINGS
    )
    assert list(dict.fromkeys(seen)) == ["activations", "layout", "visualisation"]


@pytest.mark.parametrize(
    "bad", [{"layout": "mds"}, {"grid": 0}, {"min_count": 0}, {"steps": 0}, {"min_count": 10_000}]
)
def test_bad_settings_refused(subject, folder, bad):
    with pytest.raises(UserInputError):
        activation_atlas(subject, folder, LAYER, workers=0, **{**SETTINGS, **bad})


def test_picture(atlas, tmp_path):
    pic = atlas.to_image(cell=48)
    assert pic.size == (4 * 48, 4 * 48)
    assert atlas.to_png(tmp_path / "a.png").exists()
