from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.inputs.sources import open_images
from convscope.represent import FeatureSet, extract_features, linear_probe, pool, project
from convscope.testing import tiny_subject


def test_poolings():
    a = torch.tensor([[[[1.0, 3.0], [0.0, 4.0]]]])
    assert pool(a, "gap").item() == 2.0
    assert pool(a, "mac").item() == 4.0
    assert pool(a, "spoc").item() == 8.0
    gem = pool(a, "gem", p=3.0).item()
    assert gem == pytest.approx(((1 + 27 + 0 + 64) / 4) ** (1 / 3), rel=1e-5)
    assert pool(a, "gem", p=1.0).item() == pytest.approx(2.0, rel=1e-5)
    v = torch.randn(2, 5)
    assert pool(v, "mac") is v


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(21):
        (tmp_path / f"c{i % 3}").mkdir(exist_ok=True)
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(tmp_path / f"c{i % 3}/{i}.png")
    (tmp_path / "c0" / "bad.png").write_bytes(b"x")
    return tmp_path


def test_extract_to_disk_equals_memory_and_resumes(folder, tmp_path):
    subject = tiny_subject()
    source = open_images(folder, transform=subject.transform)
    mem = extract_features(subject, source, ["block", "conv2"], pooling="gem", batch_size=4)
    assert mem.valid.sum() == 21 and mem.skipped[0][0].endswith("bad.png")
    out = tmp_path / "feats"
    disk = extract_features(subject, source, ["block", "conv2"], pooling="gem", batch_size=4, out=out)
    loaded = FeatureSet.load(out)
    for layer in ("block", "conv2"):
        assert np.array_equal(mem.get(layer), loaded.get(layer))
    assert loaded.classes == ["c0", "c1", "c2"] and (loaded.valid_labels() >= 0).all()
    # a run killed after 3 of 6 batches: later rows never written; resuming completes them
    meta = json.loads((out / "meta.json").read_text())
    meta["done"] = 3
    (out / "meta.json").write_text(json.dumps(meta))
    f = np.load(out / "001.npy", mmap_mode="r+")
    f[12:] = 0
    f.flush()
    with pytest.raises(Exception, match="resume"):
        FeatureSet.load(out)
    calls = []
    extract_features(
        subject,
        source,
        ["block", "conv2"],
        pooling="gem",
        batch_size=4,
        out=out,
        progress=lambda d, t: calls.append(d),
    )
    assert calls[0] == 16  # started at batch 3
    assert np.array_equal(FeatureSet.load(out).get("conv2"), disk.get("conv2"))
    with pytest.raises(Exception, match="another configuration"):
        extract_features(subject, source, ["block"], pooling="mac", out=out)


def test_probe_on_cifar(default_subject, cifar_dir_200):
    """Lite0 features of 200 CIFAR-10 images: the probe beats chance by a wide margin and the
    deepest layer beats the stem, on average over three train/test splits."""
    source = open_images(cifar_dir_200, transform=default_subject.transform)
    fs = extract_features(default_subject, source, ["bn1", "blocks.3", "bn2"], batch_size=20)
    acc = {}
    for seed in range(3):
        result = linear_probe(
            {n: fs.get(n) for n in fs.layers}, fs.valid_labels(), test_fraction=0.4, seed=seed
        )
        assert result.chance <= 0.15
        for r in result.rows:
            acc[r.layer] = acc.get(r.layer, 0.0) + r.test_accuracy / 3
    # 120 training images (12 per class): chance is 0.1; the pooled last stage reaches ~0.5
    # (32-px photos enlarged to 256 and cropped to 224, as the model's eval preprocessing does)
    assert acc["bn2"] >= 0.4 and acc["bn2"] > acc["bn1"] + 0.15, acc
    xy = project(fs.get("bn2"), "pca")
    assert xy.shape == (200, 2)


def test_save_load_round_trip(folder, tmp_path):
    subject = tiny_subject()
    source = open_images(folder, transform=subject.transform)
    mem = extract_features(subject, source, ["block", "conv2"], pooling="mac", batch_size=8)
    mem.save(tmp_path / "saved")
    back = FeatureSet.load(tmp_path / "saved")
    assert back.layers == mem.layers and back.pooling == "mac" and back.names == mem.names
    assert np.array_equal(back.valid, mem.valid) and np.array_equal(back.labels, mem.labels)
    for layer in mem.layers:
        assert np.array_equal(back.get(layer, valid_only=False), mem.get(layer, valid_only=False))


def test_feature_folder_records_parts_done_out_of_order(tmp_path):
    from convscope.represent.folder import FeatureWriter, read_folder, read_meta

    config = {"layers": ["a"], "dims": [2], "pooling": "gap", "images": 4}
    kw = {"image_names": list("wxyz"), "labels": np.zeros(4), "classes": [], "parts": 4}
    w = FeatureWriter(tmp_path, config, [2], **kw)
    w.features["a"][2] = 7
    w.finish_parts([0, 2])  # shards finish in any order on Ray
    w.checkpoint()
    meta = read_meta(tmp_path)
    assert (meta["done"], meta["batches"], meta["done_shards"]) == (2, 4, [0, 2])
    with pytest.raises(Exception, match="resume"):
        read_folder(tmp_path)
    again = FeatureWriter(tmp_path, config, [2], **kw)
    assert again.done == {0, 2} and again.first_missing() == 1 and again.features["a"][2].tolist() == [7, 7]
    again.finish_parts([1, 3])
    again.checkpoint()
    assert "done_shards" not in read_meta(tmp_path) and read_folder(tmp_path)["features"]["a"].shape == (4, 2)
    assert FeatureWriter(tmp_path, config, [2], **kw, resume=False).done == set()
    with pytest.raises(Exception, match="another configuration"):
        FeatureWriter(tmp_path, {**config, "pooling": "mac"}, [2], **kw)
