"""Options and error handling shared by every command."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

ModelArg = Annotated[str, typer.Argument(
    help="efficientnet_lite0 (offline default), torchvision:NAME, timm:NAME, or a checkpoint path")]
WeightsOpt = Annotated[str, typer.Option(
    "--weights", help="'default' (pretrained), 'none' (random init) or a local weights file")]
ArchOpt = Annotated[str | None, typer.Option(
    "--arch", help="architecture of a checkpoint file, e.g. torchvision:resnet18")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, mps ...")]
SeedOpt = Annotated[int, typer.Option("--seed", help="random seed, for reproducible results")]
EngineOpt = Annotated[str, typer.Option("--engine", help="local, or ray (shards over Ray actors)")]
AddressOpt = Annotated[str | None, typer.Option("--address", help="Ray cluster address, e.g. auto")]
RayWorkersOpt = Annotated[int, typer.Option("--ray-workers", min=1, help="Ray actors")]
WorkersOpt = Annotated[int | None, typer.Option(
    "--workers", min=0, help="image decoding processes [default: sized to the machine]")]
PrecisionOpt = Annotated[str, typer.Option(
    "--precision", help="fp32, bf16 or fp16 (autocast; effect on results in docs/scale.md)")]
ChannelsLastOpt = Annotated[bool | None, typer.Option(
    "--channels-last/--no-channels-last", help="NHWC memory layout [default: on CUDA only]")]
DecodeOpt = Annotated[str, typer.Option(
    "--decode", help="cpu (PIL, in the workers) or device (JPEGs decoded on --device)")]


def check_engine(engine: str) -> None:
    """``--engine`` is ``local`` or ``ray``."""
    if engine not in ("local", "ray"):
        from convscope.errors import UserInputError

        raise UserInputError(f"--engine must be local or ray, not {engine!r}")


def make_accel(precision: str = "fp32", channels_last: bool | None = None, decode: str = "cpu"):
    """The :class:`~convscope.accel.Accel` the speed options describe."""
    from convscope.accel import Accel

    return Accel(precision=precision, channels_last=channels_last, decode=decode)


def progress_bar(label: str, total: int, console=None, extra=(), remaining: bool = True):
    """A rich progress bar (label, bar, done/total, ``extra`` columns, time left) that shows on
    its first update, so that input checks fail before it appears, and its ``progress(done,
    total)`` callback. Stop it with ``bar.stop()``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn(), *extra]
    bar = Progress(*columns, *([TimeRemainingColumn()] if remaining else []),
                   console=console or Console(stderr=True))
    task = bar.add_task(label, total=total)

    def progress(done: int, total: int) -> None:
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=done, total=total)

    return bar, progress


def load_subject(model: str, weights: str = "default", arch: str | None = None,
                 device: str = "cpu"):
    from convscope.zoo import load

    return load(model, weights=weights, arch=arch, device=device)


def debug() -> bool:
    """Show full tracebacks (CONVSCOPE_DEBUG=1)."""
    return os.environ.get("CONVSCOPE_DEBUG", "") not in ("", "0")


def read_images(items: list[str]):
    """Paths, or ``sample:NAME`` for a bundled image (``sample:chelsea``)."""
    from convscope.data import read_image
    from convscope.errors import UserInputError
    from convscope.samples import SAMPLE_NAMES, sample_view

    out = []
    for item in items:
        if item.startswith("sample:"):
            name = item.split(":", 1)[1]
            if name.split("/")[0] not in SAMPLE_NAMES:
                raise UserInputError(f"unknown sample {name!r}; have {', '.join(SAMPLE_NAMES)}")
            out.append((name.replace("/", "_"), sample_view(name)))
        else:
            path = Path(item)
            if not path.exists():
                raise UserInputError(f"image {item!r} does not exist")
            try:
                out.append((path.stem, read_image(path)))
            except Exception as e:
                raise UserInputError(f"cannot read {item}: {e}") from None
    return out


def parse_range(text: str) -> list[int]:
    """``"0-7,12,20-23"`` -> [0, ..., 7, 12, 20, ..., 23]."""
    from convscope.errors import UserInputError

    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = part.split("-", 1)
                out.extend(range(int(a), int(b) + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise UserInputError(f"{text!r} is not a list of numbers and ranges like 0-7,12") from None
    if not out:
        raise UserInputError("no numbers given")
    return out
