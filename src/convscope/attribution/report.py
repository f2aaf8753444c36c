"""The report of ``convscope explain``: for several methods at once, one picture per method and
image (image | map | overlay), each method's maps as ``.npz``, optionally the deletion/insertion
curves of each map, and ``explain.json`` listing image, method, target (and the curves' AUCs)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from convscope.inputs.fileio import save_image, write_text


def write_explain_report(
    subject,
    x: torch.Tensor,
    stems: Sequence[str],
    methods: Sequence[str],
    out: str | Path,
    target="top",
    settings: Mapping[str, object] | None = None,
    trust: bool = False,
    progress: Callable | None = None,
) -> tuple[list[dict], list[Path]]:
    """Explain the preprocessed batch ``x`` (N, 3, H, W), whose images are named ``stems``, by
    each of ``methods`` and write the report into the folder ``out``. ``settings``: one set of
    options, each method taking those it has (:func:`~convscope.attribution.options_for`);
    ``target`` as :func:`~convscope.attribution.explain` takes it (or a resolved Target);
    ``trust``: also deletion/insertion curves per map. ``progress(done, total, method)`` counts
    maps. Returns the summary rows (as in ``explain.json``) and the paths written."""
    from convscope.attribution.api import explain, options_for
    from convscope.attribution.targets import resolve_target
    from convscope.attribution.trust import deletion_insertion
    from convscope.render.plots import curves_figure, figure_to_image

    out = Path(out)
    settings = dict(settings or {})
    # as evaluate: each method takes the settings it has, but one that no method takes is a
    # mistake (the seed is everyone's); refused before any work
    used = {k for name in methods for k in options_for(name, settings)}
    unused = sorted(set(settings) - used - {"seed"})
    if unused:
        from convscope.errors import UserInputError

        raise UserInputError(f"no method given takes the option {unused[0]!r}")
    tgt = resolve_target(subject, target, x)
    written, summary = [], []
    n = len(stems)
    for m, name in enumerate(methods):

        def step(done, total, m=m, name=name):
            if progress is not None:
                progress(m * n + done, len(methods) * n, name)

        amap = explain(subject, x, name, target=tgt, progress=step, **options_for(name, settings))
        for i, stem in enumerate(stems):
            written.append(amap.to_png(out / f"{stem}_{name}.png", i))
            entry = {"image": stem, "method": name, "target": amap.targets[i]}
            if trust:
                one = tgt.for_image(i)
                dele, ins = deletion_insertion(subject, x[i : i + 1], amap.maps[i : i + 1], one)
                fig = curves_figure(dele, ins, f"{stem}, {name}")
                written.append(save_image(figure_to_image(fig), out / f"{stem}_{name}_curves.png"))
                entry.update(deletion_auc=float(dele.auc[0]), insertion_auc=float(ins.auc[0]))
            summary.append(entry)
        written.append(amap.save(out / f"{name}.npz"))
    write_text(out / "explain.json", json.dumps(summary, indent=1))
    return summary, written
