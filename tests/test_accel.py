from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.accel import Accel, prepared
from convscope.errors import ConvscopeError, UserInputError
from convscope.inputs import workers as A
from convscope.inputs.sources import open_images
from convscope.inputs.workers import auto_workers
from convscope.scan import scan
from convscope.testing import tiny_subject

LAYERS = ["conv1", "block", "conv2"]


@pytest.fixture(scope="module")
def subject():
    return tiny_subject()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """48 smooth random images (JPEG and PNG) in 3 classes."""
    root = tmp_path_factory.mktemp("accel")
    rng = np.random.default_rng(1)
    for i in range(48):
        d = root / f"c{i % 3}"
        d.mkdir(exist_ok=True)
        small = (rng.random((6, 7, 3)) * 255).astype(np.uint8)
        img = Image.fromarray(small).resize((56, 48), Image.BILINEAR)
        img.save(d / (f"{i:03d}.jpg" if i % 2 else f"{i:03d}.png"))
    return root


def _scan(subject, folder, **kw):
    src = open_images(folder, transform=subject.transform)
    return scan(subject, src, LAYERS, k=5, batch_size=8, threshold_sample=48, **kw)


def test_settings_are_checked():
    with pytest.raises(UserInputError, match="precision must be one of fp32, bf16, fp16"):
        Accel(precision="half")
    with pytest.raises(UserInputError, match="decode must be one of cpu, device"):
        Accel(decode="gpu")
    assert Accel().layout(torch.device("cpu")) is False
    assert Accel().layout(torch.device("cuda")) is True
    assert Accel(channels_last=True).layout(torch.device("cpu")) is True
    assert Accel(precision="bf16").config() == {"precision": "bf16", "decode": "cpu"}
    from types import SimpleNamespace

    cuda = torch.device("cuda")
    zoo = SimpleNamespace(device=cuda, spec={"model": "timm:resnet50"})
    wrapped = SimpleNamespace(device=cuda, spec=None)  # may view() a map NHWC would break
    assert Accel.of(None, zoo).channels_last is True
    assert Accel.of(None, wrapped).channels_last is False
    assert Accel.of(Accel(channels_last=True), wrapped).channels_last is True
    assert Accel.of(None, SimpleNamespace(device=torch.device("cpu"), spec={})).channels_last is False


def test_workers_are_sized_to_the_machine(monkeypatch):
    monkeypatch.setattr(A, "cpu_count", lambda: 16)
    assert auto_workers("cuda") == 12
    assert auto_workers("cuda", share=4) == 3  # four GPUs share 16 cores
    assert auto_workers("cpu") == 4
    monkeypatch.setattr(A, "cpu_count", lambda: 2)
    assert auto_workers("cpu") == 0 and auto_workers("cuda") == 1
    assert A.resolve_workers(3, "cpu") == 3
    with pytest.raises(UserInputError):
        A.resolve_workers(-1, "cpu")


def test_channels_last_is_undone_after_the_pass(subject):
    w = subject.model.conv1.weight
    with prepared(subject.model, Accel(channels_last=True), torch.device("cpu")):
        assert subject.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        assert not subject.model.conv1.weight.is_contiguous()
    assert subject.model.conv1.weight.is_contiguous()
    assert torch.equal(subject.model.conv1.weight, w)


def test_channels_last_scan_equals_the_default(subject, folder):
    ref = _scan(subject, folder)
    cl = _scan(subject, folder, accel=Accel(channels_last=True))
    for layer in LAYERS:
        for crit in ("max", "mean", "area"):
            for u in range(ref.channels[layer]):
                a, b = ref.topk(layer, u, crit), cl.topk(layer, u, crit)
                assert np.allclose(a.scores, b.scores, rtol=1e-4, atol=1e-5)
        assert np.allclose(ref.stats(layer).max, cl.stats(layer).max, rtol=1e-5)


