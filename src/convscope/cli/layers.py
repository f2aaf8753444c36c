"""``convscope layers MODEL``: the layer table."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from convscope.cli.common import ArchOpt, DeviceOpt, ModelArg, WeightsOpt, load_subject


def layers(
    model: ModelArg = "efficientnet_lite0",
    weights: WeightsOpt = "default",
    arch: ArchOpt = None,
    device: DeviceOpt = "cpu",
    filter: Annotated[
        str | None,
        typer.Option("--filter", help="only layers matching this glob, e.g. 'features.*' or 'conv*'"),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="table or json")] = "table",
) -> None:
    """Print every layer: name, type, output shape, units, receptive field size and stride,
    layout (NCHW, NHWC, tokens) and, for global fields, why they are global."""
    from convscope.errors import UserInputError
    from convscope.layers import LAYER_COLUMNS, layer_row

    if fmt not in ("table", "json"):
        raise UserInputError("--format must be 'table' or 'json'")
    subject = load_subject(model, weights, arch, device)
    infos = list(subject.layers)
    if filter:
        names = set(subject.layers.resolve(filter))
        infos = [i for i in infos if i.name in names or i.module in names]
    cols = LAYER_COLUMNS
    if fmt == "json":
        typer.echo(json.dumps([dict(zip(cols, layer_row(i))) for i in infos], indent=1))
        return
    h, w = subject.input_size
    table = Table(
        title=f"{subject.name}: {len(infos)} layers, input {h}x{w} px", box=None, header_style="bold"
    )
    for c in cols:
        table.add_column(c, justify="right" if c in ("units", "rf", "stride") else "left")
    for info in infos:
        table.add_row(*layer_row(info))
    Console(width=200).print(table)
