"""``convscope evaluate MODEL --data DIR --methods ... --metrics ... --out ATLAS``: every
attribution method scored by every metric on N images, stored in an atlas (table, plot, page)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from convscope.cli.common import (
    DEFAULT_MODEL,
    ArchOpt,
    CellsOpt,
    CompositeOpt,
    DatasetOpt,
    DeviceOpt,
    EvenOverlapOpt,
    FillOpt,
    MasksOpt,
    ModelArg,
    ResumeOpt,
    SamplesOpt,
    SeedOpt,
    SegmentsOpt,
    StepsOpt,
    StrideOpt,
    WeightsOpt,
    WindowOpt,
    load_subject,
    method_settings,
    one_layer,
    open_data,
    progress_bar,
    resumable,
    target_spec,
    writes_atlas,
)

# a few minutes on a CPU for 32 images of efficientnet_lite0 (docs/attribution.md, "convscope
# evaluate"): a gradient method, a CAM and a baseline that ignores the model, under metrics of
# a few forward passes per map, and the randomisation check over the top RANDOMISE_LAYERS
# modules (a few re-explanations per map); pixel flipping and faithfulness correlation cost 100
# to 200 passes per map each, so they are asked for by name
DEFAULT_METHODS = "saliency,gradcam,edge"
DEFAULT_METRICS = "average_drop,increase_in_confidence,road,model_randomisation"
RANDOMISE_LAYERS = 3


def _metric_options(items: list[str] | None) -> dict[str, dict]:
    """``--metric-option METRIC.KEY=VALUE`` (VALUE read as JSON, else as text) as
    ``{metric: {key: value}}``."""
    from convscope.errors import UserInputError

    out: dict[str, dict] = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        metric, dot, option = key.strip().partition(".")
        if not (eq and dot and metric and option):
            raise UserInputError(f"--metric-option {item!r}: write METRIC.OPTION=VALUE, e.g. road.order=lerf")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        out.setdefault(metric, {})[option] = parsed
    return out


def _names(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def _number(v) -> str:
    return "-" if v is None or v != v else f"{v:.4g}"


@writes_atlas("out")
def evaluate(
    model: ModelArg = DEFAULT_MODEL,
    data: DatasetOpt = None,
    methods: Annotated[
        str,
        typer.Option(
            "--methods",
            help="comma-separated attribution methods (as convscope explain's --method; edge and "
            "random are baselines that ignore the model)",
        ),
    ] = DEFAULT_METHODS,
    metrics: Annotated[
        str,
        typer.Option(
            "--metrics",
            help="comma-separated: pixel_flipping, region_perturbation, road, average_drop, "
            "increase_in_confidence, faithfulness_correlation, infidelity, max_sensitivity, "
            "model_randomisation (pointing_game and attribution_localisation need object masks or "
            "boxes: Python API only)",
        ),
    ] = DEFAULT_METRICS,
    n: Annotated[int, typer.Option("--n", min=1, help="images: a seeded sample of --data")] = 32,
    out: Annotated[Path, typer.Option("--out", help="atlas folder (created or added to)")] = Path("atlas"),
    name: Annotated[str, typer.Option("--name", help="the evaluation's name in the atlas")] = "default",
    target: Annotated[
        str,
        typer.Option(
            "--target",
            help="top | class:N | class:NAME | prob:N | prob:NAME (class scores only; a bare N means "
            "class:N)",
        ),
    ] = "top",
    layers: Annotated[
        str | None, typer.Option("--layers", help="the layer of CAM methods [default: the last stage]")
    ] = None,
    window: WindowOpt = None,
    stride: StrideOpt = None,
    fill: FillOpt = None,
    samples: SamplesOpt = None,
    masks: MasksOpt = None,
    cells: CellsOpt = None,
    segments: SegmentsOpt = None,
    composite: CompositeOpt = None,
    steps: StepsOpt = None,
    even_overlap: EvenOverlapOpt = False,
    metric_option: Annotated[
        list[str] | None,
        typer.Option(
            "--metric-option",
            help="a metric's setting, METRIC.OPTION=VALUE (repeatable), e.g. road.order=lerf, "
            "pixel_flipping.step=224, model_randomisation.reduce=last",
        ),
    ] = None,
    randomise_layers: Annotated[
        int,
        typer.Option(
            "--randomise-layers",
            min=0,
            help="model_randomisation: re-initialise the top K modules (0: every module, as Quantus)",
        ),
    ] = RANDOMISE_LAYERS,
    chunk: Annotated[int, typer.Option("--chunk", min=1, help="images per batch (and per checkpoint)")] = 8,
    resume: ResumeOpt = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace an evaluation of that name (or its interrupted run)")
    ] = False,
    weights: WeightsOpt = "default",
    arch: ArchOpt = None,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
) -> None:
    """Score attribution methods by faithfulness metrics on N images: the ranked table with
    95% bootstrap intervals (CSV, JSON), a ranked plot and a page in the viewer (convscope serve)."""
    from convscope.atlas.evaluate_build import evaluate_to_atlas
    from convscope.attribution import baselines  # noqa: F401 (registers the edge and random baselines)
    from convscope.attribution.api import get_method
    from convscope.attribution.metrics import get_metric

    chosen = [get_method(m).name for m in _names(methods)]  # unknown names fail before the model loads
    measured = _names(metrics)
    for m in measured:
        get_metric(m)
    metric_options = _metric_options(metric_option)
    if "model_randomisation" in measured and randomise_layers:
        metric_options.setdefault("model_randomisation", {}).setdefault("layers", randomise_layers)
    console = Console(stderr=True)
    subject = load_subject(model, weights, arch, device)
    layer = subject.layer(one_layer(layers)).name if layers else None
    source = open_data(data, subject.transform)
    # one set of settings (as convscope explain's); each method gets the ones it takes, the unset
    # ones keep each method's own default; all set ones are passed, so that evaluate refuses one
    # no chosen method takes; the methods' seeds derive from --seed
    settings = method_settings(
        layer=layer, window=window, stride=stride, steps=steps, even_overlap=even_overlap, masks=masks,
        cells=cells, segments=segments, composite=composite, fill=fill, samples=samples,
    )  # fmt: skip
    bar, progress = progress_bar("evaluating", None, console, unit="maps")
    with resumable(out, bar):
        built = evaluate_to_atlas(
            subject,
            source,
            out,
            chosen,
            measured,
            n=n,
            name=name,
            target=target_spec(target),
            seed=seed,
            resume=resume,
            overwrite=overwrite,
            progress=progress,
            options=settings,
            metric_options=metric_options,
            chunk=chunk,
        )
    o = Console()
    ev = built.evaluation
    table = Table(title=ev.headline(), title_justify="left")
    for col, justify in (("metric", "left"), ("rank", "right"), ("method", "left"), ("mean", "right"),
                         ("95% interval", "right"), ("n", "right"), ("seconds", "right")):  # fmt: skip
        table.add_column(col, justify=justify)
    for r in ev.table():
        arrow = "↑" if r["higher_is_better"] else "↓"
        table.add_row(
            f"{r['metric']} {arrow}" if r["rank"] == 1 else "",
            str(r["rank"]),
            r["method"],
            _number(r["mean"]),
            f"{_number(r['low'])} … {_number(r['high'])}",
            str(r["n"]),
            f"{r['seconds']:.1f}",
        )
    o.print(table)
    if ev.skipped:
        o.print(
            f"skipped {len(ev.skipped)} unreadable image(s): {ev.skipped[0]}"
            + (" …" if len(ev.skipped) > 1 else "")
        )
    failures = ev.settings.get("failures") or []
    if failures:
        f = failures[0]
        o.print(
            f"{len(failures)} failure(s), scored NaN; first: {f['method']} {f['metric'] or ''}: {f['error']}"
        )
    o.print(
        ("reused " if built.reused else "wrote ") + ", ".join(str(p) for p in built.files.values()),
        soft_wrap=True,
    )
    o.print(f"see it with: convscope serve {out}  (page /evaluations/{built.name})", soft_wrap=True)
    empty = [f"{r['method']} x {r['metric']}" for r in ev.table() if r["n"] == 0]
    if failures and empty:  # stored, but a method or metric that failed on every image is no result
        console.print(f"no score at all for {', '.join(empty)}: it failed on every image (see above)")
        raise typer.Exit(1)
