"""Notebook-style check of the result protocol (issue 18, item 4): every result type, built
small on the tiny model, shows itself as a PNG (``_repr_png_``) and in HTML (``_repr_html_``),
writes a PNG file, and comes back from ``save`` / ``load`` equal in every field."""

from __future__ import annotations

import ast
import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import convscope
from convscope.results import Result
from convscope.testing import tiny_subject

SRC = Path(convscope.__file__).parent
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def subject():
    return tiny_subject(size=32)


@pytest.fixture(scope="module")
def samples(subject):
    from convscope.inputs.sources import open_images

    return open_images("convscope:samples", transform=subject.transform)


@pytest.fixture(scope="module")
def x(subject, samples):
    return torch.stack([samples[i][0] if isinstance(samples[i], tuple) else samples[i] for i in range(2)])


def _scan(subject, samples):
    from convscope.scan.scanner import scan

    some = list(range(0, len(samples), 6))  # 18 of the bundled photos and crops
    return scan(subject, samples, ["conv2"], k=3, batch_size=9, workers=0, threshold_sample=9, indices=some)


def _dissection(subject, tmp):
    from convscope.dissect import BrodenDataset, dissect, make_synthetic_broden

    big = tiny_subject(size=48)
    data = BrodenDataset(make_synthetic_broden(tmp, n=6, size=48, seg=24))
    return dissect(big, data, ["block", "conv2"], batch_size=6, iou_threshold=0.01)


def _features():
    from convscope.represent.features import FeatureSet

    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 2] * 4)
    feats = {"conv1": rng.random((12, 8), dtype=np.float32), "conv2": rng.random((12, 16), dtype=np.float32)}
    valid = np.ones(12, bool)
    valid[5] = False
    names = [f"c{c}/{i}.png" for i, c in enumerate(labels)]
    return FeatureSet(feats, names, labels, ["a", "b", "c"], valid, "gap", "tiny", {"description": "test"})


def _neighbors(samples):
    from convscope.represent.retrieval import NeighborIndex, search_neighbors

    rng = np.random.default_rng(1)
    db = rng.random((6, 5), dtype=np.float32)
    index = NeighborIndex(db, "cosine")
    names = [r.name for r in samples.records][:6]
    first = samples.read(0)
    return search_neighbors(
        index, db[:1], 3, names, samples.read, query=names[0], query_image=first, layer="conv2", exclude=0
    )


