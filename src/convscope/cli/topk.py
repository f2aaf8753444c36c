"""``convscope topk ATLAS --layers L --unit U``: one unit's top images, as a table and a PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table


def topk(
    atlas: Annotated[Path, typer.Argument(help="atlas folder written by `convscope scan`")],
    layers: Annotated[str, typer.Option("--layers", help="the scanned layer (one)")],
    unit: Annotated[int, typer.Option("--unit", help="channel (or direction) number")],
    criterion: Annotated[str, typer.Option("--criterion", help="max, mean or area")] = "max",
    direction: Annotated[
        bool, typer.Option("--direction", help="UNIT is a random direction, not a channel")
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="PNG path (default: ATLAS/render/LAYER/...)")
    ] = None,
    no_render: Annotated[bool, typer.Option("--no-render", help="print the table only")] = False,
    fmt: Annotated[str, typer.Option("--format", help="table or json")] = "table",
    device: Annotated[str, typer.Option("--device")] = "cpu",
) -> None:
    """Print the top-K images of one unit and write its patch/heat-map grid."""
    from convscope.atlas import Atlas
    from convscope.atlas.build import unit_top
    from convscope.cli.common import one_layer
    from convscope.errors import UserInputError

    if fmt not in ("table", "json"):
        raise UserInputError("--format must be 'table' or 'json'")
    report = unit_top(
        Atlas.open(atlas),
        one_layer(layers),
        unit,
        criterion,
        direction=direction,
        render=not no_render,
        out=out,
        device=device,
    )
    if fmt == "json":
        typer.echo(json.dumps(report, indent=1))
        return
    layer, rows, unit_name, png = report["layer"], report["top"], report["unit_name"], report["png"]
    named = f" ({unit_name})" if unit_name else ""
    table = Table(
        title=f"{layer} {'direction' if direction else 'unit'} {unit}{named}, top {len(rows)} by {criterion}",
        box=None,
        header_style="bold",
    )
    for c in ("rank", "score", "y", "x", "image"):
        table.add_column(c, justify="right" if c != "image" else "left")
    for r in rows:
        table.add_row(str(r["rank"]), f"{r['score']:.4g}", str(r["y"]), str(r["x"]), r["name"])
    console = Console(width=160)
    console.print(table)
    if png:
        console.print(f"wrote {png}")
