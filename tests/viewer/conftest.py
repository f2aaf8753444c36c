from __future__ import annotations

import pytest

from convscope.cli.main import main

TOP_K = 8  # wider than the old 460 px cap of the top-K picture (8 tiles of 100 px)


@pytest.fixture(scope="session")
def viewer_atlas(tmp_path_factory):
    """An atlas of efficientnet_lite0 over the bundled photos starting with c (and their crops),
    with two random directions, a synthetic-concept dissection and one empirical receptive field."""
    out = tmp_path_factory.mktemp("viewer") / "atlas"
    scan = (
        "scan --data convscope:samples --pattern c* --layers blocks.2,blocks.4 --directions 2 "
        f"--k {TOP_K} --threshold-sample 8 --batch-size 12"
    ).split()
    assert main([*scan, "--out", str(out)]) == 0
    dissect = ["dissect", "--concepts", "synthetic", "--synthetic-images", "8", "--layers", "blocks.2"]
    dissect += ["--show", "0"]
    assert main([*dissect, "--out", str(out)]) == 0
    assert main(["rf", str(out), "--layer", "blocks.2", "--units", "0", "--top", "1", "--stride", "16"]) == 0
    return out