def test_bf16_scan_is_close_and_recorded(subject, folder, tmp_path):
    ref = _scan(subject, folder)
    half = _scan(subject, folder, accel=Accel(precision="bf16"))
    assert half.config["precision"] == "bf16" and ref.config["precision"] == "fp32"
    overlaps = []
    for layer in LAYERS:
        a, b = ref.stats(layer).max, half.stats(layer).max
        assert np.abs(a - b).max() <= 0.02 * np.abs(a).max()  # bf16 keeps 8 significant bits
        assert not np.allclose(a, b, rtol=1e-6)  # autocast did change the arithmetic
        for u in range(ref.channels[layer]):
            x, y = set(ref.topk(layer, u, "max").images), set(half.topk(layer, u, "max").images)
            overlaps.append(len(x & y) / len(x | y))
    assert np.mean(overlaps) > 0.8
    # a checkpoint of an fp32 scan is not continued in bf16
    src = open_images(folder, transform=subject.transform)
    ck = tmp_path / "scan.ckpt"
    scan(subject, src, LAYERS, k=5, batch_size=8, checkpoint=ck)
    with pytest.raises(ConvscopeError, match="other settings"):
        scan(
            subject, src, LAYERS, k=5, batch_size=8, checkpoint=ck, resume=True, accel=Accel(precision="bf16")
        )


def test_device_decoding_scan_matches_pil(subject, folder):
    ref = _scan(subject, folder)
    dev = _scan(subject, folder, accel=Accel(decode="device"))
    assert dev.processed == ref.processed == 48 and dev.config["decode"] == "device"
    for layer in LAYERS:
        a, b = ref.stats(layer), dev.stats(layer)
        assert np.allclose(a.max, b.max, rtol=0.02, atol=0.02)
        assert np.allclose(a.mean, b.mean, rtol=0.01, atol=0.01)


def test_features_and_synthesis_take_the_settings(subject, folder):
    from convscope.represent import extract_features
    from convscope.synthesis import objectives as O
    from convscope.synthesis.engine import optimize

    src = open_images(folder, transform=subject.transform)
    ref = extract_features(subject, src, ["conv2"], batch_size=8)
    for acc in (Accel(precision="bf16", channels_last=True), Accel(decode="device")):
        got = extract_features(subject, src, ["conv2"], batch_size=8, accel=acc)
        x, y = ref.get("conv2"), got.get("conv2")
        assert np.abs(x - y).max() < 0.02 * np.abs(x).max()
    syn = optimize(
        subject,
        O.channel("conv2", [0, 1]),
        batch=2,
        size=32,
        steps=8,
        accel=Accel(precision="bf16", channels_last=True),
    )
    assert np.isfinite(syn.scores).all() and syn.info["precision"] == "bf16"
    assert syn.history[-1] > syn.history[0]
    assert subject.model.conv1.weight.is_contiguous()


def test_dissection_refuses_device_decoding(subject, tmp_path):
    from convscope.dissect import BrodenDataset, dissect, make_synthetic_broden

    root = make_synthetic_broden(tmp_path / "b", n=8, size=48, seg=24)
    with pytest.raises(UserInputError, match="decode='device' is for scans and features"):
        dissect(subject, BrodenDataset(root), ["conv2"], accel=Accel(decode="device"))
    res = dissect(subject, BrodenDataset(root), ["conv2"], accel=Accel(precision="bf16"))
    ref = dissect(subject, BrodenDataset(root), ["conv2"])
    a, b = ref.layers["conv2"], res.layers["conv2"]
    assert np.allclose(a.thresholds, b.thresholds, rtol=0.02, atol=1e-3)
    assert np.abs(a.iou - b.iou).max() < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_scan_matches_cpu(folder):
    cpu = tiny_subject()
    gpu = tiny_subject().to("cuda")
    ref = _scan(cpu, folder)
    got = _scan(gpu, folder, accel=Accel(decode="device"))
    for layer in LAYERS:
        assert np.allclose(ref.stats(layer).max, got.stats(layer).max, rtol=0.02, atol=0.02)
    half = _scan(gpu, folder, accel=Accel(precision="bf16"))
    for layer in LAYERS:
        assert np.allclose(ref.stats(layer).max, half.stats(layer).max, rtol=0.03, atol=0.03)


