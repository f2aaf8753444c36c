from __future__ import annotations

import shutil

import pytest
import torch

from convscope.train import (
    SmallCNN,
    TrainConfig,
    augment,
    blocks,
    confusion_matrix,
    evaluate,
    freeze,
    load_tensor_images,
    replace_head,
    train,
)


@pytest.fixture(scope="module")
def cifar(cifar_dir, tmp_path_factory):
    data = load_tensor_images(cifar_dir, cache=tmp_path_factory.mktemp("cache"))
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(data), generator=g)
    return data.subset(order[:70]), data.subset(order[70:])


def test_loading_is_cached(cifar_dir, tmp_path):
    a = load_tensor_images(cifar_dir, cache=tmp_path)
    b = load_tensor_images(cifar_dir, cache=tmp_path)
    assert a.images.shape == (100, 3, 32, 32) and a.images.dtype == torch.uint8
    assert torch.equal(a.images, b.images) and a.classes == b.classes and len(a.classes) == 10


def test_augment_is_a_shifted_crop():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    assert torch.equal(augment(x, pad=0, flip=False), x)
    g = torch.Generator().manual_seed(0)
    y = augment(x, pad=2, flip=False, generator=g)
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    for b in range(2):
        assert any(torch.equal(y[b], xp[b, :, i : i + 8, j : j + 8]) for i in range(5) for j in range(5))


def _small():
    torch.manual_seed(0)
    return SmallCNN(10, widths=(8, 16))


def test_loss_falls_and_checkpoints_resume(cifar, tmp_path):
    tr, te = cifar
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, seed=0)
    full = train(_small(), tr, te, cfg, tmp_path / "a")
    assert full.history[-1].train_loss < full.history[0].train_loss
    assert len(full.checkpoints) == 4  # epoch 0 .. 3
    state = torch.load(full.checkpoints[-1], weights_only=True)
    assert state["epoch"] == 3
    # a run killed after epoch 2 continues to the same weights
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b" / "epoch_003.pt").unlink()
    resumed = train(_small(), tr, te, cfg, tmp_path / "b")
    again = torch.load(tmp_path / "b" / "epoch_003.pt", weights_only=True)
    for k, v in state["model"].items():
        assert torch.equal(v, again["model"][k]), k
    assert [h.epoch for h in resumed.history] == [1, 2, 3]
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 3
    with pytest.raises(Exception, match="other settings"):
        train(_small(), tr, te, TrainConfig(epochs=4, batch_size=16, lr=0.05), tmp_path / "b")


def test_frozen_blocks_do_not_change(cifar, tmp_path):
    tr, te = cifar
    model = _small()
    assert blocks(model) == ["features.0", "features.1"]
    replace_head(model, 5)
    assert model.fc.out_features == 5
    frozen = freeze(model, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    five = tr.subset(torch.nonzero(tr.labels < 5).flatten())
    train(model, five, five, TrainConfig(epochs=1, batch_size=8, lr=0.05), tmp_path / "ft")
    after = model.state_dict()
    for k in before:
        same = torch.equal(before[k], after[k])
        assert same == k.startswith(frozen[0] + "."), k
    with pytest.raises(Exception, match="freeze"):
        freeze(model, 5)


def test_random_labels_are_memorized(cifar, tmp_path):
    tr, te = cifar
    torch.manual_seed(0)
    model = SmallCNN(10, widths=(32, 64))
    cfg = TrainConfig(
        epochs=40, batch_size=14, lr=0.05, augment=False, random_labels=True, weight_decay=0.0, warmup=0.1
    )
    result = train(model, tr, te, cfg, tmp_path / "rand")
    assert result.final.train_accuracy > 0.9
    assert result.final.test_accuracy < 0.3


def test_confusion_matrix_sums_to_the_test_size(cifar, tmp_path):
    tr, te = cifar
    model = _small()
    _, acc, pred = evaluate(model, te, TrainConfig())
    m = confusion_matrix(te.labels.numpy(), pred, 10)
    assert m.sum() == len(te) and m.trace() / len(te) == pytest.approx(acc)
