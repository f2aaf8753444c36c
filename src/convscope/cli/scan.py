"""``convscope scan MODEL --data DIR --layers ... --out ATLAS``: top-K images per unit."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from convscope.cli.common import (
    AddressOpt,
    ArchOpt,
    ChannelsLastOpt,
    DatasetOpt,
    DecodeOpt,
    DeviceOpt,
    EngineOpt,
    LayersOpt,
    ModelArg,
    PrecisionOpt,
    RayWorkersOpt,
    ResumeOpt,
    SeedOpt,
    WeightsOpt,
    WorkersOpt,
    load_subject,
    make_accel,
    open_data,
    progress_bar,
    resumable,
    writes_atlas,
)
from convscope.scan.result import SaturationWarning


@writes_atlas("out")
def scan(
    model: ModelArg = "efficientnet_lite0",
    data: DatasetOpt = None,
    layers: LayersOpt = "stages",
    out: Annotated[Path, typer.Option("--out", help="atlas folder")] = Path("atlas"),
    k: Annotated[int, typer.Option("--k", min=1, help="images kept per unit")] = 16,
    criteria: Annotated[str, typer.Option("--criteria", help="any of max,mean,area")] = "max,mean,area",
    directions: Annotated[
        int, typer.Option("--directions", min=0, help="random directions per layer, scanned like units")
    ] = 0,
    pattern: Annotated[str | None, typer.Option("--pattern", help="only images matching")] = None,
    resume: ResumeOpt = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing atlas")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    workers: WorkersOpt = None,
    threshold_sample: Annotated[
        int, typer.Option("--threshold-sample", min=1, help="images sampled for the `area` thresholds")
    ] = 256,
    checkpoint_every: Annotated[
        float, typer.Option("--checkpoint-every", help="seconds between checkpoints")
    ] = 30.0,
    render: Annotated[
        int, typer.Option("--render", min=0, help="write top-K grids for the first N units of each layer")
    ] = 0,
    precision: PrecisionOpt = "fp32",
    channels_last: ChannelsLastOpt = None,
    decode: DecodeOpt = "cpu",
    amp: Annotated[bool, typer.Option("--amp", hidden=True, help="old name of --precision bf16")] = False,
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    ray_workers: RayWorkersOpt = 2,
    weights: WeightsOpt = "default",
    arch: ArchOpt = None,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
) -> None:
    """Scan a dataset: the top-K images and patches of every unit, into an atlas folder."""
    from convscope.atlas.build import render_layers, scan_to_atlas
    from convscope.scale.engine import resolve_engine

    console = Console(stderr=True)
    if amp:  # it meant bf16 autocast on CUDA and nothing on a CPU
        console.print("--amp is now --precision bf16 (fp16 keeps top-K lists closer: docs/scale.md)")
        precision = "bf16" if device.startswith("cuda") else precision
    accel = make_accel(precision, channels_last, decode)
    subject = load_subject(model, weights, arch, device)
    source = open_data(data, subject.transform, pattern)
    crits = [c.strip() for c in criteria.split(",") if c.strip()]
    bar, progress = progress_bar("scanning", len(source), console, unit="img")

    run = resolve_engine(engine, address=address, workers=ray_workers, device=device)
    quiet = warnings.catch_warnings()  # a saturating layer: one line at the end instead
    quiet.__enter__()
    warnings.simplefilter("ignore", SaturationWarning)
    try:
        with resumable(out, bar):
            atlas, result = scan_to_atlas(
                subject,
                source,
                out,
                layers,
                engine=run,
                resume=resume,
                overwrite=overwrite,
                progress=progress,
                k=k,
                criteria=crits,
                directions=directions,
                seed=seed,
                batch_size=batch_size,
                threshold_sample=threshold_sample,
                accel=accel,
                workers=workers,
                checkpoint_every=checkpoint_every,
            )
    finally:
        quiet.__exit__(None, None, None)
    rendered = render_layers(atlas, subject, source, result, render)
    o = Console()
    o.print(
        f"scanned {result.processed} images of {source.description} through "
        f"{subject.name}: {', '.join(result.layers)}"
    )
    o.print(f"{result.images_per_second:.1f} images/s; {_skips(result)}")
    grids = f"; {len(rendered)} grids in {atlas.render_dir}/" if rendered else ""
    o.print(f"atlas: {atlas.db_path}{grids}")
    if result.saturation_message():
        typer.echo(f"warning: {result.saturation_message()}", err=True)  # one line, unwrapped


def _skips(result) -> str:
    from convscope.inputs.images import SkipReport

    report = SkipReport([(result.image_names[i], r) for i, r in result.skipped])
    return report.summary()
