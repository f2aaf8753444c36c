"""``convscope visualize | classviz | invert | dream``: images made by optimising the input."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from convscope.cli.common import (
    DEFAULT_MODEL,
    ArchOpt,
    ChannelsLastOpt,
    DataOpt,
    DeviceOpt,
    LayersOpt,
    ModelArg,
    PrecisionOpt,
    SeedOpt,
    WeightsOpt,
    load_subject,
    make_accel,
    one_layer,
    parse_classes,
    parse_range,
    progress_bar,
    read_images,
)

StepsOpt = Annotated[int, typer.Option("--steps", min=1, help="optimisation steps")]
SizeOpt = Annotated[int, typer.Option("--size", min=8, help="image size, px")]
ParamOpt = Annotated[str, typer.Option("--param", help="fft or pixel")]
VizParamOpt = Annotated[
    str, typer.Option("--param", help="fft, pixel or maco (phase only, natural magnitude, transparency)")
]
OutOpt = Annotated[Path, typer.Option("--out", help="output folder")]


def visualize(
    model: ModelArg = DEFAULT_MODEL,
    layers: Annotated[str, typer.Option("--layers", help="the layer to visualise")] = ...,
    units: Annotated[str, typer.Option("--units", help="units, e.g. 0-31 or 3,7,9")] = "0-7",
    direction: Annotated[
        str | None, typer.Option("--direction", help="random:N for N random directions instead of units")
    ] = None,
    neuron: Annotated[bool, typer.Option("--neuron", help="centre neuron, not the channel")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="units optimised together")] = 32,
    steps: StepsOpt = 256,
    size: Annotated[
        int | None, typer.Option("--size", min=8, help="canvas size, px (default 128; maco 512)")
    ] = None,
    param: VizParamOpt = "fft",
    out: OutOpt = Path("visualize-out"),
    precision: PrecisionOpt = "fp32",
    channels_last: ChannelsLastOpt = None,
    weights: WeightsOpt = "default",
    arch: ArchOpt = None,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
) -> None:
    """Feature visualisation: one image per unit (or random direction) of a layer."""
    from convscope.errors import UserInputError
    from convscope.synthesis import visualize_directions, visualize_units
    from convscope.units import Direction

    subject = load_subject(model, weights, arch, device)
    info = subject.layer(one_layer(layers))
    bar, progress = progress_bar(f"visualising {info.name}", steps, unit="steps")
    try:
        opts = dict(
            steps=steps,
            size=size,
            param=param,
            seed=seed,
            accel=make_accel(precision, channels_last),
            progress=progress,
        )
        if direction:
            kind, _, n = direction.partition(":")
            if kind != "random" or not n.isdigit():
                raise UserInputError("--direction takes random:N")
            dirs = Direction.random(info.name, info.units, int(n), seed=seed)
            syn = visualize_directions(subject, dirs, **opts)
        else:
            syn = visualize_units(
                subject, info.name, parse_range(units), batch=batch_size, neuron=neuron, **opts
            )
    finally:
        bar.stop()
    stem = f"{info.name}_{'directions' if direction else 'units'}"
    png = syn.to_png(out / f"{stem}.png", ncols=min(8, len(syn.labels)))
    syn.save(out / f"{stem}.npz")
    _report(syn, png)


def classviz(
    model: ModelArg = DEFAULT_MODEL,
    classes: Annotated[
        str, typer.Option("--classes", help="class indices or names, e.g. 285,967 or zebra,espresso")
    ] = "285",
    l2: Annotated[float, typer.Option("--l2", help="weight of the L2 image prior")] = 0.0,
    plain: Annotated[
        bool, typer.Option("--plain", help="Simonyan et al.'s version: pixels, no transforms (use --l2)")
    ] = False,
    steps: StepsOpt = 256,
    size: SizeOpt = 224,
    param: ParamOpt = "fft",
    out: OutOpt = Path("classviz-out"),
    precision: PrecisionOpt = "fp32",
    channels_last: ChannelsLastOpt = None,
    weights: WeightsOpt = "default",
    arch: ArchOpt = None,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
) -> None:
    """Class model visualisation: the image that maximises each class score."""
    from convscope.synthesis import class_model

    subject = load_subject(model, weights, arch, device)
    cls = parse_classes(subject, classes)
    bar, progress = progress_bar("class models", steps, unit="steps")
    try:
        opts = dict(
            steps=steps, size=size, seed=seed, accel=make_accel(precision, channels_last), progress=progress
        )
        if not plain:
            opts["param"] = param
        syn = class_model(subject, cls, l2=l2, regularized=not plain, **opts)
    finally:
        bar.stop()
    png = syn.to_png(out / "classes.png", ncols=min(6, len(cls)))
    syn.save(out / "classes.npz")
    preds = subject.predict(subject.load_images([_pil(i) for i in syn.images]), k=1)
    o = Console()
    for i, (c, label) in enumerate(zip(cls, syn.labels)):
        o.print(
            f"class {c} ({label}): the image is classified as {preds.names(i)[0]} "
            f"(p = {preds.probs[i, 0]:.3f})"
        )
    o.print(f"wrote {png}")


def invert(
    model: ModelArg = DEFAULT_MODEL,
    images: Annotated[
        list[str] | None, typer.Argument(hidden=True, help="old spelling of --data: images after the model")
    ] = None,
    data: DataOpt = None,
    layers: LayersOpt = "blocks.1",
    restarts: Annotated[int, typer.Option("--restarts", min=1)] = 2,
    tv: Annotated[float, typer.Option("--tv", help="weight of the TV^beta prior")] = 0.005,
    beta: Annotated[float, typer.Option("--beta", help="TV exponent")] = 2.0,
    steps: StepsOpt = 200,
    out: OutOpt = Path("invert-out"),
    weights: WeightsOpt = "default",
    arch: ArchOpt = None,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
) -> None:
    """Invert an image's representation at each layer (Mahendran & Vedaldi)."""
    from convscope.synthesis import invert as run

    subject = load_subject(model, weights, arch, device)
    names = subject.layers.resolve(layers)
    o = Console()
    for name, img in read_images([*(images or []), *(data or [])]):
        bar, progress = progress_bar(f"inverting {name}", steps, unit="steps")
        try:
            inv = run(
                subject,
                img,
                names,
                restarts=restarts,
                tv=tv,
                beta=beta,
                steps=steps,
                seed=seed,
                progress=progress,
            )
        finally:
            bar.stop()
        png = inv.to_png(out / f"{name}_inversion.png")
        for n, e in zip(inv.layers, inv.errors):
            o.print(f"{n:<24} normalised feature error {e:.4f}")
        o.print(f"wrote {png}")


