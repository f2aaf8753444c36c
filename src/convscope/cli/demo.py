"""``convscope demo --out DIR``: the main job on the offline default model and bundled images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from convscope.cli.common import (
    DEFAULT_MODEL,
    ArchOpt,
    DeviceOpt,
    ModelArg,
    SeedOpt,
    WeightsOpt,
    load_subject,
    progress_bar,
)


def demo(
    model: ModelArg = DEFAULT_MODEL,
    out: Annotated[Path, typer.Option("--out", help="folder for the results")] = Path("demo-out"),
    weights: WeightsOpt = "default",
    arch: ArchOpt = None,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
) -> None:
    """Run everything convscope does so far and write the results (PNG, JSON, text) to --out."""
    from convscope.app.demo import run_demo

    bar, progress = progress_bar("demo", None, unit="steps", remaining=False)
    steps = []

    def step(message: str) -> None:
        steps.append(message)
        progress(len(steps), None, message)

    try:
        subject = load_subject(model, weights, arch, device)
        result = run_demo(subject, out, seed=seed, progress=step)
    finally:
        bar.stop()
    out_console = Console()
    out_console.print(f"[bold]{subject.name}[/bold] on {len(result.predictions)} bundled images")
    for rec in result.predictions:
        best = rec["top"][0]
        out_console.print(f"  {rec['image']:<22} {best['label']} ({best['prob']:.2f})")
    if result.scan is not None:
        out_console.print(
            f"scanned {result.scan.processed} images (bundled photos and crops) "
            f"through {', '.join(result.scan.layers)}"
        )
    out_console.print(f"wrote to {out}/:")
    for what, path in result.files.items():
        out_console.print(f"  {str(path.relative_to(out)):<44} {what}", soft_wrap=True)
