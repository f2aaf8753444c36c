"""``convscope features | neighbors | probe | project | compare``: representations of a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from convscope.cli.common import (
    AddressOpt,
    ArchOpt,
    ChannelsLastOpt,
    DatasetOpt,
    DecodeOpt,
    DeviceOpt,
    EngineOpt,
    LayersOpt,
    ModelArg,
    PrecisionOpt,
    RayWorkersOpt,
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

AtlasArg = Annotated[Path, typer.Argument(help="atlas folder written by `convscope features`")]
PoolingOpt = Annotated[str, typer.Option("--pooling", help="gap, mac, spoc or gem")]


def _features_dir(atlas: Path, pooling: str) -> Path:
    from convscope.atlas import AtlasPaths

    return AtlasPaths(atlas).features_dir(pooling)


def _load(atlas: Path, pooling: str):
    from convscope.represent import FeatureSet

    return FeatureSet.load(_features_dir(atlas, pooling))


@writes_atlas("out")
def features(
    model: ModelArg = "efficientnet_lite0",
    data: DatasetOpt = None,
    layers: LayersOpt = "stages",
    pooling: PoolingOpt = "gap",
    gem_p: Annotated[float, typer.Option("--gem-p", help="GeM exponent")] = 3.0,
    out: Annotated[Path, typer.Option("--out", help="atlas folder")] = Path("atlas"),
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    workers: WorkersOpt = None,
    precision: PrecisionOpt = "fp32",
    channels_last: ChannelsLastOpt = None,
    decode: DecodeOpt = "cpu",
    resume: ResumeOpt = False,
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    ray_workers: RayWorkersOpt = 2,
    weights: WeightsOpt = "default",
    arch: ArchOpt = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Pool layers over a dataset into memory-mapped feature files in the atlas."""
    from convscope.atlas.build import features_to_atlas
    from convscope.inputs.images import SkipReport
    from convscope.scale.engine import resolve_engine

    console = Console(stderr=True)
    accel = make_accel(precision, channels_last, decode)
    subject = load_subject(model, weights, arch, device)
    source = open_data(data, subject.transform)
    run = resolve_engine(engine, address=address, workers=ray_workers, device=device)
    bar, progress = progress_bar("features", len(source), console, unit="img")
    with resumable(out, bar):
        fs = features_to_atlas(
            subject,
            source,
            out,
            layers,
            pooling=pooling,
            engine=run,
            resume=resume,
            progress=progress,
            p=gem_p,
            batch_size=batch_size,
            workers=workers,
            accel=accel,
        )
    o = Console()
    for n in fs.layers:
        o.print(f"{n}: {fs.features[n].shape[1]}-d {pooling} features of {int(fs.valid.sum())} images")
    o.print(SkipReport(list(fs.skipped)).summary())
    o.print(f"features in {fs.path}/")


def neighbors(
    atlas: AtlasArg,
    layers: Annotated[str, typer.Option("--layers", help="the layer with features (one)")],
    query: Annotated[
        list[str],
        typer.Option("--query", help="database image index, image path or sample:NAME (repeatable)"),
    ] = ["0"],  # noqa: B006
    k: Annotated[int, typer.Option("--k", min=1, help="neighbours per query")] = 8,
    metric: Annotated[str, typer.Option("--metric", help="l2 or cosine")] = "cosine",
    index: Annotated[str, typer.Option("--index", help="exact, ivf or hnsw")] = "exact",
    post: Annotated[
        str, typer.Option("--post", help="post-processing fitted on the database, e.g. l2,pca:128,whiten,l2")
    ] = "",
    evaluate: Annotated[bool, typer.Option("--eval", help="mAP and precision@k with class labels")] = False,
    gt: Annotated[Path | None, typer.Option("--gt", help="Oxford/Paris ground-truth folder")] = None,
    pooling: PoolingOpt = "gap",
    device: DeviceOpt = "cpu",
) -> None:
    """Nearest neighbours of query images in a layer's feature space, as picture grids."""
    from convscope.atlas import Atlas, reopen
    from convscope.cli.common import read_images
    from convscope.represent.report import feature_images, write_neighbors_report

    layer = one_layer(layers)
    fs = _load(atlas, pooling)

    def subject():
        model, _ = reopen(Atlas.open(atlas), source=feature_images(fs))
        return model.to(device)

    result = write_neighbors_report(
        fs,
        layer,
        [q if q.isdigit() else read_images([q])[0] for q in query],
        Atlas(atlas),
        k=k,
        metric=metric,
        index=index,
        post=post,
        pooling=pooling,
        subject=subject,
        evaluate=evaluate,
        gt=gt,
    )
    for r in result["queries"]:
        names = ", ".join(n["image"] for n in r["neighbors"][:5])
        Console().print(f"{r['query']}: {names} ... -> {r['png']}")
    if evaluate:
        precision = ", ".join(f"P@{kk} {v:.3f}" for kk, v in result["precision"].items())
        Console().print(f"mAP {result['map']:.3f}; {precision}")
    if gt is not None:
        n = result["oxford_queries"]
        Console().print(f"Oxford-protocol mAP {result['oxford_map']:.3f} over {n} queries")


