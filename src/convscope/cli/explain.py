"""``convscope explain MODEL IMAGE... --method ... --target ...``: attribution maps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from convscope.cli.common import (
    DEFAULT_MODEL,
    ArchOpt,
    CellsOpt,
    CompositeOpt,
    DataOpt,
    DeviceOpt,
    EvenOverlapOpt,
    FillOpt,
    MasksOpt,
    ModelArg,
    SamplesOpt,
    SeedOpt,
    SegmentsOpt,
    StepsOpt,
    StrideOpt,
    TargetOpt,
    WeightsOpt,
    WindowOpt,
    load_subject,
    method_settings,
    one_layer,
    progress_bar,
    read_images,
    target_spec,
)


def explain(
    model: ModelArg = DEFAULT_MODEL,
    images: Annotated[
        list[str] | None, typer.Argument(hidden=True, help="old spelling of --data: images after the model")
    ] = None,
    data: DataOpt = None,
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="comma-separated: saliency, input_x_gradient, smoothgrad, "
            "integrated_gradients, guided, deconvnet, gradcam, gradcam++, scorecam, guided_gradcam, "
            "layercam, hirescam, xgradcam, eigencam, eigengradcam, ablationcam, fullgrad, lrp, "
            "occlusion, zeiler_fergus; black-box (forward passes only: TorchScript, wrapped APIs): "
            "occlusion, rise, kernel_shap, lime; baselines that ignore the model: edge, random",
        ),
    ] = "saliency,guided,gradcam,occlusion",
    target: TargetOpt = "top",
    out: Annotated[Path, typer.Option("--out", help="output folder")] = Path("explain-out"),
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
    trust: Annotated[
        bool, typer.Option("--trust", help="also write deletion/insertion curves for each map")
    ] = False,
    weights: WeightsOpt = "default",
    arch: ArchOpt = None,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
) -> None:
    """Explain images: one PNG per method and image (image | map | overlay) and its arrays."""
    import torch

    from convscope.attribution import get_method, resolve_target
    from convscope.attribution.report import write_explain_report

    torch.manual_seed(seed)
    methods = [get_method(m.strip()).name for m in method.split(",") if m.strip()]
    subject = load_subject(model, weights, arch, device)
    layer = subject.layer(one_layer(layers)).name if layers else None  # close matches, before any work
    pics = read_images([*(images or []), *(data or [])])
    x = subject.load_images([img for _, img in pics])
    tgt = resolve_target(subject, target_spec(target), x)  # checked before any work
    # one set of settings; each method gets the ones it takes (convscope.attribution.method_options),
    # and the unset ones keep each method's own default (occlusion's gray fill, RISE's zero)
    settings = method_settings(
        layer=layer, window=window, stride=stride, seed=seed, steps=steps, even_overlap=even_overlap,
        masks=masks, cells=cells, segments=segments, composite=composite, fill=fill, samples=samples,
    )  # fmt: skip
    bar, progress = progress_bar("explaining", len(methods) * len(pics), unit="maps")
    try:
        summary, written = write_explain_report(
            subject, x, [stem for stem, _ in pics], methods, out, tgt, settings, trust, progress
        )
    finally:
        bar.stop()
    o = Console()
    for e in summary:
        extra = (
            f"  deletion AUC {e['deletion_auc']:.3f}, insertion AUC {e['insertion_auc']:.3f}" if trust else ""
        )
        o.print(f"{e['image']:<20} {e['method']:<22} {e['target']}{extra}", soft_wrap=True)
    o.print(f"wrote {len(written)} files to {out}/")
