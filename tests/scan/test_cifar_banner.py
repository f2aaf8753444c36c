"""Tests on CIFAR-10 photos skip without ../shared; the run's summary then says so in a banner
(tests/conftest.py), so that a green run does not hide that they never ran."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests import conftest


class _Reporter:
    def __init__(self, skipped):
        self.stats = {"skipped": skipped}
        self.lines: list[str] = []

    def section(self, title, sep="=", **markup):
        self.lines.append(f"{sep * 3} {title} {sep * 3}")

    def write_line(self, line, **markup):
        self.lines.append(line)


def _skip(reason: str):
    return SimpleNamespace(longrepr=("tests/x.py", 3, f"Skipped: {reason}"))


def test_banner_counts_the_cifar_skips(monkeypatch, tmp_path):
    monkeypatch.setattr(conftest, "CIFAR_TAR", tmp_path / "missing.tar.gz")
    with pytest.raises(pytest.skip.Exception) as info:
        conftest.cifar_dir.__wrapped__(None)  # the fixture's own skip reason
    reasons = [str(info.value), str(info.value), "pip install 'convscope[ray]'"]
    rep = _Reporter([_skip(r) for r in reasons])
    conftest.pytest_terminal_summary(rep, 0, None)
    assert rep.lines[0] == "!!! CIFAR-10 TESTS SKIPPED !!!"
    assert (
        rep.lines[1].startswith("2 tests on CIFAR-10 photos did NOT run") and "missing.tar.gz" in rep.lines[1]
    )
    quiet = _Reporter([_skip("pip install 'convscope[ray]'")])
    conftest.pytest_terminal_summary(quiet, 0, None)
    assert quiet.lines == []
