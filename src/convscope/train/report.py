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
