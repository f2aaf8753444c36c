"""Entry point: ``convscope [--version] COMMAND``."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

from convscope.cli import (
    adversarial,
    demo,
    dissect,
    empirical,
    explain,
    layers,
    represent,
    scan,
    synthesis,
    topk,
    train,
    viewer,
)
from convscope.cli.common import debug

app = typer.Typer(
    name="convscope",
    help="See what a convolutional network has learned.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("layers")(layers.layers)
app.command("demo")(demo.demo)
app.command("scan")(scan.scan)
app.command("topk")(topk.topk)
app.command("explain")(explain.explain)
app.command("visualize")(synthesis.visualize)
app.command("classviz")(synthesis.classviz)
app.command("invert")(synthesis.invert)
app.command("dream")(synthesis.dream)
app.command("attack")(adversarial.attack)
app.command("fool")(adversarial.fool)
app.command("rf")(empirical.rf)
app.command("stimuli")(empirical.stimuli)
app.command("dissect")(dissect.dissect)
app.command("dissect-compare")(dissect.dissect_compare)
app.command("features")(represent.features)
app.command("neighbors")(represent.neighbors)
app.command("probe")(represent.probe)
app.command("project")(represent.project)
app.command("compare")(represent.compare)
app.command("train")(train.train)
app.command("finetune")(train.finetune)
app.command("filters")(train.filters)
app.command("compare-scans")(train.compare_scans)
app.command("serve")(viewer.serve)
app.command("export")(viewer.export)


def _version(value: bool) -> None:
    if value:
        from convscope import __version__

        typer.echo(f"convscope {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """See what a convolutional network has learned."""


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors print one line on stderr and exit 1 (2 for bad input)."""
    from convscope.errors import ConvscopeError

    try:
        app(args=argv, standalone_mode=False)
    except ConvscopeError as e:
        if debug():
            raise
        from rich.markup import escape

        Console(stderr=True).print(f"[red]error:[/red] {escape(str(e))}", highlight=False,
                                   soft_wrap=True)
        return e.exit_code
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        Console(stderr=True).print("aborted")
        return 130
    except Exception as e:
        # Usage errors of typer's (vendored) click carry their own message and exit code.
        if callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            return e.exit_code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
