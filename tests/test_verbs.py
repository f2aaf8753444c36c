"""The verbs at the package top level: one per family, the layer spec resolved once, the engine
chosen by name or object, and an unknown layer (or a model Ray cannot reload) failing before an
atlas is created, replaced or Ray started."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import convscope
from convscope.errors import LayerNotFoundError, NameNotFoundError, UserInputError
from convscope.inputs.sources import open_images
from convscope.scale import LocalEngine, RayEngine, resolve_engine
from convscope.testing import tiny_subject

VERBS = [
    "scan",
    "features",
    "dissect",
    "explain",
    "visualize",
    "class_model",
    "invert",
    "dream",
    "attack",
    "fool",
    "empirical_rf",
    "stimuli",
    "probe",
    "neighbors",
    "project",
    "compare",
    "train",
    "concepts",
]


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


@pytest.fixture(scope="module")
def subject():
    return tiny_subject()


@pytest.fixture(scope="module")
def images():
    return open_images("convscope:samples", pattern="co*")


def test_every_family_has_a_documented_verb():
    for name in VERBS:
        verb = getattr(convscope, name)
        assert callable(verb) and verb.__doc__, name
        assert name in convscope.__all__
    for gone in ("ray_scan", "ray_features", "ray_dissect"):
        assert not hasattr(convscope.scale, gone)


def test_importing_a_subpackage_does_not_shadow_its_verb():
    """``convscope.scan`` is the verb and the subpackage at once, whatever was imported first."""
    code = (
        "import convscope.scan.scanner, convscope.dissect.result, convscope.train.loop\n"
        "import convscope.scan.patches as patches\n"
        "from convscope.scan import ScanResult\n"
        "import convscope, convscope.verbs as v, inspect, sys\n"
        "for name in ('scan', 'dissect', 'train', 'concepts'):\n"
        "    obj = getattr(convscope, name)\n"
        "    assert callable(obj) and obj.__verb__ is getattr(v, name), obj\n"
        "    assert obj is sys.modules['convscope.' + name]\n"
        "    assert inspect.signature(obj) == inspect.signature(getattr(v, name))\n"
        "assert convscope.scan.ScanResult is ScanResult and patches.__name__ == 'convscope.scan.patches'\n"
        "from convscope.scan.result import ScanResult as R; assert R is ScanResult\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_verb_packages_run_their_verb(subject, images, monkeypatch):
    import convscope
    import convscope.verbs as v

    seen = []
    monkeypatch.setattr(convscope.scan, "__verb__", lambda *a, **k: seen.append((a, k)) or "ran")
    assert convscope.scan(subject, images, "conv1", k=2) == "ran"
    assert seen == [((subject, images, "conv1"), {"k": 2})]
    assert callable(v.scan)


def test_engines_by_name_or_object():
    assert isinstance(resolve_engine(None), LocalEngine) and isinstance(resolve_engine("local"), LocalEngine)
    ray = resolve_engine("ray", workers=3, address="auto")
    assert isinstance(ray, RayEngine) and ray.workers == 3 and ray.address == "auto"
    mine = RayEngine(workers=5)
    assert resolve_engine(mine) is mine
    with pytest.raises(NameNotFoundError, match="did you mean ray"):
        resolve_engine("rya")
    with pytest.raises(UserInputError):
        resolve_engine(42)


def test_scan_verb_resolves_the_spec_once_and_equals_the_scan(subject, images):
    from convscope.scan.scanner import scan

    seen = []

    def late(info):  # a callable spec: called once per layer per resolution
        seen.append(info.name)
        return info.name in ("block", "conv2")

    options = {"k": 3, "threshold_sample": 8, "batch_size": 8}
    got = convscope.scan(subject, images, late, **options)
    assert sorted(seen) == sorted(set(seen)) and set(got.layers) == {"block", "conv2"}
    want = scan(subject, images.with_transform(subject.transform), ["block", "conv2"], **options)
    for layer in want.layers:
        for crit in want.criteria:
            assert got.topk(layer, 1, crit).images.tolist() == want.topk(layer, 1, crit).images.tolist()
    calls = []
    convscope.scan(subject, images, "conv2", progress=lambda d, t: calls.append((d, t)), **options)
    assert calls and calls[-1][0] == calls[-1][1] == len(images)


def test_scan_to_atlas_resolves_the_spec_once(subject, images, tmp_path):
    from convscope.atlas import scan_to_atlas

    seen = []

    def only(info):
        seen.append(info.name)
        return info.name == "conv2"

    _, result = scan_to_atlas(subject, images, tmp_path / "a", only, k=2, threshold_sample=8, batch_size=8)
    assert result.layers == ["conv2"] and sorted(seen) == sorted(set(seen))


def test_features_verb_takes_a_spec(subject, images):
    from convscope.represent import extract_features

    fs = convscope.features(subject, images, "conv1,conv2", batch_size=8)
    want = extract_features(subject, images, ["conv1", "conv2"], batch_size=8)
    assert fs.layers == ["conv1", "conv2"]
    assert np.array_equal(fs.get("conv2"), want.get("conv2"))
    got, same = convscope.probe(fs, seed=0), convscope.probe(dict(want.features), want.labels, seed=0)
    assert [r.test_accuracy for r in got.rows] == [r.test_accuracy for r in same.rows]
    scores, found = convscope.neighbors(fs, [0, 1], "conv2", k=3, images=False)
    assert found.shape == (2, 3) and found[0, 0] == 0 and found[1, 0] == 1
    assert convscope.project(fs, "conv2", "pca").xy.shape == (len(images), 2)
    sim = convscope.compare(fs).values
    assert sim.shape == (2, 2) and np.allclose(np.diag(sim), 1, atol=1e-4)


# -- the representation verbs return Results, with the numbers of the functions under them --------
@pytest.fixture(scope="module")
def fs(subject, images):
    return convscope.features(subject, images, "conv1,conv2,fc", batch_size=8)


def test_neighbors_verb_returns_neighbors_with_the_index_numbers(fs, images):
    from convscope.represent import NeighborIndex, PostProcess
    from convscope.represent.retrieval import Neighbors

    x = fs.get("conv2")
    db = PostProcess.parse("l2").fit(x).transform(x)
    want_s, want_i = NeighborIndex(db, "cosine").search(db[[0, 2]], 3)
    one = convscope.neighbors(fs, 2, "conv2", k=3, post="l2")
    assert isinstance(one, Neighbors) and one.layer == "conv2" and one.pooling == fs.pooling
    assert one.indices.tolist() == want_i[1].tolist() and one.indices[0] == 2  # finds itself first
    np.testing.assert_array_equal(one.scores, want_s[1].astype(np.float64))
    assert one.names == [fs.names[i] for i in want_i[1]] and one.query == fs.names[2]
    assert one.images.shape[:2] == (3, 112) and one.images.dtype == np.uint8
    several = convscope.neighbors(fs, [0, 2], "conv2", k=3, post="l2")
    assert [n.indices.tolist() for n in several] == want_i.tolist()
    assert [n.query for n in several] == [fs.names[0], fs.names[2]]
    scores, found = convscope.neighbors(fs, [0, 2], "conv2", k=3, post="l2", images=False)
    np.testing.assert_array_equal(scores, want_s)
    np.testing.assert_array_equal(found, want_i)
    assert one.to_image().size[0] > 0  # the grid draws


def test_neighbors_skip_self_and_vector_queries(fs):
    from convscope.represent import NeighborIndex

    x = fs.get("conv2")
    s, i = NeighborIndex(x, "l2").search(x[[1, 3]], 4)
    skipped = convscope.neighbors(fs, [1, 3], "conv2", k=3, metric="l2", skip_self=True)
    assert [n.indices.tolist() for n in skipped] == [
        [j for j in row if j != q][:3] for q, row in zip((1, 3), i)
    ]
    _, arrays = convscope.neighbors(fs, [1, 3], "conv2", k=3, metric="l2", skip_self=True, images=False)
    assert arrays.tolist() == [n.indices.tolist() for n in skipped]
    vec = convscope.neighbors(fs, x[1], "conv2", k=2, metric="l2")  # one vector: one Neighbors
    assert vec.indices.tolist() == i[0][:2].tolist() and vec.query == "query vector 0"
    raw_s, raw_i = convscope.neighbors(x, x[[1, 3]], k=4, metric="l2")  # an array has no images
    np.testing.assert_array_equal(raw_s, s)
    np.testing.assert_array_equal(raw_i, i)
    with pytest.raises(UserInputError, match="images=False"):
        convscope.neighbors(x, [1], k=2, images=True)


def test_neighbors_without_images_says_how_to_do_without(fs):
    import dataclasses

    lost = dataclasses.replace(fs, source={})
    with pytest.raises(UserInputError, match="images=False"):
        convscope.neighbors(lost, 0, "conv2", k=2)
    assert convscope.neighbors(lost, [0], "conv2", k=2, images=False)[1].shape == (1, 2)
    with pytest.raises(UserInputError, match="one layer"):
        convscope.neighbors(fs, 0, "conv*", k=2)
    with pytest.raises(UserInputError, match="images 0"):
        convscope.neighbors(fs, [len(fs.names)], "conv2", k=2)


def test_project_verb_returns_a_projection(fs):
    from convscope.represent import project
    from convscope.represent.projection import Projection

    got = convscope.project(fs, "conv2", "pca", seed=0)
    assert isinstance(got, Projection) and (got.layer, got.method) == ("conv2", "pca")
    np.testing.assert_array_equal(got.xy, project(fs.get("conv2"), "pca", seed=0))
    np.testing.assert_array_equal(got.labels, fs.valid_labels())
    assert got.classes == fs.classes and got.names == [fs.names[i] for i in fs.valid_indices()]
    plain = convscope.project(fs.get("conv1"), method="pca")
    np.testing.assert_array_equal(plain.xy, project(fs.get("conv1"), "pca"))
    assert (plain.labels == -1).all() and plain.to_image().size[0] > 0


def test_compare_verb_returns_a_similarity_matrix(fs):
    import dataclasses

    from convscope.represent import similarity_matrix
    from convscope.represent.similarity import SimilarityMatrix

    got = convscope.compare(fs, measure="rsa", layers="conv*")
    feats = {n: fs.get(n) for n in ("conv1", "conv2")}
    assert isinstance(got, SimilarityMatrix) and got.rows == got.cols == ["conv1", "conv2"]
    np.testing.assert_array_equal(got.values, similarity_matrix(feats, feats, "rsa"))
    assert got.row_model == got.col_model == fs.model and got.headline() == f"RSA: {fs.model}"
    other = dataclasses.replace(fs, model="other")
    two = convscope.compare(fs, other, layers="fc")
    assert (
        two.rows == ["fc"] and two.cols == fs.layers and (two.row_model, two.col_model) == (fs.model, "other")
    )
    np.testing.assert_array_equal(
        two.values, similarity_matrix({"fc": fs.get("fc")}, dict(feats, fc=fs.get("fc")), "cka")
    )
    fewer = dataclasses.replace(fs, names=fs.names[::-1])
    with pytest.raises(UserInputError, match="same images"):
        convscope.compare(fs, fewer)


def test_stored_layers_take_the_layer_vocabulary(fs):
    def convs(info):
        convs.calls.append(info.name)
        return info.name.startswith("conv")

    convs.calls = []
    by_glob = convscope.probe(fs, layers="conv*", seed=0)
    by_call = convscope.probe(fs, layers=convs, seed=0)
    by_list = convscope.probe(fs, layers=["conv2", "conv1, conv2"], seed=0)
    assert [r.layer for r in by_glob.rows] == [r.layer for r in by_call.rows] == ["conv1", "conv2"]
    assert convs.calls == fs.layers  # resolved once: one call per stored layer
    assert [r.layer for r in by_list.rows] == ["conv2", "conv1"]
    assert [r.layer for r in convscope.probe(fs, layers="all", seed=0).rows] == fs.layers
    with pytest.raises(NameNotFoundError, match="did you mean conv2"):
        convscope.probe(fs, layers="conv1,conv22")
    with pytest.raises(NameNotFoundError):
        convscope.project(fs, "bn*")
    with pytest.raises(UserInputError, match="accepts no layer"):
        convscope.compare(fs, layers=lambda n: False)


def test_one_layer_verbs_refuse_several(subject):
    with pytest.raises(UserInputError, match="one layer"):
        convscope.dream(subject, torch.rand(1, 3, 32, 32), "conv1,conv2")
    with pytest.raises(LayerNotFoundError, match="conv2"):
        convscope.visualize(subject, "conv22", [0])


# -- an unknown layer fails before anything is written or started (Ray included) ----------------
@pytest.fixture(scope="module")
def atlas(subject, images, tmp_path_factory):
    from convscope.atlas import scan_to_atlas

    out = tmp_path_factory.mktemp("old") / "atlas"
    scan_to_atlas(subject, images, out, "conv2", k=2, threshold_sample=8, batch_size=8)
    return out


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("engine", ["local", "ray", RayEngine(workers=1)])
def test_a_layer_typo_with_overwrite_leaves_the_atlas(subject, images, atlas, engine):
    from convscope.atlas import scan_to_atlas

    before = _snapshot(atlas)
    with pytest.raises(LayerNotFoundError, match="conv2"):
        scan_to_atlas(subject, images, atlas, "conv22", engine=engine, overwrite=True)
    assert _snapshot(atlas) == before and not _ray_running()


def test_a_model_ray_cannot_reload_fails_before_the_atlas_is_replaced(subject, images, atlas):
    pytest.importorskip("ray")
    from convscope.atlas import scan_to_atlas

    before = _snapshot(atlas)
    with pytest.raises(UserInputError, match="loaded by name or file"):
        scan_to_atlas(subject, images, atlas, "conv2", engine="ray", overwrite=True)
    assert _snapshot(atlas) == before and not _ray_running()


def test_features_and_dissect_typos_fail_before_ray_or_a_folder(subject, images, tmp_path):
    from convscope.atlas.build import features_to_atlas
    from convscope.dissect import BrodenDataset, make_synthetic_broden

    data = BrodenDataset(make_synthetic_broden(tmp_path / "b", n=8, size=32, seg=16))
    for engine in ("ray", RayEngine()):
        with pytest.raises(LayerNotFoundError, match="conv2"):
            convscope.features(subject, images, "conv22", engine=engine, out=tmp_path / "f")
        with pytest.raises(LayerNotFoundError, match="conv2"):
            features_to_atlas(subject, images, tmp_path / "atlas", "conv22", engine=engine)
        with pytest.raises(LayerNotFoundError, match="conv2"):
            convscope.dissect(subject, data, "conv22", engine=engine, state=tmp_path / "s")
    assert not any(p.name in ("f", "atlas", "s") for p in tmp_path.iterdir()) and not _ray_running()


def test_scan_command_with_ray_and_a_typo_keeps_the_atlas(tmp_path, capsys):
    from convscope.cli.main import main

    out = tmp_path / "atlas"
    common = ["scan", "torchvision:squeezenet1_1", "--weights", "none", "--data", "convscope:samples"]
    common += ["--pattern", "co*", "--k", "2", "--threshold-sample", "8", "--out", str(out)]
    assert main([*common, "--layers", "features.4"]) == 0
    before = _snapshot(out)
    capsys.readouterr()
    code = main([*common, "--layers", "features.44", "--engine", "ray", "--overwrite"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "features.4" in err, err
    assert _snapshot(out) == before and not _ray_running()
