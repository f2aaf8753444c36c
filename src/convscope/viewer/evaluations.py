"""The viewer's pages of stored evaluations of attribution methods (``convscope evaluate``):
the index and one page per evaluation (its ranked plot, the ranked table with confidence
intervals, its settings), shared by the server and the static export. Everything shown is read
as stored (``table.json``, ``ranked.png``): nothing is computed on request. Every value is
escaped."""

from __future__ import annotations

import json
import time
from html import escape

from convscope.viewer.pages import Links, evaluations_table, page


def _number(value, fmt: str = ".4g") -> str:
    return "-" if not isinstance(value, (int, float)) or value != value else format(value, fmt)


def _when(stamp) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp)) if isinstance(stamp, (int, float)) else "-"


def evaluations_page(meta: dict, rows: list[dict], links: Links) -> str:
    """The index of the atlas's evaluations of attribution methods."""
    body = (
        evaluations_table(rows, links)
        if rows
        else "<p>This atlas holds no evaluation yet (<code>convscope evaluate</code> makes one).</p>"
    )
    return page("evaluations of attribution methods", body, links, meta["model"].get("name", ""))


def _ranked(table: list[dict]) -> str:
    """The ranked rows, one block per metric (as stored: best first within each)."""
    out, metric = [], None
    for r in table:
        if not isinstance(r, dict):
            continue
        if r.get("metric") != metric:
            metric = r.get("metric")
            better = "higher is better" if r.get("higher_is_better") else "lower is better"
            out.append(
                f"<tr><th colspan='7' class='name'>{escape(str(metric))} <span class='tag'>"
                f"({better})</span></th></tr>"
            )
        out.append(
            f"<tr><td>{escape(str(r.get('rank', '')))}</td>"
            f"<td class='name'>{escape(str(r.get('method', '')))}</td>"
            f"<td>{_number(r.get('mean'))}</td><td>{_number(r.get('low'))} … {_number(r.get('high'))}"
            f"</td><td>{_number(r.get('std'))}</td><td>{escape(str(r.get('n', '')))}</td>"
            f"<td>{_number(r.get('seconds'), '.1f')}</td></tr>"
        )
    return (
        "<table id='ranked'><tr><th>rank</th><th>method</th><th>mean</th><th>95% interval</th>"
        "<th>std</th><th>images</th><th>seconds</th></tr>" + "".join(out) + "</table>"
    )


def evaluation_page(meta: dict, info: dict, report: dict | None, files: dict, links: Links) -> str:
    """One evaluation: ``info`` (a row of ``AtlasReader.evaluations()``), ``report`` (its stored
    ``table.json``, or None when missing) and ``files``: which of its files (``plot``, ``csv``,
    ``json``) are stored and may be linked."""
    name = info["name"]
    parts = [
        f"<p>{len(info['methods'])} method(s) × {len(info['metrics'])} metric(s) on "
        f"{int(info['images'] or 0)} image(s) of {escape(str(info['model']))}"
        + (f", {int(info['skipped'])} skipped" if info.get("skipped") else "")
        + f"; made {_when(info['created'])} · <a href='{links.evaluations()}'>all evaluations</a></p>"
    ]
    if files.get("plot"):
        parts.append(
            f"<div class='wide'><img id='ranked-plot' src='{links.evaluation_file(name, 'plot')}' "
            "alt='methods ranked by each metric, with 95% intervals'></div>"
        )
    if report is None:
        parts.append("<p id='error'>This evaluation's table (table.json) is missing or unreadable.</p>")
    else:
        parts.append(
            "<h2>ranked</h2><p class='tag'>mean over the images with a score, and its 95% "
            "percentile-bootstrap interval (seeded); rank 1 is best in the metric's direction.</p>"
        )
        parts.append(_ranked(report.get("table") or []))
        settings = report.get("settings") if isinstance(report.get("settings"), dict) else {}
        failures = settings.get("failures") or []
        shown = {k: v for k, v in settings.items() if k not in ("fingerprint", "failures", "resume")}
        parts.append(
            "<h2>settings</h2><pre id='settings' class='name'>"
            + escape(json.dumps(shown, indent=1, sort_keys=True, default=str))
            + "</pre>"
        )
        if failures:
            parts.append(
                f"<h2>failures</h2><p>{len(failures)} chunk(s) could not be scored (NaN there):</p>"
                "<ul id='failures'>"
                + "".join(
                    f"<li class='name'>{escape(str(f.get('method')))} {escape(str(f.get('metric') or ''))}: "
                    f"{escape(str(f.get('error')))}</li>"
                    for f in failures[:20]
                    if isinstance(f, dict)
                )
                + "</ul>"
            )
    downloads = [
        f"<a href='{links.evaluation_file(name, kind)}'>{label}</a>"
        for kind, label in (("csv", "table.csv"), ("json", "table.json"))
        if files.get(kind)
    ]
    if downloads:
        parts.append("<p id='downloads'>download: " + " · ".join(downloads) + "</p>")
    return page(f"evaluation {name}", "".join(parts), links, meta["model"].get("name", ""))


FILE_KINDS = ("plot", "csv", "json")


def evaluation_view(reader, name: str) -> tuple[dict, dict | None, dict]:
    """What one evaluation's page shows, read from the atlas's reader: ``(info, report, files)``
    with ``files`` kind -> the stored path (symlink-safe) or None. An unknown name raises
    :class:`~convscope.errors.NameNotFoundError` (a 404)."""
    info = reader.evaluation(name)
    files = {kind: reader.evaluation_file(name, kind) for kind in FILE_KINDS}
    return info, reader.evaluation_report(name), files
