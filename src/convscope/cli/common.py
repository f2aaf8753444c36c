"""Options and error handling shared by every command."""

from __future__ import annotations

import os
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


def load_subject(model: str, weights: str = "default", arch: str | None = None,
                 device: str = "cpu"):
    from convscope.zoo import load

    return load(model, weights=weights, arch=arch, device=device)


def debug() -> bool:
    """Show full tracebacks (CONVSCOPE_DEBUG=1)."""
    return os.environ.get("CONVSCOPE_DEBUG", "") not in ("", "0")
