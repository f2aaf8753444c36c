"""The conformance suite (issue 19): every capability on every registry architecture, random weights.

One test body parametrised over (architecture, capability), as timm's tests are. The fast members
run always; the slow ones carry the ``slow`` marker and run only with ``CONVSCOPE_SLOW=1``.
A known failure is ``xfail(strict=True)`` with the recorded error, so that a fix shows up as an
unexpected pass. Regenerate the table: ``python -m convscope.conformance --all --out FILE``.
"""

from __future__ import annotations

import os

import pytest
import torch

from convscope.conformance import (
    ARCHITECTURES,
    CAPABILITIES,
    ConformanceReport,
    Fixture,
    hook_count,
    run_check,
    run_conformance,
)
from convscope.errors import NameNotFoundError

SLOW = os.environ.get("CONVSCOPE_SLOW") == "1"

# (architecture, capability) -> the recorded error of a check that fails (a strict xfail): none now.
KNOWN_FAILURES: dict[tuple[str, str], str] = {}


def _params():
    for arch in ARCHITECTURES:
        for cap in CAPABILITIES:
            marks = []
            if arch.slow:
                marks += [pytest.mark.slow, pytest.mark.skipif(not SLOW, reason="slow; CONVSCOPE_SLOW=1")]
            if (arch.name, cap) in KNOWN_FAILURES:
                marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[(arch.name, cap)]))
            yield pytest.param(arch, cap, marks=marks, id=f"{arch.name}-{cap}")


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """One loaded member per architecture, shared by its capability tests."""
    made: dict[str, Fixture] = {}

    def get(arch):
        if arch.name not in made:
            made[arch.name] = Fixture(arch, tmp_path_factory.mktemp(arch.name))
        return made[arch.name]

    yield get
    made.clear()


@pytest.mark.parametrize("arch,capability", list(_params()))
def test_conformance(fixtures, arch, capability):
    result = run_check(fixtures(arch), capability)
    if result.status == "n/a":
        pytest.skip(f"not applicable: {result.detail}")
    assert result.status == "ok", result.detail


def test_hook_count_sees_a_left_hook():
    """The hooks check can fail: a hook left on a module is counted."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    assert hook_count(model) == 0
    handle = model[1].register_forward_hook(lambda *a: None)
    assert hook_count(model) == 1
    handle.remove()
    assert hook_count(model) == 0


def test_run_check_fails_on_a_hook_left_behind(monkeypatch, tmp_path):
    """A check that leaves a hook on the model fails, though its body passed."""
    import convscope.conformance as conformance

    member = Fixture(conformance.BY_NAME["resnet18"], tmp_path)  # its own: this one is left dirty

    def leaky(f):
        f.subject.model.layer4.register_forward_hook(lambda *a: None)
        return ""

    monkeypatch.setitem(conformance.CHECKS, "record", leaky)
    result = run_check(member, "record")
    assert result.status == "failed" and "1 hooks left on the model" in result.detail


def test_rf_check_fails_on_a_wrong_receptive_field(tmp_path):
    """A layer whose table claims a too-small receptive field fails the rf check, by name."""
    import convscope.conformance as conformance
    from convscope.receptive import ReceptiveField

    member = Fixture(conformance.BY_NAME["resnet18"], tmp_path)  # its own: its table is changed
    assert run_check(member, "rf").status == "ok"
    info = member.subject.layer("layer1")
    rf = info.rf
    object.__setattr__(info, "rf", ReceptiveField((3.0, 3.0), rf.jump, rf.start))
    result = run_check(member, "rf")
    assert result.status == "failed"
    assert "layer1 at (8, 8): gradient support y 11..53, x 11..53 leaves the theoretical box" in result.detail


def test_report_table_says_what_failed():
    report = run_conformance(["resnet18"], ["layers", "record"])
    assert [r.status for r in report.results] == ["ok", "ok"]
    report.results[1].status, report.results[1].detail = "failed", "ValueError: boom"
    table = report.table()
    assert "| resnet18 | ok | **FAIL** |" in table
    assert "- resnet18 / record (failed): ValueError: boom" in table
    assert isinstance(report, ConformanceReport)


def test_unknown_names_are_refused_before_work():
    with pytest.raises(NameNotFoundError, match="resnet19"):
        run_conformance(["resnet19"])
    with pytest.raises(NameNotFoundError, match="scann"):
        run_conformance(["resnet18"], ["scann"])