def build(kind: str, subject, samples, x, tmp: Path):
    """A small instance of result type ``kind`` from the function that makes it."""
    rng = np.random.default_rng(0)
    if kind == "ScanResult":
        return _scan(subject, samples)
    if kind == "Dissection":
        return _dissection(subject, tmp / "broden")
    if kind == "DissectionComparison":
        from convscope.atlas import Atlas
        from convscope.atlas.build import compare_dissections

        atlas = Atlas.for_model(tmp / "atlas", {"name": "tiny"}, {"description": "synthetic"})
        atlas.write_dissection(_dissection(subject, tmp / "broden"), "synthetic")
        return compare_dissections([f"{atlas.path}:block", f"{atlas.path}:conv2"])
    if kind == "FeatureSet":
        return _features()
    if kind == "ProbeResult":
        from convscope.represent.probe import linear_probe

        labels = np.array([0, 1] * 10)
        feats = {"a": rng.normal(size=(20, 4)) + labels[:, None], "b": rng.normal(size=(20, 6))}
        return linear_probe(feats, labels, seed=0)
    if kind == "RetrievalScores":
        from convscope.represent.retrieval import evaluate_labels

        return evaluate_labels(rng.random((12, 4), dtype=np.float32), np.array([0, 1, 2] * 4))
    if kind == "Neighbors":
        return _neighbors(samples)
    if kind == "Projection":
        from convscope.represent.projection import project_features

        return project_features(rng.random((10, 6)), np.array([0, 1] * 5), ["a", "b"], "pca", layer="conv2")
    if kind == "SimilarityMatrix":
        from convscope.represent.similarity import compare_layers

        a = {"conv1": rng.random((10, 4)), "conv2": rng.random((10, 8))}
        return compare_layers(a, measure="cka", row_model="tiny")
    if kind in ("DiscrepancyMap", "EmpiricalRF"):
        from convscope.empirical import empirical_rf

        rf = empirical_rf(subject, x, "conv1", 0, patch=5, stride=4)
        return rf.maps[0] if kind == "DiscrepancyMap" else rf
    if kind == "SupportCheck":
        from convscope.empirical import gradient_support

        return gradient_support(subject, "conv2", samples=2)
    if kind == "Stimuli":
        from convscope.empirical import stimuli

        return stimuli(subject, rng.random((8, 8, 3)), "conv2", 0, stride=8, n=2)
    if kind == "Adversarial":
        from convscope.adversarial.attacks import pgd

        return pgd(subject, [samples.read(0), samples.read(1)], eps=4 / 255, steps=2)
    if kind == "Fooling":
        from convscope.adversarial.fooling import fool

        return fool(subject, 1, "gradient", steps=3, size=32)
    if kind == "Synthesis":
        from convscope.synthesis.visualize import class_model

        return class_model(subject, [0, 1], steps=3, size=32)
    if kind == "Dream":
        from convscope.synthesis.dream import dream

        return dream(subject, subject.preprocess.denormalize(x[:1]), "conv2", octaves=1, steps=2, jitter=2)
    if kind == "Inversion":
        from convscope.synthesis.inversion import invert

        return invert(subject, x[:1], ["conv1", "conv2"], restarts=1, steps=3)
    if kind == "AttributionMap":
        return convscope.explain(subject, x, "saliency", target=0)
    if kind == "SanityCheck":
        from convscope.attribution.trust import sanity_check

        def maps(s):
            return convscope.explain(s, x, "saliency", target=0).maps

        return sanity_check(maps, subject, ["fc", "conv2"])
    if kind == "Curve":
        from convscope.attribution.api import target_of
        from convscope.attribution.trust import deletion_insertion

        maps = convscope.explain(subject, x, "saliency", target=0).maps
        return deletion_insertion(subject, x, maps, target_of(subject, 0, x), steps=4)[0]
    if kind == "TrainResult":
        from convscope.train.loop import EpochMetrics, TrainResult

        history = [EpochMetrics(e, 2.0 / e, 0.3 * e, 2.1 / e, 0.25 * e, 1.5, 0.1 / e) for e in (1, 2, 3)]
        return TrainResult(history, [tmp / f"epoch_{e:03d}.pt" for e in (0, 1, 2, 3)])
    if kind == "ConceptSet":
        from convscope.concepts import fit_concepts

        return fit_concepts(subject, samples, "block", "nmf", 4, per_image=4, max_samples=200, workers=0)
    if kind in ("ConceptImportance", "ConceptExplanation"):
        from convscope.concepts import fit_concepts
        from convscope.concepts.explain import explain_concepts
        from convscope.concepts.importance import concept_importance

        cs = fit_concepts(subject, samples, "block", "nmf", 4, per_image=4, max_samples=200, workers=0)
        if kind == "ConceptExplanation":
            return explain_concepts(subject, x[0], cs, top=3, names={1: "stripes"})
        return concept_importance(subject, samples.subset(range(0, len(samples), 9)), cs, workers=0)
    if kind == "BasisComparison":
        from convscope.concepts.compare import BasisComparison

        rng = np.random.default_rng(0)
        pur = {"units": np.r_[np.nan, rng.random(7)], "random": rng.random(3), "concepts": rng.random(4)}
        det = {f: rng.random(len(p)) < 0.5 for f, p in pur.items()}
        maj = {f: rng.integers(-1, 3, len(p)) for f, p in pur.items()}
        labels = {f: ["red"] * len(p) for f, p in pur.items()}
        iou = {f: rng.random(len(p)) for f, p in pur.items()}
        dirs = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
        return BasisComparison("block", 4, "max", ["a", "b", "c"], 21, pur, maj, dirs, det, iou, labels, 0.04)
    if kind == "Evaluation":
        from convscope.attribution.evaluation import Evaluation

        rng = np.random.default_rng(0)
        scores = rng.random((2, 3, 5))
        scores[1, 2, 0] = np.nan
        up = {"road": False, "pixel_flipping": False, "faithfulness_correlation": True}
        return Evaluation(
            ["saliency", "edge"], list(up), [f"i{i}" for i in range(5)], scores, up, model="tiny"
        )
    if kind == "LayerVisuals":
        from convscope.synthesis.layer_visuals import visualize_layer

        return visualize_layer(subject, "conv2", [0, 1], diversity=2, steps=2, size=32)
    if kind == "ActivationAtlas":
        from convscope.synthesis.activation_atlas import activation_atlas

        return activation_atlas(
            subject, samples.subset(list(range(0, len(samples), 12))), "block", samples_per_image=4,
            layout="pca", grid=3, min_count=1, steps=2, size=16, workers=0,
        )  # fmt: skip
    raise AssertionError(kind)


# Every result type, by the name of its class. The test below keeps this list complete.
KINDS = [
    "ScanResult",
    "Dissection",
    "DissectionComparison",
    "FeatureSet",
    "ProbeResult",
    "RetrievalScores",
    "Neighbors",
    "Projection",
    "SimilarityMatrix",
    "DiscrepancyMap",
    "EmpiricalRF",
    "Stimuli",
    "SupportCheck",
    "Adversarial",
    "Fooling",
    "Synthesis",
    "Dream",
    "Inversion",
    "AttributionMap",
    "SanityCheck",
    "Curve",
    "TrainResult",
    "ConceptSet",
    "ConceptImportance",
    "ConceptExplanation",
    "BasisComparison",
    "Evaluation",
    "ActivationAtlas",
    "LayerVisuals",
]