def dream(
    model: ModelArg = DEFAULT_MODEL,
    images: Annotated[
        list[str] | None, typer.Argument(hidden=True, help="old spelling of --data: images after the model")
    ] = None,
    data: DataOpt = None,
    layers: Annotated[str, typer.Option("--layers", help="the layer to amplify")] = ...,
    octaves: Annotated[int, typer.Option("--octaves", min=1)] = 4,
    steps: Annotated[int, typer.Option("--steps", min=1, help="steps per octave")] = 10,
    frames: Annotated[int, typer.Option("--frames", min=0, help="zoom-in frames (GIF)")] = 0,
    zoom: Annotated[float, typer.Option("--zoom", help="zoom per frame")] = 1.05,
    out: OutOpt = Path("dream-out"),
    weights: WeightsOpt = "default",
    arch: ArchOpt = None,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
) -> None:
    """DeepDream: amplify what a layer sees in an image, over octaves; --frames makes a zoom."""
    from convscope.synthesis import dream as run
    from convscope.synthesis import dream_zoom

    subject = load_subject(model, weights, arch, device)
    layer = subject.layer(one_layer(layers)).name
    for name, img in read_images([*(images or []), *(data or [])]):
        if frames:
            d = dream_zoom(
                subject, img, layer, frames=frames, zoom=zoom, octaves=octaves, steps=steps, seed=seed
            )
            gif = d.to_gif(out / f"{name}_dream.gif")
            Console().print(f"wrote {gif} ({frames} frames)")
        else:
            d = run(subject, img, layer, octaves=octaves, steps=steps, seed=seed)
        Console().print(f"wrote {d.to_png(out / f'{name}_dream.png')}")


def _pil(arr):
    from PIL import Image

    from convscope.render.grid import to_uint8

    return Image.fromarray(to_uint8(arr))


def _report(syn, png) -> None:
    o = Console()
    for label, s in zip(syn.labels, syn.scores):
        o.print(f"{label:<28} objective {s:.4g}")
    o.print(f"wrote {png}")