def test_fp16_overflow_is_reported(folder):
    loud = tiny_subject()
    with torch.no_grad():
        loud.model.conv2.weight.mul_(1e5)  # conv2 outputs beyond the float16 maximum
    with pytest.raises(ConvscopeError, match="conv2 overflowed under fp16.*bf16 or fp32"):
        _scan(loud, folder, accel=Accel(precision="fp16"))
    _scan(loud, folder, accel=Accel(precision="bf16"))  # the range of float32
    _scan(loud, folder)
    from convscope.represent import extract_features

    src = open_images(folder, transform=loud.transform)
    with pytest.raises(ConvscopeError, match="overflowed under fp16"):
        extract_features(loud, src, ["conv2"], batch_size=8, accel=Accel(precision="fp16"))


def test_fp16_overflow_in_dissection_is_reported(tmp_path):
    from convscope.dissect import BrodenDataset, dissect, make_synthetic_broden

    loud = tiny_subject()
    with torch.no_grad():
        loud.model.conv2.weight.mul_(1e5)
    root = make_synthetic_broden(tmp_path / "b", n=8, size=48, seg=24)
    with pytest.raises(ConvscopeError, match="conv2 overflowed under fp16"):
        dissect(loud, BrodenDataset(root), ["conv2"], accel=Accel(precision="fp16"))


def test_directions_are_projected_in_float32(subject, folder, monkeypatch):
    from convscope.scan import scanner

    real = scanner._Engine._units
    seen = []

    def spy(self, name, t):
        out = real(self, name, t)
        if name in self.dirs:
            seen.append((t.float().clone(), out[:, t.shape[1] :].clone(), self.dirs[name]))
        return out

    monkeypatch.setattr(scanner._Engine, "_units", spy)
    _scan(subject, folder, directions=2, accel=Accel(precision="bf16"))
    assert seen
    for t, proj, dirs in seen:  # the projection of the recorded channels, in float32
        want = torch.einsum("bchw,nc->bnhw", t, dirs)
        assert torch.allclose(proj, want, rtol=1e-5, atol=1e-6)


def test_runs_from_before_the_settings_still_resume(subject, folder, tmp_path):
    import json

    from convscope.represent import extract_features

    src = open_images(folder, transform=subject.transform)
    out = tmp_path / "f"
    first = extract_features(subject, src, ["conv2"], batch_size=8, out=out)
    meta = json.loads((out / "meta.json").read_text())
    for key in ("precision", "decode"):  # a folder written before they were recorded
        del meta[key]
    (out / "meta.json").write_text(json.dumps(meta))
    again = extract_features(subject, src, ["conv2"], batch_size=8, out=out)
    assert np.array_equal(first.get("conv2"), again.get("conv2"))
    with pytest.raises(UserInputError, match="another configuration"):
        extract_features(subject, src, ["conv2"], batch_size=8, out=out, accel=Accel(precision="bf16"))
    ck = tmp_path / "scan.ckpt"
    scan(subject, src, LAYERS, k=5, batch_size=8, checkpoint=ck)
    blob = torch.load(ck, weights_only=True)
    for key in ("precision", "decode"):
        del blob["config"][key]
    torch.save(blob, ck)
    scan(subject, src, LAYERS, k=5, batch_size=8, checkpoint=ck, resume=True)


def test_worker_counts_respect_quotas_and_shared_memory(monkeypatch, tmp_path):
    monkeypatch.setattr(A, "cpu_count", lambda: 16)
    monkeypatch.setattr(A, "shared_memory_bytes", lambda: 64 << 20)  # Docker's default /dev/shm
    batch = 32 * 3 * 224 * 224 * 4  # 19 MB
    assert auto_workers("cuda") == 12  # no batch size: no cap
    assert auto_workers("cuda", batch_bytes=batch) == 0  # 4 prefetched batches would not fit
    monkeypatch.setattr(A, "shared_memory_bytes", lambda: 8 << 30)
    assert auto_workers("cuda", batch_bytes=batch) == 12


def test_cgroup_quota_caps_the_cores(monkeypatch):
    monkeypatch.setattr(A, "_cgroup_cpus", lambda: 2)
    assert A.cpu_count() <= 2
    monkeypatch.setattr(A, "_cgroup_cpus", lambda: None)
    assert A.cpu_count() >= 1