def _result_classes() -> set[str]:
    """Names of the classes in the source tree that derive from Result (directly or not)."""
    bases: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                names = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                bases.setdefault(node.name, set()).update(names)
    found, grew = {"Result"}, True
    while grew:
        new = {c for c, b in bases.items() if b & found} - found
        found |= new
        grew = bool(new)
    return found - {"Result"}


def test_every_result_type_is_listed():
    assert _result_classes() == set(KINDS)


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a.cpu(), b)
    if isinstance(a, np.ndarray):
        return (
            isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
        )
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(
            _equal(getattr(a, f.name), getattr(b, f.name))
            for f in dataclasses.fields(a)
            if f.metadata.get("save", True) and f.name != "path"  # a feature folder records where it is
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(u, v) for u, v in zip(a, b))
    if isinstance(a, float) and np.isnan(a):
        return isinstance(b, float) and np.isnan(b)
    return type(a) is type(b) and a == b


def test_equal_sees_a_difference():
    a = {"x": np.zeros(3, np.float32), "t": (1, "a")}
    assert _equal(a, {"x": np.zeros(3, np.float32), "t": (1, "a")})
    assert not _equal(a, {"x": np.zeros(3, np.float64), "t": (1, "a")})
    assert not _equal(a, {"x": np.zeros(3, np.float32), "t": [1, "a"]})
    assert not _equal(torch.zeros(2), torch.ones(2))


@pytest.mark.parametrize("kind", KINDS)
def test_result_shows_itself_and_round_trips(kind, subject, samples, x, tmp_path):
    result = build(kind, subject, samples, x, tmp_path)
    assert type(result).__name__ == kind and isinstance(result, Result)
    png = result._repr_png_()
    assert png.startswith(PNG)
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert pixels.shape[0] > 16 and pixels.shape[1] > 16
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 8, "a blank picture"
    page = result._repr_html_()
    assert '<img src="data:image/png;base64,' in page and kind in page
    written = result.to_png(tmp_path / "pic.png")
    assert np.array_equal(np.asarray(Image.open(written).convert("RGB")), pixels)
    path = result.save(tmp_path / ("saved" if kind == "FeatureSet" else "saved.npz"))
    back = type(result).load(path)
    assert _equal(result, back)
    if kind == "ScanResult":
        back.source = result.source  # live, not saved: tested below
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(back._repr_png_())).convert("RGB")), pixels)


def test_load_refuses_another_type(tmp_path):
    from convscope.errors import UserInputError
    from convscope.represent.similarity import SimilarityMatrix, compare_layers

    path = compare_layers({"a": np.eye(4)}, measure="cka").save(tmp_path / "m.npz")
    assert SimilarityMatrix.load(path).values.shape == (1, 1)
    from convscope.represent.projection import Projection

    with pytest.raises(UserInputError, match="holds a SimilarityMatrix"):
        Projection.load(path)


def test_scan_picture_with_images_and_without(subject, samples, tmp_path):
    """A scan shows its units' top images when it knows them, the ranking when it does not."""
    result = _scan(subject, samples)
    rows = result.to_image(units=3, cell=48)
    back = type(result).load(result.save(tmp_path / "s.npz"))
    assert back.source is None
    ranking = back.to_image(units=3)
    assert rows.size != ranking.size
    assert rows.height >= 3 * 48  # one row of images per unit
    with_patches = result.to_image(units=2, subject=subject)
    assert with_patches.height > rows.height / 3 * 2


def test_a_damaged_or_hostile_file_is_a_one_line_error(tmp_path):
    import json

    import numpy as np
    import pytest

    from convscope.errors import UserInputError
    from convscope.results import META
    from convscope.synthesis import Synthesis

    def write(name, meta):
        path = tmp_path / name
        np.savez(path, **{META: np.array(json.dumps(meta))})
        return path

    cases = [
        write(
            "a.npz",
            {"class": "convscope.synthesis.engine:Synthesis", "fields": {"images": {"__array__": "x"}}},
        ),
        write("b.npz", {"class": "convscope.synthesis.engine:Synthesis", "fields": {"nope": 1}}),
        write("c.npz", {"fields": {}}),
        write(
            "d.npz",
            {
                "class": "convscope.synthesis.engine:Synthesis",
                "fields": {"x": {"__dataclass__": "convscope.nothing:Thing", "fields": {}}},
            },
        ),
        write(
            "e.npz",
            {
                "class": "convscope.synthesis.engine:Synthesis",
                "fields": {"x": {"__dataclass__": "os:system"}},
            },
        ),
    ]
    for path in cases:
        with pytest.raises(UserInputError) as err:
            Synthesis.load(path)
        assert "\n" not in str(err.value)
