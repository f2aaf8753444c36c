"""``convscope rf ATLAS --layers L`` and ``convscope stimuli ATLAS --layers L --unit U``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from convscope.cli.common import DeviceOpt, one_layer, parse_range, writes_atlas


@writes_atlas("atlas")
def rf(
    atlas: Annotated[Path, typer.Argument(help="atlas folder written by `convscope scan`")],
    layers: Annotated[str, typer.Option("--layers", help="the scanned layer (one)")],
    units: Annotated[str, typer.Option("--units", help="units, e.g. 0-63")] = "0-7",
    top: Annotated[int, typer.Option("--top", min=1, help="top images per unit")] = 4,
    occluder: Annotated[int, typer.Option("--occluder", min=1, help="occluder side, px")] = 11,
    stride: Annotated[int, typer.Option("--stride", min=1, help="occluder stride, px")] = 3,
    fill: Annotated[str, typer.Option("--fill", help="noise, gray, zero or mean")] = "noise",
    criterion: Annotated[str, typer.Option("--criterion", help="which top-K list")] = "max",
    device: DeviceOpt = "cpu",
) -> None:
    """Empirical receptive fields from discrepancy maps of each unit's top images, stored in the
    atlas and drawn per unit, with the layer's empirical-vs-theoretical size plot."""
    from convscope.atlas import Atlas, reopen
    from convscope.empirical import layer_summary
    from convscope.empirical.report import write_rf_report, write_rf_sizes

    store = Atlas.open(atlas)
    subject, source = reopen(store)
    subject.to(device)
    name = store.layer(one_layer(layers))["name"]
    o = Console()
    done = write_rf_report(
        store,
        subject,
        source,
        name,
        parse_range(units),
        top=top,
        criterion=criterion,
        patch=occluder,
        stride=stride,
        fill=fill,
    )
    for u, result, png in done:
        o.print(
            f"{name}:{u:<5} empirical {result.size:6.1f} px ({result.height}x{result.width}), "
            f"theoretical {result.theoretical:.0f} px   {png}"
        )
    _, png = write_rf_sizes(store)
    if done:
        s = layer_summary([r for _, r, _ in done])
        o.print(
            f"{name}: mean empirical RF {s['empirical_mean']:.1f} px vs theoretical "
            f"{s['theoretical']:.0f} px over {s['units']} units; plot {png}"
        )


@writes_atlas("atlas")
def stimuli(
    atlas: Annotated[Path, typer.Argument(help="atlas folder written by `convscope scan`")],
    layers: Annotated[str, typer.Option("--layers", help="the scanned layer (one)")],
    unit: Annotated[int, typer.Option("--unit", help="channel")],
    stride: Annotated[int, typer.Option("--stride", min=1, help="patch placement stride, px")] = 8,
    device: DeviceOpt = "cpu",
) -> None:
    """Position tuning and scrambling tests with the unit's best patch (from its top image)."""

    from convscope.atlas import Atlas, reopen
    from convscope.empirical import best_patch
    from convscope.empirical import stimuli as run
    from convscope.inputs.fileio import save_image

    store = Atlas.open(atlas)
    subject, source = reopen(store)
    subject.to(device)
    info = subject.layer(store.layer(one_layer(layers))["name"])
    tk = store.topk(info.name, unit, "max")
    patch = best_patch(subject, source.read(int(tk.images[0])), info.name, int(tk.ys[0]), int(tk.xs[0]))
    st = run(subject, patch, info.name, unit, stride=stride)
    png = save_image(st.to_image(), store.stimuli_render(info.name, unit))
    Console().print(
        f"{info.name}:{unit} intact {st.intact:.3g}, pixels shuffled {st.shuffled:.3g}, "
        f"blocks scrambled {st.scrambled:.3g}; wrote {png}"
    )
