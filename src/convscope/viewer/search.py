"""The model-wide search by label: the server's ``/search?q=`` page (units and learned concepts
whose labels contain the text, best IoU first, a page at a time, each with a thumbnail: its
stored feature visualisation, else its best patch) and the static export's label index (every
label, alphabetically, linking to the units and concepts: a static site runs no scripts, so it
cannot search). The queries are the atlas reader's (:mod:`convscope.atlas.search`)."""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from itertools import groupby
from urllib.parse import quote

from convscope.atlas.search import MAX_QUERY
from convscope.viewer import pages

PER_PAGE = 50
SEARCH_CSS = (
    ".found .cell{width:150px}.found .cell img{width:112px;height:112px}"
    ".lab{display:block;overflow-wrap:anywhere}.lab.hit{font-weight:600}"
    "dl.labels dt{font-weight:600;margin-top:8px}dl.labels dd{margin:0 0 0 16px}"
)


def check_query(q: str | None) -> tuple[str, str | None]:
    """(the query stripped, a message saying why it is not searched, or None)."""
    q = (q or "").strip()
    if not q:
        return q, "type part of a label (a concept or colour name, e.g. red) to search for"
    if len(q) > MAX_QUERY:
        return q, f"the search text is {len(q)} characters long; labels are at most {MAX_QUERY}"
    return q, None


def search_url(query: str, page: int = 0) -> str:
    """The server URL of one page of results."""
    return f"/search?q={quote(query, safe='')}" + (f"&page={page}" if page else "")


def _label(lab: dict) -> str:
    cls = "lab hit" if lab.get("match") else "lab"
    det = " det" if lab["detector"] else ""
    return (
        f"<span class='{cls}{det}' title='{escape(lab['dataset'])}, {escape(str(lab['category']))}'>"
        f"{escape(lab['name'])} {lab['iou']:.2f} <span class='tag'>({escape(lab['dataset'])})</span></span>"
    )


def _unit_cell(meta: dict, r: dict, links: pages.Links) -> str:
    layer, unit = r["layer"], r["unit"]
    if r["visual"]:
        src, alt = links.stored_visual(layer, unit, "positive", 0), "feature visualization"
    elif r["patch"]:
        src, alt = links.patch(layer, unit), "best patch"
    else:
        src = None
    img = f"<img loading='lazy' src='{src}' alt='{alt}'>" if src else "<div style='height:112px'></div>"
    name = pages.unit_name(meta, layer, unit)
    named = f" ({escape(name)})" if name else ""
    return (
        f"<div class='cell unit-hit'><a href='{links.unit(layer, unit)}'>{img}<br>{escape(layer)} unit "
        f"{unit}{named}</a>" + "".join(_label(lab) for lab in r["labels"]) + "</div>"
    )


def _concept_cell(r: dict, picture: bool, links: pages.Links) -> str:
    name, c = r["dictionary"], r["concept"]
    if picture:
        img = f"<img loading='lazy' src='{links.concept_picture(name, c)}' alt='concept picture'>"
    elif r.get("atlas_image") is not None:
        img = f"<img loading='lazy' src='{links.source_image(r['atlas_image'])}' alt='best image'>"
    else:
        img = "<div style='height:112px'></div>"
    lab = {**r, "name": r["label"], "match": True}
    return (
        f"<div class='cell concept-hit'><a href='{links.concept(name, c)}'>{img}<br>{escape(name)} "
        f"concept {c}</a><span class='tag lab'>at {escape(r['layer'])}</span>{_label(lab)}</div>"
    )


def _pager(query: str, page: int, pages_total: int) -> str:
    if pages_total <= 1:
        return ""
    around = sorted({0, pages_total - 1, *range(max(0, page - 3), min(pages_total, page + 4))})
    return (
        "<nav class='pages'>"
        + "".join(
            f"<a href='{escape(search_url(query, p))}'>{f'<b>{p + 1}</b>' if p == page else p + 1}</a>"
            for p in around
        )
        + "</nav>"
    )


