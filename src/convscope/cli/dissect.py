"""``convscope dissect MODEL --concepts DIR|auto-color|synthetic --layers ... --out ATLAS`` and
``convscope dissect-compare ATLAS[:LAYER] ... --out PNG``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from convscope.cli.common import (
    DATA_HELP,
    AddressOpt,
    ArchOpt,
    ChannelsLastOpt,
    DeviceOpt,
    EngineOpt,
    LayersOpt,
    ModelArg,
    PrecisionOpt,
    RayWorkersOpt,
    SeedOpt,
    WeightsOpt,
    WorkersOpt,
    load_subject,
    make_accel,
    open_data,
    progress_bar,
    writes_atlas,
)


@writes_atlas("out")
def dissect(
    model: ModelArg = "efficientnet_lite0",
    concepts: Annotated[
        str,
        typer.Option(
            "--concepts",
            help="a Broden-format directory, 'auto-color' (colour names of --data) "
            "or 'synthetic' (generated shapes, colours, textures)",
        ),
    ] = "synthetic",
    layers: LayersOpt = "stages",
    out: Annotated[Path, typer.Option("--out", help="atlas folder (created or added to)")] = Path("atlas"),
    images: Annotated[
        list[str] | None,
        typer.Option("--data", help="images for auto-color: " + DATA_HELP + " [default: convscope:samples]"),
    ] = None,
    color_table: Annotated[
        Path | None, typer.Option("--color-table", help="van de Weijer w2c table (32768 rows) for auto-color")
    ] = None,
    iou: Annotated[float, typer.Option("--iou", help="IoU above which a unit detects a concept")] = 0.04,
    quantile: Annotated[
        float, typer.Option("--quantile", help="fraction of each unit's activations above its threshold")
    ] = 0.005,
    max_coverage: Annotated[
        float,
        typer.Option(
            "--max-coverage",
            help="units whose region covers more of all pixels are not detectors (saturating units)",
        ),
    ] = 0.2,
    synthetic_images: Annotated[
        int, typer.Option("--synthetic-images", min=8, help="images generated for --concepts synthetic")
    ] = 256,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="use the first N images")] = None,
    show: Annotated[int, typer.Option("--show", min=0, help="unit figures per layer (best IoU first)")] = 12,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="default: 4 on a CPU, 64 on a GPU")
    ] = None,
    workers: WorkersOpt = None,
    precision: PrecisionOpt = "fp32",
    channels_last: ChannelsLastOpt = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="continue a killed job from its finished shards (--engine ray; a local "
            "dissection keeps no partial state)",
        ),
    ] = False,
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    ray_workers: RayWorkersOpt = 2,
    weights: WeightsOpt = "default",
    arch: ArchOpt = None,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
) -> None:
    """Network dissection: label every unit by the concept its top-activation region segments
    best (IoU), store it in the atlas and draw the report."""
    from convscope.atlas.build import dissect_to_atlas
    from convscope.dissect.report import best_labels
    from convscope.errors import UserInputError
    from convscope.scale.engine import resolve_engine

    if not 0 < quantile < 1:
        raise UserInputError("--quantile must lie between 0 and 1")
    console = Console(stderr=True)
    accel = make_accel(precision, channels_last)
    subject = load_subject(model, weights, arch, device)
    on = resolve_engine(engine, address=address, workers=ray_workers, device=device)
    bar, progress = progress_bar("dissecting", None, console, unit="img")
    try:
        done = dissect_to_atlas(
            subject,
            concepts,
            out,
            layers,
            engine=on,
            resume=resume,
            progress=progress,
            units=show,
            images=open_data(images) if concepts == "auto-color" else None,
            color_table=color_table,
            synthetic_images=synthetic_images,
            seed=seed,
            limit=limit,
            quantile=quantile,
            iou_threshold=iou,
            max_coverage=max_coverage,
            batch_size=batch_size,
            workers=workers,
            accel=accel,
        )
    finally:
        bar.stop()
    store, result, set_name, other = done.atlas, done.result, done.concepts, done.other
    table = Table(title=f"{subject.name} on {set_name} concepts ({result.images} images)")
    for col in ("layer", "units", "detectors", "unique", "best units"):
        table.add_column(col)
    for name in result.layers:
        s = result.summary(name)
        best = ", ".join(
            f"{lab.unit}:{lab.name} {lab.iou:.2f}" for lab in best_labels(result.labels(name), 3)
        )
        table.add_row(name, str(s.units), str(s.total_detectors), str(s.total_unique), best)
    o = Console()
    o.print(table)
    if result.skipped:
        from convscope.inputs.images import SkipReport

        o.print(SkipReport(list(result.skipped)).summary())
    if other:
        o.print(
            f"not in the report's charts: {', '.join(other)} (dissected with other --iou, "
            "--quantile or --max-coverage)"
        )
    o.print(f"atlas: {store.db_path}; report in {store.dissection_dir(set_name)}/")


def dissect_compare(
    atlases: Annotated[
        list[str],
        typer.Argument(help="ATLAS or ATLAS:LAYER (default: the last layer dissected), one per model"),
    ],
    out: Annotated[Path, typer.Option("--out", help="PNG to write")] = Path("dissect_compare.png"),
    concepts: Annotated[
        str | None,
        typer.Option("--concepts", help="concept set name in the atlases (when they hold several)"),
    ] = None,
    all_detectors: Annotated[
        bool, typer.Option("--all-detectors", help="count every detector unit, not unique concepts")
    ] = False,
) -> None:
    """Compare dissected layers of several atlases (models) or of one: unique detectors per
    category, as Bau et al.'s comparison of last convolutional layers."""
    from convscope.atlas.build import compare_dissections

    comparison = compare_dissections(atlases, concepts, unique=not all_detectors)
    comparison.write_report(out)
    for r in comparison.rows():
        Console().print(
            f"{r['model']}: {sum(r['unique'].values())} unique concepts, "
            f"{sum(r['detectors'].values())} detectors of {r['units']} units"
        )
    Console().print(f"wrote {out}")
