"""``convscope explain MODEL IMAGE... --method ... --target ...``: attribution maps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from convscope.cli.common import (
    DEFAULT_MODEL,
    ArchOpt,
    DataOpt,
    DeviceOpt,
    ModelArg,
    SeedOpt,
    TargetOpt,
    WeightsOpt,
    load_subject,
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
            "occlusion, rise, kernel_shap, lime",
        ),
    ] = "saliency,guided,gradcam,occlusion",
    target: TargetOpt = "top",
    out: Annotated[Path, typer.Option("--out", help="output folder")] = Path("explain-out"),
    layers: Annotated[
        str | None, typer.Option("--layers", help="the layer of CAM methods [default: the last stage]")
    ] = None,
    window: Annotated[int, typer.Option("--window", help="occlusion window, px")] = 32,
    stride: Annotated[int, typer.Option("--stride", help="occlusion stride, px")] = 16,
    fill: Annotated[
        str | None,
        typer.Option(
            "--fill",
            help="what hidden pixels become: occlusion gray zero mean blur noise; rise, kernel_shap, "
            "lime zero gray mean blur [default: each method's own: occlusion gray, the others zero]",
        ),
    ] = None,
    samples: Annotated[
        int | None,
        typer.Option(
            "--samples",
            help="SmoothGrad noisy copies; kernel_shap, lime perturbations [default: 50; 500]",
        ),
    ] = None,
    masks: Annotated[int, typer.Option("--masks", help="RISE random masks")] = 4000,
    cells: Annotated[int, typer.Option("--cells", help="RISE mask grid, cells per side")] = 7,
    segments: Annotated[
        int, typer.Option("--segments", help="kernel_shap, lime: SLIC superpixels per image")
    ] = 50,
    composite: Annotated[
        str,
        typer.Option(
            "--composite",
            help="LRP composite: epsilon_plus epsilon_gamma_box epsilon_alpha2_beta1 epsilon_plus_flat "
            "epsilon_alpha2_beta1_flat epsilon gamma alpha_beta zplus",
        ),
    ] = "epsilon_plus",
    steps: Annotated[int, typer.Option("--steps", help="integrated-gradients steps")] = 50,
    even_overlap: Annotated[
        bool, typer.Option("--even-overlap", help="Zeiler-Fergus: remove the checkerboard of strided layers")
    ] = False,
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
    # one set of settings; each method gets the ones it takes (convscope.attribution.method_options)
    settings = {
        "layer": layer,
        "window": window,
        "stride": stride,
        "seed": seed,
        "steps": steps,
        "even_overlap": even_overlap,
        "masks": masks,
        "cells": cells,
        "segments": segments,
        "composite": composite,
    }
    # unset: each method keeps its own default (occlusion's grey fill, RISE's zero)
    settings.update({k: v for k, v in {"fill": fill, "samples": samples}.items() if v is not None})
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
