"""evaluate: every method x metric on N images; validation before work, seeds, checkpoint/resume,
skipped files, callables; and the issue's Done-when test on the default model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import convscope
from convscope.attribution import metrics as M
from convscope.attribution.evaluator import derived_seed, evaluate, fingerprint
from convscope.errors import NameNotFoundError, UserInputError
from convscope.testing import tiny_subject


def _one(metric, opts):
    """evaluate's keywords for one metric with its options."""
    return {"metrics": [metric], "metric_options": {metric: opts}}


FAST = {"faithfulness_correlation": {"runs": 6, "subset": 64}, "pixel_flipping": {"step": 64}}


@pytest.fixture()
def subject():
    s = tiny_subject(size=32)
    s.model.eval()
    return s


@pytest.fixture()
def x():
    return torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def run(subject, x, **kw):
    metrics = kw.pop("metrics", ["faithfulness_correlation", "pixel_flipping"])
    kw.setdefault("metric_options", {k: v for k, v in FAST.items() if k in metrics})
    methods = kw.pop("methods", ["saliency", "random"])
    return evaluate(subject, x, methods, metrics, chunk=kw.pop("chunk", 4), **kw)


def test_table_has_every_pair_and_scores_equal_the_metric_called_directly(subject, x):
    ev = run(subject, x)
    assert ev.scores.shape == (2, 2, 10) and np.isfinite(ev.scores).all()
    assert len(ev.table()) == 4 and ev.images == [f"image {i}" for i in range(10)]
    assert ev.seconds.shape == (2, 2) and (ev.seconds > 0).all()
    # chunk 1 (images 4..7) of saliency under pixel flipping, by hand
    xs = x[4:8]
    cls = subject.model(xs).argmax(-1)
    maps = convscope.explain(
        subject, xs, "saliency", target=convscope.attribution.Target("class", tuple(cls.tolist()))
    )
    want = M.pixel_flipping(subject, xs, maps, cls, step=64, seed=derived_seed(0, "pixel_flipping", 1))
    np.testing.assert_array_equal(ev.score("saliency", "pixel_flipping")[4:8], want.numpy())


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"methods": ["salency"]}, "saliency"),
        ({"metrics": ["pixel_flip"]}, "pixel_flipping"),
        ({"metric_options": {"pixel_flipping": {"stpe": 3}}}, "step"),
        ({"metric_options": {"road": {}}}, "not among"),
        ({"metric_options": {"pixel_flipping": {"seed": 3}}}, "sets 'seed' itself"),
        ({"metric_options": {"pixel_flipping": {"curve": True}}}, "one score per image"),
        ({"options": {"layr": "x"}}, "layr"),
        ({"options": {"saliency": {"layer": "x"}, "random": {}}}, "layer"),
        ({"metrics": ["pointing_game"]}, "masks"),
        ({"target": "conv1:0"}, "class scores"),
        ({"target": "class:99"}, ""),
        ({"names": ["a", "b"]}, "names"),
        ({"chunk": 0}, "chunk"),
        ({"methods": ["rise"], "options": {"fill": "noise"}}, "fill"),  # a value, not a name
        ({"methods": ["lrp"], "options": {"composite": "nope"}}, "composite"),
        ({"target": convscope.attribution.Target("class", (0, 1, 2))}, "one per image"),
        ({"metrics": ["road"], "metric_options": {"road": {"order": 42}}}, "order 42: use morf, lerf"),
        (_one("region_perturbation", {"order": "x"}), "order"),
        (_one("pixel_flipping", {"baseline": "gray"}), "baseline"),
        ({"metrics": ["pixel_flipping"], "metric_options": {"pixel_flipping": {"step": 0}}}, "step"),
        (_one("faithfulness_correlation", {"runs": 0}), "runs"),
        ({"metrics": ["road"], "metric_options": {"road": {"percentiles": []}}}, "percentiles"),
        (_one("model_randomisation", {"similarity": "l2"}), "ssim"),
        (_one("model_randomisation", {"layers": []}), "layers"),
        (_one("model_randomisation", {"reduce": "x"}), "reduce"),
    ],
)
def test_everything_is_checked_before_any_work(subject, x, kw, match):
    calls = []

    def watch(subj, images, classes):
        calls.append(1)
        return images.abs().sum(1)

    methods = kw.pop("methods", ["saliency", "random", watch])
    with pytest.raises(UserInputError, match=match):
        run(subject, x, methods=methods, progress=lambda d, t: calls.append((d, t)), **kw)
    assert calls == []


def test_unknown_names_suggest_close_ones(subject, x):
    with pytest.raises(NameNotFoundError, match="did you mean"):
        run(subject, x, methods=["gradcamm"])


