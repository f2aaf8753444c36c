"""Shared fixtures: models are built once per session; data is extracted into temp folders."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest
import torch

import convscope
from convscope.testing import tiny_subject

SHARED = Path(os.environ.get("CONVSCOPE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
CIFAR_TAR = SHARED / "data" / "cifar10-jpg.tar.gz"
CIFAR_SKIP = "CIFAR-10 data missing"  # in the skip reason of every test that needs it

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def default_subject():
    return convscope.load()


@pytest.fixture(scope="session")
def alexnet():
    return convscope.load("torchvision:alexnet", weights=None)


@pytest.fixture(scope="session")
def resnet18():
    torch.manual_seed(0)
    return convscope.load("torchvision:resnet18", weights=None)


@pytest.fixture()
def tiny():
    return tiny_subject()


def extract_cifar(tmp_path_factory, per_class: int) -> Path:
    """The first ``per_class`` CIFAR-10 test JPEGs of each class into a new temporary
    ``<class>/`` folder tree (the test skips, saying so, without the shared data)."""
    if not CIFAR_TAR.exists():
        pytest.skip(f"{CIFAR_SKIP}: {CIFAR_TAR} not found")
    out = tmp_path_factory.mktemp(f"cifar{per_class}")
    counts: dict[str, int] = {}
    with tarfile.open(CIFAR_TAR) as tf:
        for m in tf:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) < 3 or parts[-3] != "test":
                continue
            cls = parts[-2]
            if counts.get(cls, 0) >= per_class:
                if len(counts) == 10 and all(v >= per_class for v in counts.values()):
                    break
                continue
            counts[cls] = counts.get(cls, 0) + 1
            dest = out / cls / parts[-1]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(tf.extractfile(m).read())
    return out


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> Path:
    """A labelled folder of 10 CIFAR-10 test images per class (100 JPEGs), from shared data."""
    return extract_cifar(tmp_path_factory, 10)


@pytest.fixture(scope="session")
def cifar_dir_200(tmp_path_factory) -> Path:
    """20 CIFAR-10 test images per class (200 JPEGs), from shared data."""
    return extract_cifar(tmp_path_factory, 20)


def hook_count(model: torch.nn.Module) -> int:
    """Hooks of every kind left on any module of ``model``."""
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(getattr(m, "_backward_pre_hooks", {}))
        for m in model.modules()
    )


def cifar_skips(reports) -> int:
    """How many of the skipped test ``reports`` skipped for want of the CIFAR-10 data."""

    def reason(rep) -> str:
        lr = rep.longrepr
        return lr[2] if isinstance(lr, tuple) and len(lr) == 3 else str(lr)

    return sum(CIFAR_SKIP in reason(r) for r in reports)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say loudly when tests on real photos did not run: a green run without ``../shared`` has
    not checked them."""
    n = cifar_skips(terminalreporter.stats.get("skipped", []))
    if n:
        terminalreporter.section("CIFAR-10 TESTS SKIPPED", sep="!", red=True, bold=True)
        terminalreporter.write_line(
            f"{n} test{'s' if n != 1 else ''} on CIFAR-10 photos did NOT run: {CIFAR_TAR} was not "
            "found. Put the shared data beside the clone (../shared) or set CONVSCOPE_SHARED.",
            red=True,
            bold=True,
        )
