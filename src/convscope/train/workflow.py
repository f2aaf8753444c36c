"""The training lab's two workflows, each a run folder with its report: a small CNN trained from
scratch (``convscope train``) and a sweep fine-tuning a pretrained model with the first k
blocks frozen (``convscope finetune``)."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from convscope.errors import UserInputError
from convscope.train.data import TensorImages, load_split
from convscope.train.finetune import blocks, freeze, replace_head
from convscope.train.loop import EpochMetrics, TrainConfig, TrainResult, latest_checkpoint, train
from convscope.train.report import write_report

Progress = Callable[[int, int, EpochMetrics | None], None]


def check_resume(out: str | os.PathLike, resume: bool) -> None:
    """Without ``resume``, a run folder that holds a run is refused (nothing is overwritten)."""
    out = Path(out)
    last = latest_checkpoint(out) if out.is_dir() else None
    if last is not None and not resume:
        raise UserInputError(
            f"{out} holds a training run (last checkpoint {last.name}); pass --resume "
            "to continue it or choose another --out"
        )


@dataclass
class TrainRun:
    """A finished run of :func:`train_run`: its ``result``, the ``model`` trained, its train and
    test split sizes (images) and the report files written."""

    result: TrainResult
    model: torch.nn.Module
    train_images: int
    test_images: int
    written: list[Path] = field(default_factory=list)


def train_run(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    arch: str = "small",
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 0.1,
    weight_decay: float = 5e-4,
    label_smoothing: float = 0.0,
    batchnorm: bool = True,
    padding: str = "same",
    width: float = 1.0,
    augment: bool = True,
    random_labels: bool = False,
    size: int = 32,
    train_pattern: str = "train/*",
    test_pattern: str = "test/*",
    limit: int | None = None,
    test_limit: int | None = None,
    resume: bool = False,
    device: str = "cpu",
    seed: int = 0,
    progress: Progress | None = None,
) -> TrainRun:
    """Train ``arch`` (``small``: widths 32, 64, 128 with ``batchnorm`` and ``padding``;
    ``resnet9`` of ``width``) from scratch on the ImageFolder ``data`` (its train and test parts,
    images ``size`` px square, ``limit``/``test_limit`` per class) into the run folder ``out``:
    per-epoch checkpoints, metrics, then the report (curves, confusion matrix, filter evolution
    of the first, middle and last convolution). A folder that holds a run is refused unless
    ``resume`` (then the run continues from its last checkpoint). ``progress(done, total,
    metrics)`` is called per step."""
    from convscope.train.filters import spread
    from convscope.train.models import build

    out = Path(out)
    check_resume(out, resume)
    tr, te = load_split(
        data, train_pattern, test_pattern, size=size, limit=limit, test_limit=test_limit, cache=out / "cache"
    )
    torch.manual_seed(seed)
    options = (
        {"widths": (32, 64, 128), "batchnorm": batchnorm, "padding": padding, "input_size": size}
        if arch == "small"
        else {"width": width}
    )
    model = build(arch, len(tr.classes), **options)
    config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        label_smoothing=label_smoothing,
        augment=augment,
        random_labels=random_labels,
        seed=seed,
    )
    meta = {
        "arch": arch,
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
        "classes": tr.classes,
        "data": str(data),
        "size": size,
    }
    result = train(model, tr, te, config, out, device=device, progress=progress, meta=meta)
    title = f"{arch}{' (random labels)' if random_labels else ''}"
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    written = write_report(out, model, result, te, config, tr.classes, title, evolution=spread(convs))
    return TrainRun(result, model, len(tr), len(te), written)


@dataclass
class FinetuneRow:
    """One run of a fine-tuning sweep: ``freeze`` blocks frozen (``frozen``: their names), its
    test accuracy (0..1) and run folder."""

    freeze: int
    frozen: list[str]
    test_accuracy: float
    folder: Path


@dataclass
class FinetuneSweep:
    """What :func:`finetune_run` wrote: one row per k, the model's ``blocks`` and, for a sweep
    over several k, the transferability figure ``transfer_png``."""

    rows: list[FinetuneRow]
    blocks: list[str]
    transfer_json: Path
    transfer_png: Path | None = None


def finetune_run(
    subject,
    data: str | os.PathLike,
    out: str | os.PathLike,
    freeze_blocks: Sequence[int] = (0,),
    *,
    train_pattern: str = "train/*",
    test_pattern: str = "test/*",
    limit: int | None = 50,
    test_limit: int | None = None,
    epochs: int = 3,
    batch_size: int = 32,
    lr: float = 0.01,
    resume: bool = False,
    device: str = "cpu",
    seed: int = 0,
    model_name: str | None = None,
    progress: Callable[[int], Progress | None] | None = None,
    before: Callable[[object, TensorImages], None] | None = None,
    after: Callable[[object, TensorImages], None] | None = None,
) -> FinetuneSweep:
    """Fine-tune ``subject``'s model on the ImageFolder ``data`` (resized and cropped by the
    model's own preprocessing; ``limit``/``test_limit`` images per class) once per k of
    ``freeze_blocks``: a new head, the first k blocks frozen, into ``out/freeze_K`` with its
    report; then ``out/transfer.json`` (and ``transfer.png`` for several k: test accuracy over
    k). Folders that hold a run are refused unless ``resume``. ``model_name``: what each run's
    config.json records as the model (default: the subject's name). ``progress(k)`` gives the
    progress callback of the run with k frozen blocks; ``before(subject, test)`` is called
    before the sweep and ``after(finetuned, test)`` with the last run's model as a Subject
    (e.g. to scan the test images)."""
    from convscope.inputs.fileio import save_image, write_text
    from convscope.render.plots import figure_to_image
    from convscope.render.training import transfer_figure
    from convscope.subject import Subject

    out = Path(out)
    ks = list(freeze_blocks)
    for k in ks:
        check_resume(out / f"freeze_{k}", resume)
    pre = subject.preprocess  # the model's own resize and crop, for training and testing alike
    tr, te = load_split(
        data,
        train_pattern,
        test_pattern,
        preprocess=pre,
        limit=limit,
        test_limit=test_limit,
        cache=out / "cache",
    )
    config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=1e-4,
        seed=seed,
        mean=tuple(pre.mean),
        std=tuple(pre.std),
    )
    names = blocks(subject.model)
    if before is not None:
        before(subject, te)
    rows = []
    for k in ks:
        torch.manual_seed(seed)
        m = copy.deepcopy(subject.model)
        replace_head(m, len(tr.classes))
        frozen = freeze(m, k)
        where = out / f"freeze_{k}"
        result = train(
            m,
            tr,
            te,
            config,
            where,
            device=device,
            progress=progress(k) if progress else None,
            meta={"model": model_name or subject.name, "freeze": k, "classes": tr.classes},
        )
        write_report(where, m, result, te, config, tr.classes, f"{subject.name}, {k} blocks frozen")
        rows.append(FinetuneRow(k, frozen, result.final.test_accuracy, where))
        if after is not None and k == ks[-1]:
            after(Subject(m.cpu().eval(), pre, tr.classes, name=f"{subject.name}-finetuned"), te)
    table = [{"freeze": r.freeze, "frozen": r.frozen, "test_accuracy": r.test_accuracy} for r in rows]
    done = FinetuneSweep(
        rows, names, write_text(out / "transfer.json", json.dumps({"blocks": names, "rows": table}, indent=1))
    )
    if len(ks) > 1:
        done.transfer_png = save_image(
            figure_to_image(transfer_figure(ks, [r.test_accuracy for r in rows], names)),
            out / "transfer.png",
        )
    return done