def test_same_seed_same_table_other_seed_other_draws(subject, x):
    a, b = run(subject, x, seed=5), run(subject, x, seed=5)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert a.to_csv().splitlines()[1:] != [] and [r["mean"] for r in a.table()] == [
        r["mean"] for r in b.table()
    ]
    c = run(subject, x, seed=6)
    # the random baseline and faithfulness correlation's subsets come from the seed
    assert not np.array_equal(
        a.score("random", "faithfulness_correlation"), c.score("random", "faithfulness_correlation")
    )
    # every metric draws its own stream from the same seed
    assert derived_seed(5, "road", 0) != derived_seed(5, "infidelity", 0) != derived_seed(5, "road", 1)


def test_resume_gives_the_uninterrupted_scores_bit_for_bit(subject, x, tmp_path):
    full = run(subject, x, checkpoint=tmp_path / "full.npz")
    ckpt = tmp_path / "part.npz"
    seen = []

    def stop(done, total):
        seen.append(done)
        if done >= 12:  # chunk 1 finished (8 images x 2 methods = 16 pairs), in chunk 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(subject, x, checkpoint=ckpt, progress=stop)
    assert ckpt.exists()
    resumed_from = []
    again = run(subject, x, checkpoint=ckpt, progress=lambda d, t: resumed_from.append(d))
    assert resumed_from[0] == 8  # one chunk (4 images x 2 methods) was saved before the stop
    np.testing.assert_array_equal(again.scores, full.scores)
    assert again.targets == full.targets and again.images == full.images
    # a finished checkpoint gives the result again without work
    done = run(subject, x, checkpoint=ckpt, progress=lambda d, t: resumed_from.append(d))
    np.testing.assert_array_equal(done.scores, full.scores)


