"""``convscope train | finetune | filters | compare-scans``: the training lab."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from convscope.cli.common import (
    DEFAULT_MODEL,
    MODEL_HELP,
    ArchOpt,
    DeviceOpt,
    ModelArg,
    ResumeOpt,
    SeedOpt,
    WeightsOpt,
    load_subject,
    progress_bar,
    resumable,
)

TRAIN_DATA = "../shared/data/cifar10-jpg.tar.gz"
TrainDataOpt = Annotated[
    str, typer.Option("--data", help="ImageFolder folder or archive (train/ and test/ inside)")
]


def _bar(label: str):
    bar, report = progress_bar(label, None, unit="steps")

    def progress(done, total, metrics):
        note = (
            f"epoch {metrics.epoch}: loss {metrics.train_loss:.3f}, test acc {metrics.test_accuracy:.3f}"
            if metrics
            else None
        )
        report(done, total, note)

    return bar, progress


TestLimitOpt = Annotated[
    int | None, typer.Option("--test-limit", help="test images per class [default: the whole test split]")
]


def train(
    data_arg: Annotated[str | None, typer.Argument(hidden=True, help="old spelling of --data")] = None,
    data: TrainDataOpt = TRAIN_DATA,
    arch: Annotated[str, typer.Option("--arch", help="small or resnet9")] = "small",
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 10,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 128,
    lr: Annotated[float, typer.Option("--lr")] = 0.1,
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 5e-4,
    label_smoothing: Annotated[float, typer.Option("--label-smoothing")] = 0.0,
    batchnorm: Annotated[bool, typer.Option("--batchnorm/--no-batchnorm")] = True,
    padding: Annotated[str, typer.Option("--padding", help="same or valid")] = "same",
    width: Annotated[float, typer.Option("--width", help="resnet9 width factor")] = 1.0,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="flips and 4 px shifts")] = True,
    random_labels: Annotated[bool, typer.Option("--random-labels", help="train on shuffled labels")] = False,
    size: Annotated[int, typer.Option("--size", help="image side, px")] = 32,
    train_pattern: Annotated[str, typer.Option("--train-pattern")] = "train/*",
    test_pattern: Annotated[str, typer.Option("--test-pattern")] = "test/*",
    limit: Annotated[int | None, typer.Option("--limit", help="training images per class")] = None,
    test_limit: TestLimitOpt = None,
    out: Annotated[Path, typer.Option("--out", help="run folder")] = Path("run"),
    resume: ResumeOpt = False,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
) -> None:
    """Train a small CNN from scratch: per-epoch checkpoints, metrics, curves, filter evolution
    and the confusion matrix. The same command with --resume continues a killed run."""
    from convscope.train.workflow import train_run

    bar, progress = _bar("training")
    with resumable(out, bar):
        done = train_run(
            data_arg or data,
            out,
            arch=arch,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            label_smoothing=label_smoothing,
            batchnorm=batchnorm,
            padding=padding,
            width=width,
            augment=augment,
            random_labels=random_labels,
            size=size,
            train_pattern=train_pattern,
            test_pattern=test_pattern,
            limit=limit,
            test_limit=test_limit,
            resume=resume,
            device=device,
            seed=seed,
            progress=progress,
        )
    f = done.result.final
    Console().print(
        f"{done.train_images} train / {done.test_images} test images, {epochs} epochs: test accuracy "
        f"{f.test_accuracy:.4f} (train {f.train_accuracy:.4f}); "
        f"{sum(h.seconds for h in done.result.history):.0f} s of training; {out}/"
    )


def finetune(
    model: ModelArg = DEFAULT_MODEL,
    data: TrainDataOpt = TRAIN_DATA,
    train_pattern: Annotated[str, typer.Option("--train-pattern")] = "train/*",
    test_pattern: Annotated[str, typer.Option("--test-pattern")] = "test/*",
    limit: Annotated[int | None, typer.Option("--limit", help="training images per class")] = 50,
    test_limit: TestLimitOpt = None,
    freeze_blocks: Annotated[
        str, typer.Option("--freeze", help="blocks to freeze from the input side: k, or a sweep '0,2,4'")
    ] = "0",
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 3,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    lr: Annotated[float, typer.Option("--lr")] = 0.01,
    scan_layer: Annotated[
        str | None, typer.Option("--scan-layer", help="scan this layer on the test images before and after")
    ] = None,
    out: Annotated[Path, typer.Option("--out")] = Path("finetune"),
    resume: ResumeOpt = False,
    weights: WeightsOpt = "default",
    arch: ArchOpt = None,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
) -> None:
    """Fine-tune a pretrained model on an image folder: new head, first k blocks frozen;
    accuracy, confusion matrix, and a transferability sweep over k."""
    from convscope.atlas.build import finetune_and_scan
    from convscope.cli.common import parse_range

    ks = parse_range(freeze_blocks)
    subject = load_subject(model, weights, arch, "cpu")
    bars = []

    def progress(k):
        for bar in bars:  # the previous run's bar ends where the next begins
            bar.stop()
        bar, report = _bar(f"freeze {k}")
        bars.append(bar)
        return report

    try:
        sweep = finetune_and_scan(
            subject,
            data,
            out,
            ks,
            scan_layer=scan_layer,
            device=device,
            train_pattern=train_pattern,
            test_pattern=test_pattern,
            limit=limit,
            test_limit=test_limit,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            resume=resume,
            seed=seed,
            model_name=model,
            progress=progress,
        )
    finally:
        for bar in bars:
            bar.stop()
    for r in sweep.rows:
        Console().print(
            f"freeze {r.freeze} ({r.frozen[-1] if r.frozen else 'none'}): test accuracy "
            f"{r.test_accuracy:.4f}; {r.folder}/confusion.png"
        )
    if sweep.transfer_png is not None:
        Console().print(f"transferability sweep: {sweep.transfer_png}")


def filters(
    target: Annotated[
        str, typer.Argument(help="a `convscope train` run folder, or a model: " + MODEL_HELP)
    ] = DEFAULT_MODEL,
    layers: Annotated[
        str | None, typer.Option("--layers", help="conv layers (default: first, middle, last)")
    ] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="filters per layer")] = 16,
    data: Annotated[
        str | None,
        typer.Option(
            "--data", help="with a model: rank each layer's filters by mean activation on these images"
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="PNG")] = Path("filters.png"),
    weights: WeightsOpt = "default",
    arch: ArchOpt = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Filters: their evolution over a training run's epochs, a model's first-layer filters as
    RGB, or each layer's most activated filters on a dataset."""
    from convscope.train.filters import is_run, write_filters

    names = [s.strip() for s in layers.split(",")] if layers else None
    subject = None if is_run(target) else load_subject(target, weights, arch, device)
    if subject is None:
        pic = write_filters(out, target, names, n)
        Console().print(f"{len(pic.drawn)} layers x {len(pic.epochs)} epochs -> {out}")
        return
    from convscope.cli.common import open_data

    source = open_data([data], subject.transform) if data is not None else None
    pic = write_filters(out, subject, names, n, source, name=data)
    if pic.ranking is None:
        Console().print(f"{len(pic.drawn)} filters -> {out}")
        return
    for nm in pic.ranking.means:
        Console().print(
            f"{nm}: most activated filters {', '.join(str(u) for u in pic.ranking.top(nm, 8))} ..."
        )
    Console().print(f"-> {out}")


def compare_scans(
    before: Annotated[Path, typer.Argument(help="atlas before (e.g. finetune/scan_before)")],
    after: Annotated[Path, typer.Argument(help="atlas after (e.g. finetune/scan_after)")],
    layers: Annotated[str, typer.Option("--layers", help="the scanned layer (one)")],
    units: Annotated[str, typer.Option("--units", help="e.g. 0-3")] = "0-3",
    k: Annotated[int, typer.Option("--k", min=1, help="top images per side")] = 6,
    out: Annotated[Path, typer.Option("--out", help="folder for the PNGs")] = Path("compare_scans"),
) -> None:
    """A unit's top images before and after (e.g. fine-tuning), side by side."""
    from convscope.atlas.build import compare_scans as compare
    from convscope.cli.common import one_layer, parse_range

    for name, u, png in compare(before, after, one_layer(layers), parse_range(units), out, k=k):
        Console().print(f"{name}:{u} -> {png}")
