"""The report of a training run (``convscope train`` and ``finetune``): per-epoch metrics, the
curves, the confusion matrix on the test split and, for a run from scratch, filter evolution."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from convscope.inputs.fileio import save_image, write_text


def metrics_csv(history) -> str:
    """One CSV row per epoch: losses and accuracies (5 decimals), seconds."""
    lines = ["epoch,train_loss,train_accuracy,test_loss,test_accuracy,seconds"]
    lines += [
        f"{h.epoch},{h.train_loss:.5f},{h.train_accuracy:.5f},{h.test_loss:.5f},"
        f"{h.test_accuracy:.5f},{h.seconds:.2f}"
        for h in history
    ]
    return "\n".join(lines) + "\n"


def write_report(
    out: str | Path,
    model,
    result,
    test,
    config,
    classes: Sequence[str],
    title: str,
    evolution: Sequence[str] = (),
) -> list[Path]:
    """Write into the run folder ``out``: ``metrics.csv`` and ``curves.png`` of ``result`` (a
    TrainResult), ``confusion.csv`` and ``confusion.png`` of ``model`` on ``test``, and with
    ``evolution`` (conv module names) ``filters_evolution.png`` from the run's checkpoints.
    Returns the paths written."""
    from convscope.render.plots import figure_to_image
    from convscope.render.training import confusion_figure, curves_figure
    from convscope.train.filters import evolution_figure
    from convscope.train.finetune import confusion_csv, confusion_matrix
    from convscope.train.loop import evaluate

    out = Path(out)
    written = [
        write_text(out / "metrics.csv", metrics_csv(result.history)),
        save_image(figure_to_image(curves_figure(result.history, title)), out / "curves.png"),
    ]
    _, acc, pred = evaluate(model, test, config)
    m = confusion_matrix(test.labels.numpy(), pred, len(classes))
    written.append(write_text(out / "confusion.csv", confusion_csv(m, classes)))
    written.append(
        save_image(
            figure_to_image(confusion_figure(m, classes, f"{title}: test accuracy {acc:.3f}")),
            out / "confusion.png",
        )
    )
    if evolution:
        written.append(save_image(evolution_figure(out, evolution)[0], out / "filters_evolution.png"))
    return written


def compare_scans_figure(before, after, layer: str, unit: int, k: int = 6, cell: int = 72, sources=None):
    """A unit's ``k`` top images in the atlas ``before`` (left) and ``after`` (right, e.g. after
    fine-tuning), ``cell`` px each, under a title. ``before``/``after``: atlases (their ``topk``
    and ``source_spec``); ``sources``: their images already opened, to reuse over units."""
    from PIL import Image, ImageDraw

    from convscope.inputs.sources import open_spec
    from convscope.render.topk import fit_image

    src_a, src_b = sources or (open_spec(before.source_spec), open_spec(after.source_spec))
    ta, tb = before.topk(layer, unit), after.topk(layer, unit)
    pad = 3
    canvas = Image.new("RGB", (2 * k * (cell + pad) + 20, cell + 20), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 2), f"{layer}:{unit} before", fill=(0, 0, 0))
    draw.text((k * (cell + pad) + 20, 2), "after", fill=(0, 0, 0))
    for j, i in enumerate(ta.images[:k]):
        canvas.paste(fit_image(src_a.read(int(i)), cell), (j * (cell + pad), 16))
    for j, i in enumerate(tb.images[:k]):
        canvas.paste(fit_image(src_b.read(int(i)), cell), (k * (cell + pad) + 20 + j * (cell + pad), 16))
    return canvas