def test_checkpoint_of_other_settings_is_refused_and_left_as_it_is(subject, x, tmp_path):
    ckpt = tmp_path / "c.npz"
    run(subject, x, checkpoint=ckpt)
    before = ckpt.read_bytes()
    with pytest.raises(UserInputError, match=r"other settings \(seed\)"):
        run(subject, x, checkpoint=ckpt, seed=1)
    with pytest.raises(UserInputError, match="metric_options"):
        run(subject, x, checkpoint=ckpt, metric_options={**FAST, "pixel_flipping": {"step": 32}})
    other = tiny_subject(size=32, seed=1)
    with pytest.raises(UserInputError, match="weights"):
        run(other, x, checkpoint=ckpt)
    (tmp_path / "junk.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(UserInputError, match="left as it is"):
        run(subject, x, checkpoint=tmp_path / "junk.npz")
    assert ckpt.read_bytes() == before


def test_unreadable_files_are_skipped_and_counted(subject, tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    ev = evaluate(subject, [paths[0], bad, paths[1], paths[2]], ["saliency"], ["pixel_flipping"], chunk=2)
    assert ev.images == ["img0", "img1", "img2"] and len(ev.skipped) == 1 and "broken" in ev.skipped[0]
    assert ev.scores.shape == (1, 1, 3) and np.isfinite(ev.scores).all()
    folder = evaluate(subject, tmp_path, ["saliency"], ["pixel_flipping"], chunk=2)  # a folder too
    assert len(folder.images) == 3 and len(folder.skipped) == 1
    assert folder.images == ["img0.png", "img1.png", "img2.png"]  # the source's relative names
    import tarfile

    with tarfile.open(tmp_path / "data.tar", "w") as tf:
        for p in [*paths, bad]:
            tf.add(p, arcname=f"sub/{p.name}")
    packed = evaluate(subject, tmp_path / "data.tar", ["saliency"], ["pixel_flipping"], chunk=2)
    np.testing.assert_array_equal(packed.scores, folder.scores)
    with pytest.raises(UserInputError, match="no readable image"):
        evaluate(subject, [bad], ["saliency"], ["pixel_flipping"])


def test_callables_are_methods_and_an_edge_map_fails_the_randomisation_check(subject, x):
    def sobel_like(subj, images, classes):
        return images.abs().sum(1)

    ev = run(
        subject,
        x,
        methods=["saliency", sobel_like, "edge"],
        metrics=["model_randomisation"],
        metric_options={},
    )
    assert ev.methods == ["saliency", "sobel_like", "edge"]
    np.testing.assert_allclose(ev.score("sobel_like", "model_randomisation"), 1.0)
    np.testing.assert_allclose(ev.score("edge", "model_randomisation"), 1.0)
    assert (ev.score("saliency", "model_randomisation") < 0.8).all()
    assert [r["method"] for r in ev.table()][0] == "saliency"


def test_a_failing_method_scores_nan_and_is_noted(subject, x):
    def flaky(subj, images, classes):
        if images.shape[0] == 2:  # the last chunk of 10 in chunks of 4
            raise RuntimeError("out of memory")
        return images.abs().sum(1)

    ev = run(subject, x, methods=["saliency", flaky])
    f = ev.score("flaky", "pixel_flipping")
    assert np.isfinite(f[:8]).all() and np.isnan(f[8:]).all()
    assert np.isfinite(ev.score("saliency", "pixel_flipping")).all()
    (note,) = ev.settings["failures"]
    assert note["method"] == "flaky" and note["images"] == [8, 9] and "out of memory" in note["error"]
    assert [r["n"] for r in ev.table() if r["method"] == "flaky"] == [8, 8]


def test_options_shared_or_per_method(subject, x):
    shared = run(subject, x, methods=["smoothgrad", "saliency"], options={"samples": 3})
    assert shared.settings["options"] == {"smoothgrad": {"samples": 3}, "saliency": {}}
    per = run(subject, x, methods=["smoothgrad", "saliency"], options={"smoothgrad": {"samples": 3}})
    np.testing.assert_array_equal(per.scores, shared.scores)


def test_localisation_metrics_take_masks_per_image(subject, x):
    def flat(subj, images, classes):
        return torch.ones(images.shape[0], *images.shape[2:])

    masks = np.zeros((10, 32, 32), bool)
    masks[:, :16] = True  # half of each image
    masks[7, :8] = False  # a quarter of image 7
    ev = run(subject, x, methods=[flat], metrics=["attribution_localisation"], masks=masks, metric_options={})
    want = np.full(10, 0.5)
    want[7] = 0.25
    np.testing.assert_allclose(ev.score("flat", "attribution_localisation"), want, atol=1e-6)


def test_model_randomisation_layers_limits_the_modules(subject, x):
    maps = convscope.explain(subject, x[:3], "saliency").maps
    full = M.model_randomisation(subject, x[:3], maps, method="saliency", reduce="none")
    first2 = M.model_randomisation(subject, x[:3], maps, method="saliency", layers=2, reduce="none")
    torch.testing.assert_close(first2, full[:, :2], rtol=0, atol=0)
    names = M.randomisation_layers(subject, "independent")
    alone = M.model_randomisation(subject, x[:3], maps, method="saliency", order="independent", reduce="none")
    pick = M.model_randomisation(
        subject,
        x[:3],
        maps,
        method="saliency",
        order="independent",
        layers=[names[2], names[0]],
        reduce="none",
    )
    torch.testing.assert_close(pick, alone[:, [0, 2]], rtol=0, atol=0)
    with pytest.raises(NameNotFoundError):
        M.model_randomisation(subject, x[:3], maps, method="saliency", layers=["nope"])
    with pytest.raises(UserInputError):
        M.model_randomisation(subject, x[:3], maps, method="saliency", layers=0)
    with pytest.raises(UserInputError, match="layers is empty"):  # not torch.stack's error
        M.model_randomisation(subject, x[:3], maps, method="saliency", layers=[])


@pytest.mark.parametrize(
    "metric, order, up",
    [("road", "morf", False), ("road", "lerf", True), ("region_perturbation", "morf", True)]
    + [("region_perturbation", "lerf", False), ("pixel_flipping", None, False)],
)
def test_the_direction_follows_the_order(subject, x, metric, order, up):
    opts = {"order": order} if order else {}
    assert M.higher_is_better(metric, opts) is up
    if metric == "road":
        opts["percentiles"] = (50,)
    ev = run(subject, x[:4], methods=["saliency", "random"], metrics=[metric], metric_options={metric: opts})
    assert ev.higher_is_better == {metric: up}
    means = {r["method"]: r["mean"] for r in ev.table()}
    best = max(means, key=means.get) if up else min(means, key=means.get)
    assert ev.table()[0]["method"] == best


@pytest.mark.slow
def test_done_when_randomisation_separates_gradients_from_an_edge_detector(default_subject, cifar_dir):
    """The issue's Done-when test (the module's slow one, in the normal suite): 32 CIFAR-10
    images, the default model, saliency / Grad-CAM / the edge baseline; the edge detector
    keeps its maps when the model is randomised (fails the sanity check), the gradient methods
    do not."""
    paths = sorted(cifar_dir.rglob("*.jpg"))[::3][:32]
    assert len(paths) == 32
    ev = evaluate(
        default_subject, paths, ["saliency", "gradcam", "edge"], ["model_randomisation", "average_drop"],
        metric_options={"model_randomisation": {"layers": 1}}, chunk=32,
    )  # fmt: skip
    assert np.isfinite(ev.scores).all() and not ev.skipped and not ev.settings["failures"]
    edge = ev.score("edge", "model_randomisation")
    np.testing.assert_allclose(edge, 1.0, atol=1e-9)
    for method in ("saliency", "gradcam"):
        mean, low, high = ev.interval(method, "model_randomisation")
        assert high < 0.8, (method, mean, low, high)
    rows = [r for r in ev.table() if r["metric"] == "model_randomisation"]
    assert rows[-1]["method"] == "edge"  # ranked last: randomising the model left it unchanged
    assert len(ev.to_csv().splitlines()) == 1 + 6


def test_the_module_and_the_function_have_their_own_names():
    # `convscope.attribution.evaluate` is the function; its module is `evaluator`, so importing
    # the module by its dotted name gives the module, not the function
    import types

    import convscope.attribution.evaluator as module

    assert isinstance(module, types.ModuleType) and module.evaluate is convscope.attribution.evaluate
    assert convscope.evaluate is convscope.attribution.evaluate and callable(convscope.attribution.evaluate)


def test_the_fingerprint_tells_apart_what_changes_the_scores(subject, x, tmp_path):
    ckpt = tmp_path / "c.npz"
    run(subject, x, checkpoint=ckpt)
    with pytest.raises(UserInputError, match=r"other settings \(images\)"):
        run(subject, x + 0.1, checkpoint=ckpt)  # another batch of the same size and names

    def fp(images=x, methods=("saliency",), who=subject):
        return fingerprint(who, images, list(methods), ["average_drop"])

    a, b = (Image.fromarray(np.full((32, 32, 3), v, np.uint8)) for v in (10, 200))
    assert fp([a])["images"] != fp([b])["images"] and fp([a]) == fp([a.copy()])
    arrays = [np.asarray(a), np.asarray(b)]
    assert fp(arrays)["images"] != fp(arrays[::-1])["images"]
    first, second = (lambda s, i, c: i.sum(1)), (lambda s, i, c: i.abs().sum(1))
    assert fp(methods=[first])["methods"] != fp(methods=[second])["methods"]  # both "<lambda>"
    assert fp(methods=[first]) == fp(methods=[first])
    assert fp()["device"] == "cpu"
    bigger = tiny_subject(size=40)  # the same weights, another input size
    assert fp(who=bigger)["weights"] == fp()["weights"] and fp(who=bigger)["preprocess"] != fp()["preprocess"]


def test_a_per_image_class_target_is_sliced_per_chunk(subject, x):
    classes = tuple(i % 3 for i in range(10))
    ev = run(subject, x, methods=["saliency"], target=convscope.attribution.Target("class", classes))
    assert np.isfinite(ev.scores).all() and not ev.settings["failures"]
    assert ev.targets == [f"logit({subject.label(c)})" for c in classes]
    xs = x[4:8]
    maps = convscope.explain(
        subject, xs, "saliency", target=convscope.attribution.Target("class", classes[4:8])
    )
    want = M.pixel_flipping(
        subject, xs, maps, torch.tensor(classes[4:8]), step=64, seed=derived_seed(0, "pixel_flipping", 1)
    )
    np.testing.assert_array_equal(ev.score("saliency", "pixel_flipping")[4:8], want.numpy())


def test_one_score_has_no_interval():
    from convscope.attribution.evaluation import Evaluation

    ev = Evaluation(
        methods=["a"],
        metrics=["m"],
        images=["i0", "i1"],
        scores=[[[0.5, np.nan]]],
        higher_is_better={"m": True},
    )
    mean, low, high = ev.interval("a", "m")
    assert mean == 0.5 and np.isnan(low) and np.isnan(high)  # not 0.5 .. 0.5, which reads as certain
    (row,) = ev.table()
    assert row["n"] == 1 and np.isnan(row["low"]) and '"low": null' in ev.to_json().replace("\n", "")


def test_tied_means_share_the_best_rank():
    from convscope.attribution.evaluation import Evaluation

    ev = Evaluation(
        methods=["a", "b", "c", "d", "e"],
        metrics=["m"],
        images=["i0", "i1"],
        scores=[[[0.25, 0.35]], [[0.9, 0.9]], [[0.3, 0.3]], [[np.nan, np.nan]], [[0.9, 0.9]]],
        higher_is_better={"m": True},
    )
    ranks = {r["method"]: r["rank"] for r in ev.table()}
    assert ranks == {"b": 1, "e": 1, "a": 3, "c": 3, "d": 5}  # competition ranking: 1, 1, 3, 3, 5
