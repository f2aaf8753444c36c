"""Entry point: ``convscope [--version] COMMAND``."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
import typer.core
from rich.console import Console

from convscope.cli import (
    adversarial,
    concepts,
    demo,
    dissect,
    empirical,
    evaluate,
    explain,
    layers,
    microscope,
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
# Old spellings of options, kept working but hidden from --help (the conventions are in the
# README, "Command-line conventions"). None drops the token (a flag whose meaning is now the
# default); "ARG" moves the option's value to the front, as the first positional argument.
OLD_SPELLINGS = {
    "--layer": "--layers",
    "--batch": "--batch-size",
    "--class": "--classes",
    "--images": "--data",
}
COMMAND_OLD_SPELLINGS = {"features": {"--restart": None}, "demo": {"--model": "ARG"}}


def modern_args(command: str, args: list[str]) -> list[str]:
    """``args`` of ``command`` with old option spellings replaced by the current ones."""
    table = {**OLD_SPELLINGS, **COMMAND_OLD_SPELLINGS.get(command, {})}
    out: list[str] = []
    front: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            out += args[i:]
            break
        name, eq, value = arg.partition("=")
        if name in table:
            new = table[name]
            if new == "ARG":
                if eq:
                    front.append(value)
                elif i + 1 < len(args):
                    front.append(args[i + 1])
                    i += 1
            elif new is not None:
                out.append(new + eq + value)
        else:
            out.append(arg)
        i += 1
    return front + out


class Command(typer.core.TyperCommand):
    """A command that also accepts the old spellings of its options (hidden from --help)."""

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, modern_args(self.name, list(args)))

    def collect_usage_pieces(self, ctx):
        """The usage line, without the hidden old-spelling arguments."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if not (param.param_type_name == "argument" and getattr(param, "hidden", False)):
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


def _add(name: str, function) -> None:
    app.command(name, cls=Command)(function)


_add("layers", layers.layers)
_add("demo", demo.demo)
_add("scan", scan.scan)
_add("topk", topk.topk)
_add("explain", explain.explain)
_add("evaluate", evaluate.evaluate)
_add("visualize", synthesis.visualize)
_add("classviz", synthesis.classviz)
_add("invert", synthesis.invert)
_add("dream", synthesis.dream)
_add("attack", adversarial.attack)
_add("fool", adversarial.fool)
_add("rf", empirical.rf)
_add("stimuli", empirical.stimuli)
_add("dissect", dissect.dissect)
_add("dissect-compare", dissect.dissect_compare)
_add("concepts", concepts.concepts)
_add("microscope", microscope.microscope)
_add("features", represent.features)
_add("neighbors", represent.neighbors)
_add("probe", represent.probe)
_add("project", represent.project)
_add("compare", represent.compare)
_add("train", train.train)
_add("finetune", train.finetune)
_add("filters", train.filters)
_add("compare-scans", train.compare_scans)
_add("serve", viewer.serve)
_add("export", viewer.export)


def _version(value: bool) -> None:
    if value:
        from convscope.version import __version__

        typer.echo(f"convscope {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """See what a convolutional network has learned."""


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors print one line on stderr and exit 1 (2 for bad input)."""
    from convscope.errors import ConvscopeError

    try:
        # without standalone mode click returns a typer.Exit's code instead of raising it
        code = app(args=argv, standalone_mode=False)
    except ConvscopeError as e:
        if debug():
            raise
        from rich.markup import escape

        Console(stderr=True).print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
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
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
