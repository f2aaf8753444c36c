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
    from convscope.atlas import Atlas, reopen
    from convscope.cli.common import one_layer
    from convscope.errors import UserInputError
    from convscope.inputs.fileio import save_image
    from convscope.inputs.images import display_name
    from convscope.scan.patches import render_topk

    if fmt not in ("table", "json"):
        raise UserInputError("--format must be 'table' or 'json'")
    layer = one_layer(layers)
    store = Atlas.open(atlas)
    top = store.topk(layer, unit, criterion, direction=direction)
    png = None
    if not no_render and len(top):
        subject, source = reopen(store)
        subject.to(device)
        vec = store.direction(layer, unit) if direction else None
        kind = "direction" if direction else "unit"
        png = out or store.render_dir / layer / f"{kind}{unit:04d}_{criterion}.png"
        measured = [] if direction else [r["size"] for r in store.empirical_rfs(layer) if r["unit"] == unit]
        save_image(
            render_topk(subject, source, top, direction=vec, empirical=measured[0] if measured else None), png
        )
    rows = [
        {"rank": r, "image": int(i), "name": display_name(n), "score": float(s), "y": int(y), "x": int(x)}
        for r, (i, n, s, y, x) in enumerate(zip(top.images, top.names, top.scores, top.ys, top.xs))
    ]
    names = [] if direction else store.unit_names().get(top.layer, [])
    unit_name = names[unit] if 0 <= unit < len(names) else None  # a classifier's class
    if fmt == "json":
        typer.echo(
            json.dumps(
                {
                    "layer": layer,
                    "unit": unit,
                    "unit_name": unit_name,
                    "criterion": criterion,
                    "direction": direction,
                    "png": str(png) if png else None,
                    "top": rows,
                },
                indent=1,
            )
        )
        return
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
