"""Training from scratch and fine-tuning with per-epoch checkpoints, a metrics log and resume.

Checkpoints (``epoch_NNN.pt``, epoch 0 = the initial weights) hold only tensors, numbers and
strings, so they load with ``torch.load(weights_only=True)``; each is written to a temporary
file and renamed. A run restarted in the same folder continues after its last checkpoint and,
on the CPU, reproduces the uninterrupted run exactly (the RNG states are saved too).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convscope.errors import UserInputError
from convscope.inputs.fileio import load_weights_only, write_text
from convscope.results import Result
from convscope.train.data import TensorImages, augment


@dataclass
class TrainConfig:
    """Optimisation settings: SGD with Nesterov momentum and a one-cycle learning rate (linear
    warm-up for ``warmup`` of the epochs, then linear decay to 0), label smoothing, weight
    decay; ``random_labels`` trains on a fixed random permutation of the labels (Zhang et al.
    2017). ``mean``/``std`` normalise the uint8 images."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    warmup: float = 0.2
    augment: bool = True
    random_labels: bool = False
    seed: int = 0
    mean: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
    std: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    seconds: float
    lr: float


@dataclass
class TrainResult(Result):
    """Metrics per epoch (``history``) and the checkpoints written, in order."""

    history: list[EpochMetrics]
    checkpoints: list[Path] = field(default_factory=list)

    @property
    def final(self) -> EpochMetrics:
        return self.history[-1]

    def to_image(self, title: str = ""):
        """Loss and accuracy per epoch, train and test."""
        from convscope.render.plots import figure_to_image
        from convscope.render.training import curves_figure

        return figure_to_image(curves_figure(self.history, title))

    def headline(self) -> str:
        if not self.history:
            return "training: no epoch"
        f = self.final
        n = len(self.history)
        return f"training: {n} epoch(s), test accuracy {f.test_accuracy:.3f} (epoch {f.epoch})"


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x.float() / 255.0 - m) / s


def evaluate(
    model: nn.Module, data: TensorImages, config: TrainConfig, batch_size: int = 500, device=None
) -> tuple[float, float, np.ndarray]:
    """(mean loss, accuracy, predictions) of ``model`` on ``data`` (eval mode, no augmentation)."""
    device = device or next(model.parameters()).device
    model.eval()
    losses, preds = [], []
    with torch.inference_mode():
        for i in range(0, len(data), batch_size):
            x = normalize(data.images[i : i + batch_size].to(device), config.mean, config.std)
            y = data.labels[i : i + batch_size].to(device)
            out = model(x)
            losses.append(F.cross_entropy(out, y, reduction="sum").item())
            preds.append(out.argmax(1).cpu())
    p = torch.cat(preds).numpy()
    return sum(losses) / len(data), float((p == data.labels.numpy()).mean()), p


def _lr(step: int, total: int, config: TrainConfig) -> float:
    w = max(1, int(config.warmup * total))
    if step < w:
        return config.lr * (step + 1) / w
    return config.lr * max(0.0, (total - step) / max(1, total - w))


def latest_checkpoint(out: Path) -> Path | None:
    found = sorted(Path(out).glob("epoch_*.pt"))
    return found[-1] if found else None


def _save(path: Path, state: dict) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def train(
    model: nn.Module,
    train_data: TensorImages,
    test_data: TensorImages,
    config: TrainConfig,
    out: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int, EpochMetrics | None], None] | None = None,
    meta: dict | None = None,
) -> TrainResult:
    """Train ``model`` (only its parameters with ``requires_grad``) and write ``out/``:
    ``epoch_NNN.pt`` checkpoints, ``metrics.jsonl`` and ``config.json``. Resumes from the last
    checkpoint in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        momentum=config.momentum,
        nesterov=True,
    )
    labels = train_data.labels.clone()
    if config.random_labels:
        g = torch.Generator().manual_seed(config.seed + 1)
        labels = labels[torch.randperm(len(labels), generator=g)]
    steps_per_epoch = (len(train_data) + config.batch_size - 1) // config.batch_size
    total = steps_per_epoch * config.epochs
    history: list[EpochMetrics] = []
    checkpoints: list[Path] = []
    gen = torch.Generator().manual_seed(config.seed)
    start = 0
    last = latest_checkpoint(out)
    wanted = json.loads(json.dumps({"train": asdict(config), **(meta or {})}))
    if last is not None:
        saved = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else {}
        diff = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        if diff:
            raise UserInputError(
                f"{out} holds a run with other settings ({', '.join(diff)}); "
                "choose another --out to start a new run"
            )
        state = load_weights_only(
            last, "training checkpoint", "remove it or choose another --out", map_location=device
        )
        model.load_state_dict(state["model"])
        if state["epoch"] > 0:
            opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history = [EpochMetrics(**h) for h in json.loads(state["history"])]
        checkpoints = sorted(out.glob("epoch_*.pt"))
        start = state["epoch"]
    else:
        torch.manual_seed(config.seed)
        write_text(out / "config.json", json.dumps(wanted, indent=1))
        checkpoints.append(_save(out / "epoch_000.pt", _state(model, opt, 0, gen, history, meta)))
    report = progress or (lambda *a: None)
    for epoch in range(start, config.epochs):
        t0 = time.perf_counter()
        model.train()
        for mod in model.modules():  # frozen batch norms keep their statistics too
            params = list(mod.parameters())
            if (
                isinstance(mod, nn.modules.batchnorm._BatchNorm)
                and params
                and not any(p.requires_grad for p in params)
            ):
                mod.eval()
        order = torch.randperm(len(train_data), generator=gen)
        seen, loss_sum, correct = 0, 0.0, 0
        for s in range(steps_per_epoch):
            idx = order[s * config.batch_size : (s + 1) * config.batch_size]
            x = train_data.images[idx]
            if config.augment:
                x = augment(x, generator=gen)
            x = normalize(x.to(device), config.mean, config.std)
            y = labels[idx].to(device)
            for group in opt.param_groups:
                group["lr"] = _lr(epoch * steps_per_epoch + s, total, config)
            outp = model(x)
            loss = F.cross_entropy(outp, y, label_smoothing=config.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(idx)
            loss_sum += loss.item() * len(idx)
            correct += (outp.argmax(1) == y).sum().item()
            report(epoch * steps_per_epoch + s + 1, total, None)
        test_loss, test_acc, _ = evaluate(model, test_data, config, device=device)
        m = EpochMetrics(
            epoch + 1,
            loss_sum / seen,
            correct / seen,
            test_loss,
            test_acc,
            time.perf_counter() - t0,
            opt.param_groups[0]["lr"],
        )
        history.append(m)
        checkpoints.append(
            _save(out / f"epoch_{epoch + 1:03d}.pt", _state(model, opt, epoch + 1, gen, history, meta))
        )
        # the log follows the checkpoint, rewritten whole: a kill between the two never duplicates
        write_text(out / "metrics.jsonl", "".join(json.dumps(asdict(h)) + "\n" for h in history))
        report((epoch + 1) * steps_per_epoch, total, m)
    return TrainResult(history, checkpoints)


def _state(model, opt, epoch, gen, history, meta) -> dict:
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": epoch,
        "generator": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": json.dumps([asdict(h) for h in history]),
        "meta": json.dumps(meta or {}),
    }


def load_weights(path: str | os.PathLike) -> tuple[dict, dict]:
    """(state dict, meta) of a checkpoint, read with ``weights_only=True``."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["model"], json.loads(state.get("meta", "{}"))