def probe(
    atlas: AtlasArg,
    layers: Annotated[str, typer.Option("--layers", help="comma-separated, or 'all'")] = "all",
    classifier: Annotated[str, typer.Option("--classifier", help="logistic or svm")] = "logistic",
    c: Annotated[float, typer.Option("--c", help="inverse regularisation strength")] = 1.0,
    test_fraction: Annotated[float, typer.Option("--test-fraction")] = 0.3,
    pooling: PoolingOpt = "gap",
    seed: SeedOpt = 0,
) -> None:
    """Linear probe per layer (one stratified split); accuracy plot and CSV."""
    from convscope.atlas import Atlas
    from convscope.represent import linear_probe

    fs = _load(atlas, pooling)
    names = fs.select(layers or None)
    result = linear_probe(
        {n: fs.get(n) for n in names},
        fs.valid_labels(),
        classifier=classifier,
        c=c,
        test_fraction=test_fraction,
        seed=seed,
    )
    png, _ = result.write_report(Atlas(atlas).probe_render(pooling, classifier))
    for r in result.rows:
        Console().print(
            f"{r.layer:>20} {r.dims:6d}-d  test {r.test_accuracy:.3f}  train {r.train_accuracy:.3f}"
        )
    Console().print(f"chance {result.chance:.3f}; best {result.best().layer}; {png}")


def project(
    atlas: AtlasArg,
    layers: Annotated[str, typer.Option("--layers", help="the layer with features (one)")],
    method: Annotated[str, typer.Option("--method", help="pca, tsne or umap")] = "tsne",
    thumbnails: Annotated[int, typer.Option("--thumbnails", min=0, help="images on the map (0: none)")] = 400,
    pooling: PoolingOpt = "gap",
    seed: SeedOpt = 0,
) -> None:
    """2-D map of a layer's features: scatter by class and an image-thumbnail map."""
    from convscope.atlas import AtlasPaths
    from convscope.represent import project as run
    from convscope.represent.report import write_projection_report

    layer = one_layer(layers)
    fs = _load(atlas, pooling)
    xy = run(fs.get(layer), method, seed=seed)
    written = write_projection_report(
        fs, layer, xy, AtlasPaths(atlas), method, pooling=pooling, thumbnails=thumbnails, seed=seed
    )
    Console().print(f"scatter {written[0]}")
    if thumbnails:
        Console().print(f"thumbnails {written[2]}")


def compare(
    atlas: AtlasArg,
    other: Annotated[Path | None, typer.Argument(help="a second atlas (same images), optional")] = None,
    measure: Annotated[str, typer.Option("--measure", help="cka or rsa")] = "cka",
    layers: Annotated[str, typer.Option("--layers", help="comma-separated, or 'all'")] = "all",
    out: Annotated[Path | None, typer.Option("--out", help="PNG (default: in the atlas)")] = None,
    pooling: PoolingOpt = "gap",
) -> None:
    """Similarity of representations (linear CKA or RSA) between every pair of layers of one
    model, or of two models on the same images, as a heat map."""
    from convscope.atlas import AtlasPaths
    from convscope.errors import UserInputError
    from convscope.represent import similarity_matrix
    from convscope.represent.report import write_similarity_report

    a = _load(atlas, pooling)
    b = _load(other, pooling) if other else a
    if a.names != b.names or not (a.valid == b.valid).all():
        raise UserInputError("the two feature sets are not over the same images")
    la, lb = a.select(layers or None), b.select(layers if other is None else None)
    m = similarity_matrix({n: a.get(n) for n in la}, {n: b.get(n) for n in lb}, measure)
    title = f"{measure.upper()}: {a.model}" + (f" vs {b.model}" if other else "")
    png = out or AtlasPaths(atlas).comparison_render(measure, other.name if other else None)
    png, _ = write_similarity_report(m, la, lb, png, title, a.model, b.model)
    Console().print(f"{title}: {len(la)} x {len(lb)} layers -> {png}")
