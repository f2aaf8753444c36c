"""The shared Ctrl-C handling of the resumable commands: bars stopped before the one line that
says how to continue, exit code 130, and bars stopped on success and on other errors too."""

import pytest
import typer

from convscope.cli.common import INTERRUPTED, resumable


class Bar:
    def __init__(self, log):
        self.log = log

    def stop(self):
        self.log.append("stop")


def test_ctrl_c_stops_the_bars_prints_one_line_and_exits_130(capsys, tmp_path):
    log = []
    with pytest.raises(typer.Exit) as stopped, resumable(tmp_path / "atlas", Bar(log), Bar(log)):
        raise KeyboardInterrupt
    assert stopped.value.exit_code == INTERRUPTED == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0] and str(tmp_path / "atlas") in err[0]
    assert log[:2] == ["stop", "stop"]


def test_success_and_other_errors_stop_the_bars_and_pass_through(capsys, tmp_path):
    log = []
    with resumable(tmp_path, Bar(log)):
        pass
    assert log == ["stop"]
    with pytest.raises(ValueError, match="bad"), resumable(tmp_path, Bar(log)):
        raise ValueError("bad")
    assert log == ["stop", "stop"] and capsys.readouterr().err == ""
