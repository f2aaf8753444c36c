"""``convscope microscope MODEL --data DIR --out ATLAS``: the scan, stored feature
visualisations, dissection, receptive fields, concept sets and activation atlases of the chosen
layers, as resumable stages recorded in the atlas (``--plan``: the stages and their estimated
time first)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from convscope.cli.common import (
    ArchOpt,
    ChannelsLastOpt,
    DatasetOpt,
    DeviceOpt,
    ModelArg,
    PrecisionOpt,
    ResumeOpt,
    SeedOpt,
    WeightsOpt,
    load_subject,
    make_accel,
    open_data,
    progress_bar,
    resumable,
)


def microscope(
    model: ModelArg = "efficientnet_lite0",
    data: DatasetOpt = None,
    out: Annotated[Path, typer.Option("--out", help="atlas folder (created or continued)")] = Path("atlas"),
    layers: Annotated[
        str, typer.Option("--layers", help="comma-separated layers, globs, 'stages' or 'all-conv'")
    ] = "stages",
    units: Annotated[
        str, typer.Option("--units", help="'all', or the first N units of each layer to visualise")
    ] = "all",
    stages: Annotated[
        str | None,
        typer.Option(
            "--stages",
            help="comma-separated: scan, visuals, dissect, rf, concepts, activation_atlas [default: all]",
        ),
    ] = None,
    concepts: Annotated[
        str | None, typer.Option("--concepts", help="a concept set per layer, METHOD:N (e.g. nmf:32)")
    ] = None,
    broden: Annotated[
        Path | None, typer.Option("--broden", help="a Broden-format folder to dissect on as well")
    ] = None,
    steps: Annotated[
        int, typer.Option("--steps", min=1, help="optimisation steps of each feature visualisation")
    ] = 256,
    plan: Annotated[
        bool, typer.Option("--plan", help="print the stages and their estimated time; run nothing")
    ] = False,
    resume: ResumeOpt = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="run the chosen stages again, replacing their output")
    ] = False,
    weights: WeightsOpt = "default",
    arch: ArchOpt = None,
    device: DeviceOpt = "cpu",
    precision: PrecisionOpt = "fp32",
    channels_last: ChannelsLastOpt = None,
    seed: SeedOpt = 0,
) -> None:
    """Build the microscope of a model: everything about every chosen unit, stored in one atlas
    that `convscope serve` browses without computing. --precision and --channels-last apply to
    the feature visualisations."""
    from convscope.atlas.microscope_build import STAGES, microscope_to_atlas
    from convscope.errors import UserInputError

    chosen = None if stages is None else [s.strip() for s in stages.split(",") if s.strip()]
    unknown = [s for s in chosen or [] if s not in STAGES]
    if unknown:  # before the model loads
        raise UserInputError(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    if units != "all" and not (units.isdigit() and int(units) >= 1):
        raise UserInputError(f"--units is 'all' or a number >= 1, not {units!r}")
    visuals = {"steps": steps}
    if precision != "fp32" or channels_last is not None:  # as before when not asked for
        visuals["accel"] = make_accel(precision, channels_last)  # a wrong precision fails here
    console = Console(stderr=True)
    subject = load_subject(model, weights, arch, device)
    source = open_data(data, subject.transform)
    bars = _StageBars(console)
    with resumable(out, bars):
        built = microscope_to_atlas(
            subject,
            source,
            out,
            layers=layers,
            units="all" if units == "all" else int(units),
            stages=chosen,
            concepts=concepts,
            broden=broden,
            plan_only=plan,
            resume=resume,
            overwrite=overwrite,
            seed=seed,
            options={"visuals": visuals},
            progress=bars.update,
        )
    o = Console()
    if plan:
        table = Table(
            "stage", "action", "estimate", "counts", title=f"microscope of {', '.join(built.layers)}"
        )
        for p in built.plan:
            table.add_row(p.name, p.action, _duration(p.seconds), p.note)
        o.print(table)
        known = [p.seconds for p in built.plan if p.seconds is not None]
        o.print(f"total about {_duration(sum(known))} (from a short probe on this machine)")
        return
    o.print(built.headline(), soft_wrap=True)
    for row in built.stages:
        took = "" if row["seconds"] is None else f" in {_duration(row['seconds'])}"
        o.print(f"  {row['name']:<17} {row['status']}{took}")
    o.print(f"browse it with: convscope serve {out}", soft_wrap=True)


class _StageBars:
    """One progress bar per stage (units/s and time left), a new one when the stage changes."""

    def __init__(self, console):
        self.console = console
        self.stage = None
        self.bar = None
        self.call = None

    def update(self, done, total, note=None) -> None:
        stage = (note or "").split(":")[0]
        if stage != self.stage:
            self.stop()
            self.stage = stage
            unit = "img" if stage == "visuals" else "it"  # the visuals stage counts images
            self.bar, self.call = progress_bar(stage, None, self.console, unit=unit)
        if total:
            self.call(done, total, note)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