def search_page(reader, meta: dict, q: str | None, page: int, links: pages.Links) -> str:
    """The ``/search`` page for query ``q`` (page ``page`` of :data:`PER_PAGE` units and as many
    concepts); an empty or over-long query gets the form and a message, not an error."""
    query, message = check_query(q)
    form = (
        f"<form method='get' action='{links.search()}' class='search'>"
        f"<input type='search' name='q' value='{escape(query[: MAX_QUERY * 2])}' size='30' "
        f"maxlength='{MAX_QUERY}' id='search-page-q' aria-label='label'> <button>search</button></form>"
    )
    parts = [f"<style>{SEARCH_CSS}</style>", form]
    if message:
        parts.append(f"<p id='search-message'>{escape(message)}</p>")
        return pages.page("search", "".join(parts), links, meta["model"].get("name", ""))
    page = max(page, 0)
    units, n_units = reader.search_units(query, page, PER_PAGE)
    concepts, n_concepts = reader.search_concepts(query, page, PER_PAGE)
    named, n_named = reader.search_unit_names(query, page, PER_PAGE)
    if not n_units and not n_concepts and not n_named:
        parts.append(
            f"<p id='search-message'>no unit or concept has a label containing “{escape(query)}”"
            + (
                ""
                if reader.dissection_summary()
                else " (this atlas has no dissection: run convscope dissect)"
            )
            + "</p>"
        )
    pages_total = max(-(-n_units // PER_PAGE), -(-n_concepts // PER_PAGE), -(-n_named // PER_PAGE))
    pager = _pager(query, page, pages_total)
    first = page * PER_PAGE
    if n_units:
        shown = (
            f"{first + 1}–{first + len(units)} of {n_units}" if units else f"none on this page of {n_units}"
        )
        parts.append(
            f"<h2 id='units-found'>units whose labels contain “{escape(query)}”: {shown}</h2>"
            f"<div class='grid found'>{''.join(_unit_cell(meta, r, links) for r in units)}</div>"
        )
    if n_named:
        shown = (
            f"{first + 1}–{first + len(named)} of {n_named}" if named else f"none on this page of {n_named}"
        )
        cells = "".join(_unit_cell(meta, {**r, "labels": []}, links) for r in named)
        parts.append(
            f"<h2 id='names-found'>units the model names “{escape(query)}”: {shown}</h2>"
            f"<div class='grid found'>{cells}</div>"
        )
    if n_concepts:
        shown = (
            f"{first + 1}–{first + len(concepts)} of {n_concepts}"
            if concepts
            else f"none on this page of {n_concepts}"
        )
        cells = "".join(
            _concept_cell(r, reader.dictionary_picture(r["dictionary"], r["concept"]) is not None, links)
            for r in concepts
        )
        parts.append(
            f"<h2 id='concepts-found'>learned concepts whose labels contain “{escape(query)}”: {shown}</h2>"
            f"<div class='grid found'>{cells}</div>"
        )
    parts.append(pager)
    parts.append("<p class='tag'>ranked by the label's IoU; the bold labels match</p>")
    return pages.page(f"search: {query}", "".join(parts), links, meta["model"].get("name", ""))


def labels_page(meta: dict, rows: list[dict], links: pages.Links, linked: Callable[[str, int], bool]) -> str:
    """The static export's index of every label (rows of ``AtlasReader.all_labels``),
    alphabetically, each with its units and concepts best IoU first; ``linked(layer, unit)``:
    whether that unit's page was exported (the others are named without a link)."""
    items = []
    for label, group in groupby(rows, key=lambda r: r["label"]):
        refs = []
        for r in group:
            score = f" {r['iou']:.2f}" if r["iou"] is not None else ""
            det = " class='det'" if r["detector"] else ""
            if r["kind"] == "concept":
                text = f"{escape(r['dictionary'])} concept {r['unit']}"
                href = links.concept(r["dictionary"], r["unit"])
            else:
                text = f"{escape(r['layer'])} unit {r['unit']}"
                href = links.unit(r["layer"], r["unit"]) if linked(r["layer"], r["unit"]) else None
            text = f"<span{det}>{text}</span>{score}"
            refs.append(f"<a href='{href}'>{text}</a>" if href else text)
        items.append(f"<dt>{escape(str(label))}</dt><dd>{' · '.join(refs)}</dd>")
    body = (
        f"<style>{SEARCH_CSS}</style><p>every label of the atlas's units (dissection) and learned "
        "concepts, alphabetically, with the label's IoU; green: a detector. The server's viewer "
        "(convscope serve) searches them.</p>"
    )
    body += f"<dl class='labels' id='labels'>{''.join(items)}</dl>" if items else "<p>no labels stored</p>"
    return pages.page("labels", body, links, meta["model"].get("name", ""))
