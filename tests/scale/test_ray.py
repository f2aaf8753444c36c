"""Scans and features on a local Ray cluster of 2 CPU workers equal single-process runs; a worker
that dies is restarted and its shard retried; a killed job resumes from its finished shards."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from convscope.inputs.sources import open_images
from convscope.represent import extract_features
from convscope.scan import scan

ray = pytest.importorskip("ray", reason="pip install 'convscope[ray]'")

from convscope.scale import RayEngine, shards, shutdown_workers  # noqa: E402

OPTIONS = {"k": 4, "threshold_sample": 16, "batch_size": 8, "directions": 2}
LAYERS = ["features.4", "features.8"]


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    """A random SqueezeNet 1.1 saved to a file, so that every worker loads the same weights."""
    import convscope

    torch.manual_seed(0)
    random = convscope.load("torchvision:squeezenet1_1", weights=None)
    path = tmp_path_factory.mktemp("weights") / "squeezenet.pth"
    torch.save(random.model.state_dict(), path)
    with pytest.raises(Exception, match="random weights"):
        RayEngine().scan(random, open_images("convscope:samples"), LAYERS)
    return convscope.load("torchvision:squeezenet1_1", weights=str(path))


@pytest.fixture(scope="module")
def cluster():
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
    )
    yield
    shutdown_workers()
    ray.shutdown()


@pytest.fixture(scope="module")
def images():
    return open_images("convscope:samples", pattern="co*")


def test_gpu_actors_ask_for_a_share_every_gpu_node_has():
    from convscope.scale.ray import cpus_per_gpu

    class FakeRay:  # a CPU-only head, an 8-core 1-GPU node, a 16-core 4-GPU node, a dead node
        @staticmethod
        def nodes():
            return [
                {"Alive": True, "Resources": {"CPU": 4.0}},
                {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}},
                {"Alive": True, "Resources": {"CPU": 16.0, "GPU": 4.0}},
                {"Alive": False, "Resources": {"CPU": 1.0, "GPU": 1.0}},
            ]

    assert cpus_per_gpu(FakeRay) == 4  # cluster totals (28 CPUs / 5 GPUs) would not place


def test_shards():
    assert shards(10, 3) == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]
    assert shards(2, 5) == [[0], [1]]


def test_ray_scan_equals_one_process(cluster, subject, images, tmp_path):
    single = scan(subject, images.with_transform(subject.transform), LAYERS, **OPTIONS)
    marker = tmp_path / "died"
    seen = []
    merged = RayEngine(workers=2, n_shards=3).scan(
        subject,
        images,
        LAYERS,
        state=tmp_path / "state",
        fail_once=str(marker),
        progress=lambda d, t: seen.append(d),
        **OPTIONS,
    )
    assert marker.exists()  # one worker died mid-shard; Ray restarted it and the shard was redone
    assert merged.processed == single.processed == len(images)
    for layer in LAYERS:
        for crit in ("max", "mean", "area"):
            for unit in range(merged.channels[layer]):
                a, b = merged.topk(layer, unit, crit), single.topk(layer, unit, crit)
                assert a.images.tolist() == b.images.tolist(), (layer, crit, unit)
                assert np.allclose(a.scores, b.scores, rtol=1e-5, atol=1e-5)
            for d in range(2):
                assert (
                    merged.topk(layer, d, crit, direction=True).images.tolist()
                    == single.topk(layer, d, crit, direction=True).images.tolist()
                )
        s, m = single.stats(layer), merged.stats(layer)
        assert np.allclose(s.mean, m.mean, rtol=1e-4, atol=1e-5) and np.array_equal(s.threshold, m.threshold)
        # workers run one thread each: convolutions round differently in the last bits
        assert np.allclose(s.max, m.max, rtol=1e-5)
    # a killed job: two of three shards are on disk; running again computes only the third
    files = sorted((tmp_path / "state").glob("scan_shard_*"))
    assert len(files) == 3
    files[1].unlink()
    seen.clear()
    again = RayEngine(workers=2, n_shards=3).scan(
        subject,
        images,
        LAYERS,
        state=tmp_path / "state",
        resume=True,
        progress=lambda d, t: seen.append(d),
        **OPTIONS,
    )
    assert seen[0] == len(images) - len(shards(len(images), 3)[1])
    assert (
        again.topk("features.8", 5, "area").images.tolist()
        == single.topk("features.8", 5, "area").images.tolist()
    )


def test_ray_features_equal_one_process(cluster, subject, images, tmp_path):
    from convscope.accel import Accel

    single = extract_features(subject, images, LAYERS, pooling="gem", batch_size=8)
    # the speed settings travel to the workers (device decoding changes pixels by <= 1 level)
    accel = Accel(channels_last=True, decode="device")
    merged = RayEngine(workers=2, n_shards=3).features(
        subject,
        images,
        LAYERS,
        out=tmp_path / "f",
        pooling="gem",
        batch_size=8,
        accel=accel,
    )
    assert json.loads((tmp_path / "f" / "meta.json").read_text())["decode"] == "device"
    for layer in LAYERS:
        assert np.allclose(single.get(layer), merged.get(layer), rtol=0.02, atol=0.02)
        assert not np.array_equal(single.get(layer), merged.get(layer))
    assert torch.equal(torch.as_tensor(single.valid), torch.as_tensor(merged.valid))


def test_scan_command_with_ray(cluster, subject, tmp_path, capsys):
    from convscope.atlas import Atlas
    from convscope.cli.main import main

    spec = subject.spec
    out = tmp_path / "atlas"
    args = [
        "scan",
        spec["model"],
        "--weights",
        spec["weights"],
        "--data",
        "convscope:samples",
        "--pattern",
        "co*",
        "--layers",
        "features.8",
        "--k",
        "3",
        "--threshold-sample",
        "8",
        "--engine",
        "ray",
        "--ray-workers",
        "2",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    atlas = Atlas.open(out)
    assert atlas.run()["processed"] == 18 and atlas.run()["config"]["engine"] == "ray"
    assert len(atlas.topk("features.8", 0)) == 3 and not (out / "ray_shards").exists()


def test_ray_dissect_equals_one_process_and_resumes(cluster, subject, tmp_path):
    from convscope.dissect import BrodenDataset, dissect, make_synthetic_broden

    root = make_synthetic_broden(tmp_path / "b", n=12, size=96, seg=48)
    single = dissect(subject, BrodenDataset(root), LAYERS, batch_size=4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray worker computes
    try:
        single1 = dissect(subject, BrodenDataset(root), LAYERS, batch_size=4)
    finally:
        torch.set_num_threads(threads)
    state = tmp_path / "shards"

    class Killed(Exception):
        pass

    def die_in_pass_two(done, total):
        if done > 12:  # the first shard of pass 2 has finished
            raise Killed

    (state / "keep.txt").parent.mkdir(parents=True)
    (state / "keep.txt").write_text("not ours")
    with pytest.raises(Killed):
        RayEngine(workers=2, n_shards=3).dissect(
            subject,
            BrodenDataset(root),
            LAYERS,
            batch_size=4,
            state=state,
            progress=die_in_pass_two,
        )
    kept = sorted(f.name for f in state.glob("pass*.pt"))
    assert [f for f in kept if f.startswith("pass1")] == [f"pass1_shard_{i:04d}_of_0003.pt" for i in range(3)]
    assert any(f.startswith("pass2") for f in kept)
    starts = []
    merged = RayEngine(workers=2, n_shards=3).dissect(
        subject,
        BrodenDataset(root),
        LAYERS,
        batch_size=4,
        state=state,
        resume=True,
        progress=lambda d, t: starts.append(d),
    )
    assert starts[0] == 12 and starts[1] > 12  # pass 1 came from disk, and part of pass 2
    assert [f.name for f in state.iterdir()] == ["keep.txt"]  # only its own files are removed
    for layer in LAYERS:
        a, b = single.layers[layer], merged.layers[layer]
        # On the workers' thread count, the sharded passes give one process's result exactly:
        # thresholds from the merged top values, top images in the same total order.
        one = single1.layers[layer]
        assert np.array_equal(one.thresholds, b.thresholds) and np.array_equal(one.iou, b.iou)
        assert np.array_equal(one.top_images, b.top_images)
        # On another thread count the convolutions round differently in the last bits, by an
        # amount relative to the layer's activations (measured: 1.2e-6 where they reach 4.6),
        # not to each threshold (a threshold near 0 moves by as much as a large one).
        scale = np.abs(a.thresholds).max()
        assert np.allclose(a.thresholds, b.thresholds, rtol=1e-5, atol=1e-5 * scale)
        assert np.abs(a.iou - b.iou).max() < 2e-3 and (a.iou.argmax(1) == b.iou.argmax(1)).mean() > 0.97
        assert np.allclose(a.top_values, b.top_values, rtol=1e-4, atol=1e-5)
    assert merged.images == single.images == 12


def test_ray_scan_with_broken_files_equals_one_process_without_them(cluster, subject, tmp_path):
    from tests.scan.test_calibration import add_broken_files, assert_same_scan, write_textures

    clean, dirty = tmp_path / "clean", tmp_path / "dirty"
    write_textures(clean, 24)
    write_textures(dirty, 24)
    add_broken_files(dirty)
    single = scan(subject, open_images(clean, transform=subject.transform), LAYERS, **OPTIONS)
    merged = RayEngine(workers=2, n_shards=3).scan(subject, open_images(dirty), LAYERS, **OPTIONS)
    assert merged.processed == single.processed == 24 and len(merged.skipped) > 10
    # the shards' batches hold other images than the one process's: on some CPUs (seen on one
    # VM kind, at one thread too) a convolution then rounds differently in the last bits
    assert_same_scan(single, merged, LAYERS, exact=False)


def test_ray_dissect_of_a_basis_equals_one_process(cluster, subject, tmp_path):
    """bases= reaches both of the workers' passes: the codes, not the channels, are dissected."""
    from convscope.concepts import ConceptSet
    from convscope.dissect import BrodenDataset, dissect, make_synthetic_broden

    root = make_synthetic_broden(tmp_path / "b", n=8, size=96, seg=48)
    c = subject.layers.get(LAYERS[0]).units
    unmixing = torch.nn.functional.normalize(
        torch.randn(3, c, generator=torch.Generator().manual_seed(0)), dim=1
    )
    cs = ConceptSet(LAYERS[0], "pca", 3, unmixing, state={"mean": torch.zeros(c), "unmixing": unmixing})
    bases = {LAYERS[0]: cs.basis()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray worker computes
    try:
        single = dissect(subject, BrodenDataset(root), LAYERS[:1], batch_size=4, bases=bases)
    finally:
        torch.set_num_threads(threads)
    merged = RayEngine(workers=2, n_shards=2).dissect(
        subject, BrodenDataset(root), LAYERS[:1], batch_size=4, bases=bases
    )
    a, b = single.layers[LAYERS[0]], merged.layers[LAYERS[0]]
    assert a.units == b.units == 3
    assert np.array_equal(a.thresholds, b.thresholds) and np.array_equal(a.iou, b.iou)
    assert np.array_equal(a.top_images, b.top_images)
