"""Filters as pictures: their evolution over a training run's epochs, a model's filters, and
each layer's filters ranked by mean activation on a dataset (``convscope filters``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from convscope.errors import DataError


def is_run(path: str | Path) -> bool:
    """Whether ``path`` is a training run folder (it holds per-epoch checkpoints)."""
    path = Path(path)
    return path.is_dir() and any(path.glob("epoch_*.pt"))


def snapshots(run: str | Path, every: int = 1, most: int = 8) -> tuple[list[dict], list[int]]:
    """The weights of every ``every``-th epoch checkpoint of the run folder ``run`` (the last
    always kept; at most ``most`` spread evenly) and their epoch numbers."""
    from convscope.train.loop import load_weights

    paths = sorted(Path(run).glob("epoch_*.pt"))
    keep = paths[::every] if paths[-1] in paths[::every] else paths[::every] + [paths[-1]]
    if len(keep) > most:
        idx = [round(i * (len(paths) - 1) / (most - 1)) for i in range(most)]
        keep = [paths[i] for i in idx]
    return [load_weights(p)[0] for p in keep], [int(p.stem.split("_")[1]) for p in keep]


def spread(names: Sequence[str]) -> list[str]:
    """The first, middle and last of ``names`` (all of them when there are three or fewer)."""
    names = list(names)
    return [names[0], names[len(names) // 2], names[-1]] if len(names) > 2 else names


def evolution_figure(
    run: str | Path, layers: Sequence[str] | None = None, n: int = 8
) -> tuple[Image.Image, list[str], list[int]]:
    """The first ``n`` filters of conv ``layers`` (module names; default: the first, middle and
    last convolution) in each kept epoch of the run folder ``run``: one row per epoch. Returns
    the figure, the weights drawn and the epochs."""
    from convscope.render.training import filter_evolution_figure

    snaps, epochs = snapshots(run)
    convs = [k for k, v in snaps[-1].items() if k.endswith(".weight") and v.dim() == 4]
    names = [f"{s}.weight" for s in layers] if layers else spread(convs)
    return filter_evolution_figure(snaps, epochs, names, n=n), names, epochs


def conv_layers(subject) -> list[str]:
    """The names of ``subject``'s layers that are convolutions, input side first."""
    modules = dict(subject.model.named_modules())
    return [
        i.name
        for i in subject.layers
        if i.shape is not None and isinstance(modules.get(i.module), torch.nn.Conv2d)
    ]


@dataclass
class FilterRanking:
    """Mean activation (C,) of every filter of each layer over ``images`` readable images."""

    means: dict[str, torch.Tensor]
    images: int

    def top(self, layer: str, n: int) -> list[int]:
        """The ``n`` most activated filters of ``layer``, most first."""
        return [int(u) for u in self.means[layer].argsort(descending=True)[:n]]


def rank_filters(
    subject, source, layers: Sequence[str], batch_size: int = 16, name: str | None = None
) -> FilterRanking:
    """Rank each layer's filters by their mean activation (over positions and images) on the
    images of ``source`` (transformed for ``subject``; ``name``: what it is called in the error
    when none is readable); unreadable images are skipped."""
    from convscope.inputs.batches import Batches

    names = list(layers)
    sums = {nm: 0.0 for nm in names}
    count = 0
    with subject.record(names, stop=True) as rec:
        for batch in Batches(source, batch_size=batch_size):
            if not len(batch.indices):
                continue
            with torch.inference_mode():
                subject(batch.images.to(subject.device))
            for nm in names:
                sums[nm] = sums[nm] + rec[nm].float().mean(dim=(2, 3)).sum(0)
            count += len(batch.indices)
    if count == 0:
        raise DataError(f"no readable image in {name or 'the data'}")
    return FilterRanking({nm: sums[nm] / count for nm in names}, count)


def filters_grid(
    subject, layers: Sequence[str], n: int = 16, ranking: FilterRanking | None = None, cell: int = 48
) -> tuple[Image.Image, list[str]]:
    """The filters of ``layers`` of ``subject`` as one captioned grid: the first ``n`` of each,
    or with ``ranking`` its ``n`` most activated (caption: unit and mean activation). Returns
    the grid and its captions (one per filter drawn)."""
    from convscope.render.grid import image_grid
    from convscope.render.training import filter_tiles

    modules = dict(subject.model.named_modules())
    tiles, captions = [], []
    for name in layers:
        weight = modules[subject.layer(name).module].weight
        if ranking is None:
            t = filter_tiles(weight, n, cell)
            captions += [f"{name}:{i}" for i in range(len(t))]
        else:
            top = ranking.top(name, n)
            t = filter_tiles(weight[top], n, cell)
            captions += [f"{name}:{u} {float(ranking.means[name][u]):.2f}" for u in top]
        tiles += t
    return image_grid(tiles, ncols=min(n, 16), pad=3, captions=captions), captions


@dataclass
class FiltersPicture:
    """What :func:`write_filters` drew into ``path``: the weights (run) or filter captions
    (model) drawn, the ``epochs`` of a run, the ``ranking`` when filters were ranked."""

    path: Path
    drawn: list[str]
    epochs: list[int] | None = None
    ranking: FilterRanking | None = None


def write_filters(
    out: str | Path,
    target,
    layers: Sequence[str] | None = None,
    n: int = 16,
    source=None,
    name: str | None = None,
) -> FiltersPicture:
    """Draw filters into the PNG ``out``. ``target`` a training run folder: the evolution of
    the first ``min(n, 8)`` filters of conv ``layers`` (module names; default first, middle and
    last) over its epochs. ``target`` a subject: the first ``n`` filters of each of ``layers``
    (default its first convolution), or with ``source`` (images transformed for it, ``name``
    in errors) its ``n`` most activated ones by mean activation."""
    from convscope.inputs.fileio import save_image

    if not hasattr(target, "layers"):
        fig, drawn, epochs = evolution_figure(target, layers, n=min(n, 8))
        return FiltersPicture(save_image(fig, out), drawn, epochs)
    names = list(layers) if layers else conv_layers(target)[:1]
    ranking = rank_filters(target, source, names, name=name) if source is not None else None
    grid, drawn = filters_grid(target, names, n, ranking)
    return FiltersPicture(save_image(grid, out), drawn, ranking=ranking)
