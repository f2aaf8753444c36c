"""``convscope concepts MODEL --data DIR --layers L --method nmf --n 32 --out ATLAS``: a learned
concept set (dictionary) of one layer, its top-K images, importance, labels and pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from convscope.cli.common import (
    ArchOpt,
    DatasetOpt,
    DeviceOpt,
    ModelArg,
    PrecisionOpt,
    ResumeOpt,
    SeedOpt,
    WeightsOpt,
    WorkersOpt,
    load_subject,
    make_accel,
    one_layer,
    open_data,
    progress_bar,
    resumable,
    writes_atlas,
)


@writes_atlas("out")
def concepts(
    model: ModelArg = "efficientnet_lite0",
    data: DatasetOpt = None,
    layers: Annotated[
        str, typer.Option("--layers", help="the one layer whose activations are factorised")
    ] = "",
    method: Annotated[str, typer.Option("--method", help="nmf, pca, ica, sae-topk or sae-batchtopk")] = "nmf",
    n: Annotated[int, typer.Option("--n", min=1, help="concepts to learn")] = 32,
    out: Annotated[Path, typer.Option("--out", help="atlas folder (created or added to)")] = Path("atlas"),
    name: Annotated[
        str | None,
        typer.Option("--name", help="the concept set's name in the atlas [default: METHODN-LAYER]"),
    ] = None,
    k: Annotated[int, typer.Option("--k", min=1, help="top images kept per concept")] = 16,
    per_image: Annotated[
        int, typer.Option("--per-image", min=0, help="positions sampled per image (0: all)")
    ] = 16,
    max_samples: Annotated[
        int, typer.Option("--max-samples", min=2, help="positions kept in all (a uniform reservoir)")
    ] = 100_000,
    concept_data: Annotated[
        str | None,
        typer.Option(
            "--concept-data",
            help="label the concepts by dissection: a Broden-format directory, 'auto-color' "
            "(colour names of --data) or 'synthetic'",
        ),
    ] = None,
    visualize: Annotated[
        bool, typer.Option("--visualize/--no-visualize", help="a feature visualisation per concept")
    ] = True,
    steps: Annotated[int, typer.Option("--steps", min=1, help="optimisation steps per visualisation")] = 64,
    sae_k: Annotated[
        int | None, typer.Option("--sae-k", min=1, help="sae-*: active codes per position [default: n // 8]")
    ] = None,
    sae_steps: Annotated[
        int | None, typer.Option("--sae-steps", min=1, help="sae-*: training steps [default: 2000]")
    ] = None,
    clip: Annotated[
        bool,
        typer.Option("--clip", help="nmf of a layer with negative activations: factorise max(x, 0)"),
    ] = False,
    resume: ResumeOpt = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace a concept set of that name")
    ] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    workers: WorkersOpt = None,
    precision: PrecisionOpt = "fp32",
    weights: WeightsOpt = "default",
    arch: ArchOpt = None,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
) -> None:
    """Learn a dictionary of concepts at one layer (NMF, PCA, ICA or a sparse autoencoder) and
    store it in an atlas with each concept's top-K images, importance per class, labels and
    feature visualisation."""
    from convscope.atlas.concepts_build import concepts_to_atlas
    from convscope.concepts.dictionary import check_method
    from convscope.errors import UserInputError

    if not layers.strip():
        raise UserInputError("name the layer to learn concepts at with --layers (see convscope layers MODEL)")
    layer = one_layer(layers, "--layers")
    check_method(method, n)  # before the model loads
    sae = {k: v for k, v in {"sae_k": sae_k, "sae_steps": sae_steps}.items() if v is not None}
    if sae and not method.startswith("sae-"):
        raise UserInputError(f"--sae-k and --sae-steps are options of the sae methods, not of {method}")
    console = Console(stderr=True)
    subject = load_subject(model, weights, arch, device)
    source = open_data(data, subject.transform)
    bar, progress = progress_bar("concepts", None, console, unit="img")
    with resumable(out, bar):
        built = concepts_to_atlas(
            out,
            subject,
            source,
            layer,
            method=method,
            n=n,
            name=name,
            k=k,
            seed=seed,
            concept_data=concept_data,
            visualize={"steps": steps} if visualize else False,
            resume=resume,
            overwrite=overwrite,
            progress=progress,
            per_image=per_image or None,
            max_samples=max_samples,
            batch_size=batch_size,
            workers=workers,
            accel=make_accel(precision),
            **({"clip": True} if clip else {}),
            **sae,
        )
    o = Console()
    o.print(built.headline(), soft_wrap=True)
    if built.reused:
        o.print(f"reused from the atlas: {', '.join(built.reused)}")
    pictures = f"; pictures in {built.atlas.dictionary_dir(built.name)}/" if built.pictures else ""
    o.print(f"atlas: {built.atlas.db_path}{pictures}", soft_wrap=True)
