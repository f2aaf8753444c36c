"""``convscope serve ATLAS`` and ``convscope export ATLAS --html OUT``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from convscope.cli.common import DeviceOpt


def serve(
    atlas: Annotated[Path, typer.Argument(help="atlas folder")],
    host: Annotated[
        str, typer.Option("--host", help="interface to bind (127.0.0.1: this machine only)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8000,
    upload_mb: Annotated[int, typer.Option("--upload-mb", min=1, help="largest upload")] = 8,
    device: DeviceOpt = "cpu",
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-host",
            help="another Host name to answer (repeatable; '*': any); by default only this "
            "machine's loopback names and the --host address",
        ),
    ] = None,
) -> None:
    """Browse an atlas: model, layer, unit and image pages (FastAPI; pip install 'convscope\\[web]')."""
    from convscope.errors import UserInputError

    try:
        from convscope.viewer.app import serve as serve_atlas
    except ImportError:
        raise UserInputError("the viewer needs the web extra: pip install 'convscope[web]'") from None

    def ready(url: str) -> None:
        Console(stderr=True).print(f"convscope viewer on {url} (Ctrl-C to stop)")

    serve_atlas(
        atlas,
        host,
        port,
        upload_limit=upload_mb << 20,
        device=device,
        allow_hosts=allow_host or [],
        ready=ready,
    )


def export(
    atlas: Annotated[Path, typer.Argument(help="atlas folder")],
    html: Annotated[Path, typer.Option("--html", help="output folder for the static site")],
    units: Annotated[int, typer.Option("--units", min=1, help="unit pages per layer")] = 64,
) -> None:
    """Write the viewer's pages as a static site to share (no server needed)."""
    from convscope.cli.common import progress_bar
    from convscope.viewer.export import export_html

    bar, progress = progress_bar("exporting", 1, remaining=False)

    try:
        index = export_html(atlas, html, units_per_layer=units, progress=progress)
    finally:
        bar.stop()
    Console().print(f"static site: {index}")
