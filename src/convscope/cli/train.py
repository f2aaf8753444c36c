"""``convscope train | finetune | filters | compare-scans``: the training lab."""

from __future__ import annotations

import json
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


def _check_resume(out: Path, resume: bool) -> None:
    """Without --resume, a run folder that holds a run is refused (nothing is overwritten)."""
    from convscope.errors import UserInputError
    from convscope.train.loop import latest_checkpoint

    last = latest_checkpoint(out) if out.is_dir() else None
    if last is not None and not resume:
        raise UserInputError(
            f"{out} holds a training run (last checkpoint {last.name}); pass --resume "
            "to continue it or choose another --out"
        )


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
    import torch

    from convscope.train import TrainConfig, build, load_split
    from convscope.train import train as run
    from convscope.train.filters import spread
    from convscope.train.report import write_report

    data = data_arg or data
    _check_resume(out, resume)
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
    bar, progress = _bar("training")
    try:
        result = run(model, tr, te, config, out, device=device, progress=progress, meta=meta)
    except KeyboardInterrupt:
        bar.stop()
        Console(stderr=True).print(f"interrupted; continue with the same command and --resume ({out})")
        raise typer.Exit(130) from None
    finally:
        bar.stop()
    title = f"{arch}{' (random labels)' if random_labels else ''}"
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    write_report(out, model, result, te, config, tr.classes, title, evolution=spread(convs))
    f = result.final
    Console().print(
        f"{len(tr)} train / {len(te)} test images, {epochs} epochs: test accuracy "
        f"{f.test_accuracy:.4f} (train {f.train_accuracy:.4f}); "
        f"{sum(h.seconds for h in result.history):.0f} s of training; {out}/"
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
    import copy

    import torch

    from convscope.cli.common import parse_range
    from convscope.inputs.fileio import save_image, write_text
    from convscope.render.plots import figure_to_image
    from convscope.render.training import transfer_figure
    from convscope.train import TrainConfig, blocks, freeze, load_split, replace_head
    from convscope.train import train as run
    from convscope.train.report import write_report

    ks = parse_range(freeze_blocks)
    for k in ks:
        _check_resume(out / f"freeze_{k}", resume)
    subject = load_subject(model, weights, arch, "cpu")
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
    base = subject.model
    if scan_layer:
        _scan(subject, te, out / "scan_before", scan_layer, device)
    rows = []
    for k in ks:
        torch.manual_seed(seed)
        m = copy.deepcopy(base)
        replace_head(m, len(tr.classes))
        frozen = freeze(m, k)
        where = out / f"freeze_{k}"
        bar, progress = _bar(f"freeze {k}")
        try:
            result = run(
                m,
                tr,
                te,
                config,
                where,
                device=device,
                progress=progress,
                meta={"model": model, "freeze": k, "classes": tr.classes},
            )
        finally:
            bar.stop()
        write_report(where, m, result, te, config, tr.classes, f"{subject.name}, {k} blocks frozen")
        rows.append({"freeze": k, "frozen": frozen, "test_accuracy": result.final.test_accuracy})
        Console().print(
            f"freeze {k} ({frozen[-1] if frozen else 'none'}): test accuracy "
            f"{result.final.test_accuracy:.4f}; {where}/confusion.png"
        )
        if scan_layer and k == ks[-1]:
            from convscope.subject import Subject

            after = Subject(m.cpu().eval(), subject.preprocess, tr.classes, name=f"{subject.name}-finetuned")
            _scan(after, te, out / "scan_after", scan_layer, device)
    write_text(out / "transfer.json", json.dumps({"blocks": names, "rows": rows}, indent=1))
    if len(ks) > 1:
        png = save_image(
            figure_to_image(transfer_figure(ks, [r["test_accuracy"] for r in rows], names)),
            out / "transfer.png",
        )
        Console().print(f"transferability sweep: {png}")


def _scan(subject, data, where: Path, layer: str, device: str) -> None:
    """Scan ``data`` (uint8 tensors) through ``subject`` into an atlas at ``where``."""
    from convscope.atlas import scan_to_atlas
    from convscope.inputs.fileio import save_image

    img_dir = where.parent / "scan_images"
    if not img_dir.exists():
        from PIL import Image

        for i, (x, y) in enumerate(zip(data.images, data.labels)):
            p = img_dir / data.classes[int(y)] / f"{i:05d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            save_image(Image.fromarray(x.permute(1, 2, 0).numpy()), p)
    from dataclasses import replace

    from convscope.inputs.sources import open_images
    from convscope.subject import Subject

    # the images are already what the model sees (its own resize and crop): scanned as they are
    pre = replace(subject.preprocess, resize=None, mode="squash")
    seen = Subject(subject.model, pre, subject.labels, name=subject.name)
    source = open_images(img_dir, transform=seen.transform)
    seen.to(device)
    scan_to_atlas(seen, source, where, [layer], overwrite=True, k=8, batch_size=16, threshold_sample=32)


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
    from convscope.inputs.fileio import save_image
    from convscope.train.filters import conv_layers, evolution_figure, filters_grid, is_run, rank_filters

    names = [s.strip() for s in layers.split(",")] if layers else None
    if is_run(target):
        fig, drawn, epochs = evolution_figure(target, names, n=min(n, 8))
        save_image(fig, out)
        Console().print(f"{len(drawn)} layers x {len(epochs)} epochs -> {out}")
        return
    subject = load_subject(target, weights, arch, device)
    names = names or conv_layers(subject)[:1]
    ranking = None
    if data is not None:
        from convscope.cli.common import open_data

        ranking = rank_filters(subject, open_data([data], subject.transform), names, name=data)
        for nm in names:
            top = ", ".join(str(u) for u in ranking.top(nm, 8))
            Console().print(f"{nm}: most activated filters {top} ...")
    grid, drawn = filters_grid(subject, names, n, ranking)
    save_image(grid, out)
    Console().print(f"{len(drawn)} filters -> {out}" if ranking is None else f"-> {out}")


def compare_scans(
    before: Annotated[Path, typer.Argument(help="atlas before (e.g. finetune/scan_before)")],
    after: Annotated[Path, typer.Argument(help="atlas after (e.g. finetune/scan_after)")],
    layers: Annotated[str, typer.Option("--layers", help="the scanned layer (one)")],
    units: Annotated[str, typer.Option("--units", help="e.g. 0-3")] = "0-3",
    k: Annotated[int, typer.Option("--k", min=1, help="top images per side")] = 6,
    out: Annotated[Path, typer.Option("--out", help="folder for the PNGs")] = Path("compare_scans"),
) -> None:
    """A unit's top images before and after (e.g. fine-tuning), side by side."""
    from convscope.atlas import Atlas
    from convscope.cli.common import one_layer, parse_range
    from convscope.inputs.fileio import save_image
    from convscope.inputs.sources import open_spec
    from convscope.train.report import compare_scans_figure

    a, b = Atlas.open(before), Atlas.open(after)
    sources = open_spec(a.source_spec), open_spec(b.source_spec)
    name = a.layer(one_layer(layers))["name"]
    for u in parse_range(units):
        png = save_image(
            compare_scans_figure(a, b, name, u, k, sources=sources), out / f"{name}_unit{u:04d}.png"
        )
        Console().print(f"{name}:{u} -> {png}")
