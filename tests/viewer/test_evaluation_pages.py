"""Evaluations of attribution methods in the viewer: the index, an evaluation's page (ranked plot,
table with intervals, settings) and its files, hostile names 404, and the static export."""

from __future__ import annotations

import pytest

fastapi = pytest.importorskip("fastapi", reason="the viewer needs the web extra")
from fastapi.testclient import TestClient  # noqa: E402

from convscope.atlas import Atlas  # noqa: E402
from convscope.atlas.queries import AtlasReader  # noqa: E402
from convscope.viewer import pages  # noqa: E402
from convscope.viewer.app import create_app  # noqa: E402
from convscope.viewer.export import export_evaluations  # noqa: E402
from tests.atlas.test_evaluations import made  # noqa: E402


@pytest.fixture()
def atlas(tmp_path):
    a = Atlas.create(tmp_path / "atlas", {"name": "tiny"}, {"description": "test images"})
    a.write_evaluation("run-1", made(methods=("saliency", "<b>x</b>")))
    return a


def test_pages_render_and_hostile_names_404(atlas):
    c = TestClient(create_app(atlas.path), base_url="http://127.0.0.1")
    home = c.get("/")
    assert home.status_code == 200 and "/evaluations/run-1" in home.text
    assert "run-1" in c.get("/evaluations").text
    page = c.get("/evaluations/run-1")
    assert page.status_code == 200 and "ranked-plot" in page.text and "95% interval" in page.text
    assert "<b>x</b>" not in page.text and "&lt;b&gt;x&lt;/b&gt;" in page.text
    assert c.get("/evaluations/run-1/files/plot").content[:4] == b"\x89PNG"
    assert c.get("/evaluations/run-1/files/csv").text == atlas.evaluation("run-1").to_csv()
    for url in ("/evaluations/run-2", "/evaluations/..%2F..", "/evaluations/run-1/files/result",
                "/evaluations/run-1/files/%2E%2E", "/evaluations/%3Cscript%3E"):  # fmt: skip
        assert c.get(url).status_code == 404, url


def test_export_includes_them(atlas, tmp_path):
    out = tmp_path / "site"
    meta = {"model": {"name": "tiny"}}
    links = pages.StaticLinks()
    assert export_evaluations(AtlasReader(atlas.path), out, meta, links) == 1
    assert (out / "evaluations.html").is_file() and (out / links.evaluation("run-1")).is_file()
    assert (out / links.evaluation_file("run-1", "plot")).is_file()
    assert links.evaluation_file("run-1", "plot").endswith("_ranked.png")


def test_export_names_of_names_that_differ_differ(atlas, tmp_path):
    # safe_name maps . @ + = to _: run.1 and run_1 alike; the export names must not meet
    atlas.write_evaluation("run.1", made(seed=1))
    atlas.write_evaluation("run_1", made(seed=2))
    links = pages.StaticLinks()
    names = ["run.1", "run_1", "run@1", "run+1", "run=1", "run-1"]
    assert len({links.evaluation(n) for n in names}) == len(names)
    assert len({links.evaluation_file(n, "csv") for n in names}) == len(names)
    out = tmp_path / "site"
    assert export_evaluations(AtlasReader(atlas.path), out, {"model": {"name": "tiny"}}, links) == 3
    for name in ("run.1", "run_1"):
        assert (out / links.evaluation_file(name, "csv")).read_text() == atlas.evaluation(name).to_csv()


def test_the_pages_module_does_not_import_the_evaluations_module():
    # viewer.evaluations imports viewer.pages; pages has the evaluations table itself
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(pages))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "convscope.viewer.evaluations" not in imported
