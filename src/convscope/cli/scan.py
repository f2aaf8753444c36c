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
    check_engine,
    load_subject,
    make_accel,
    open_data,
    progress_bar,
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
    from convscope.atlas import render_units, scan_to_atlas

    console = Console(stderr=True)
    if amp:  # it meant bf16 autocast on CUDA and nothing on a CPU
        console.print("--amp is now --precision bf16 (fp16 keeps top-K lists closer: docs/scale.md)")
        precision = "bf16" if device.startswith("cuda") else precision
    accel = make_accel(precision, channels_last, decode)
    subject = load_subject(model, weights, arch, device)
    source = open_data(data, subject.transform, pattern)
    crits = [c.strip() for c in criteria.split(",") if c.strip()]
    bar, progress = progress_bar("scanning", len(source), console, unit="img")

    check_engine(engine)
    quiet = warnings.catch_warnings()  # a saturating layer: one line at the end instead
    quiet.__enter__()
    warnings.simplefilter("ignore", SaturationWarning)
    try:
        if engine == "ray":
            atlas, result = _ray_scan(
                subject,
                source,
                out,
                layers,
                resume,
                overwrite,
                progress,
                address,
                ray_workers,
                device,
                k=k,
                criteria=crits,
                directions=directions,
                seed=seed,
                batch_size=batch_size,
                threshold_sample=threshold_sample,
                accel=accel,
            )
        else:
            atlas, result = scan_to_atlas(
                subject,
                source,
                out,
                layers,
                resume=resume,
                overwrite=overwrite,
                k=k,
                criteria=crits,
                directions=directions,
                seed=seed,
                batch_size=batch_size,
                workers=workers,
                threshold_sample=threshold_sample,
                checkpoint_every=checkpoint_every,
                accel=accel,
                progress=progress,
            )
    except KeyboardInterrupt:
        bar.stop()
        console.print(f"interrupted; continue with the same command and --resume (atlas {out})")
        raise typer.Exit(130) from None
    finally:
        bar.stop()
        quiet.__exit__(None, None, None)
    rendered = []
    for name in result.layers if render else []:
        units = range(min(render, result.channels[name]))
        rendered += render_units(atlas, subject, source, name, units)
    o = Console()
    o.print(
        f"scanned {result.processed} images of {source.description} through "
        f"{subject.name}: {', '.join(result.layers)}"
    )
    o.print(f"{result.images_per_second:.1f} images/s; {_skips(result)}")
    o.print(f"atlas: {out}/atlas.db" + (f"; {len(rendered)} grids in {out}/render/" if rendered else ""))
    if result.saturation_message():
        typer.echo(f"warning: {result.saturation_message()}", err=True)  # one line, unwrapped


def _ray_scan(subject, source, out, layers, resume, overwrite, progress, address, workers, device, **options):
    """The scan sharded over Ray actors; finished shards are kept in ``ATLAS/ray_shards`` so that
    the same command with --resume continues a killed job."""
    import shutil
    import time

    from convscope.atlas import Atlas
    from convscope.atlas.build import model_spec
    from convscope.scale import ray_scan

    atlas = Atlas.create(out, model_spec(subject), source.spec, overwrite=overwrite, resume=resume)
    state = atlas.path / "ray_shards"
    if not resume:
        shutil.rmtree(state, ignore_errors=True)
    started = time.time()
    result = ray_scan(
        subject,
        source,
        layers,
        workers=workers,
        address=address,
        device=device,
        state_dir=state,
        progress=progress,
        **options,
    )
    atlas.write_scan(result, subject, started)
    shutil.rmtree(state, ignore_errors=True)
    return atlas, result


def _skips(result) -> str:
    from convscope.inputs.images import SkipReport

    report = SkipReport([(result.image_names[i], r) for i, r in result.skipped])
    return report.summary()
