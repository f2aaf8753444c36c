"""HTML of the viewer's pages, shared by the server and the static export. Every value is
escaped; links come from a :class:`Links` object (server URLs or relative file names)."""

from __future__ import annotations

import math
from html import escape
from urllib.parse import quote

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#20232a;color:#fff;padding:8px 16px}header a{color:#9cf;margin-right:14px}
main{padding:12px 16px}table{border-collapse:collapse}
td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:8px}
.cell{background:#fff;border:1px solid #ddd;padding:4px;width:112px;font-size:12px}
.cell img{width:112px;height:112px;object-fit:contain;background:#eee}.tag{color:#555}
.det{color:#0a7d2c;font-weight:600}nav.pages a{margin-right:8px}form.inline{display:inline}
img.big{max-width:460px}h2{margin:14px 0 6px}
.name{overflow-wrap:anywhere}.wide{overflow-x:auto;max-width:100%}.wide img{max-width:none}
.show{margin:6px 0}.show label{margin-right:12px}.visuals .cell{width:auto}
.visuals .cell img{width:128px;height:128px}
.visuals .cell img.alpha{background:repeating-conic-gradient(#bbb 0 25%,#fff 0 50%) 0 0/16px 16px}
#fv-alpha:checked~.grid img.opaque,#fv-opaque:checked~.grid img.alpha{display:none}
#show-fv:checked~.grid .pt,#show-patch:checked~.grid .fv,#show-label:checked~.grid .fv,
#show-label:checked~.grid .pt{display:none}#show-label:checked~.grid .cell{width:auto;min-width:112px}
"""


class Links:
    """Server URLs."""

    static = False

    def home(self) -> str:
        return "/"

    def layer(self, layer: str, **query) -> str:
        q = "&".join(f"{k}={quote(str(v))}" for k, v in query.items() if v not in (None, ""))
        return f"/layer/{quote(layer, safe='')}" + (f"?{q}" if q else "")

    def unit(self, layer: str, unit: int) -> str:
        return f"/unit/{quote(layer, safe='')}/{unit}"

    def direction(self, layer: str, idx: int) -> str | None:
        return f"/unit/{quote(layer, safe='')}/{idx}?direction=1"

    def visualization(self, layer: str, unit: int) -> str | None:
        return f"/img/fv/{quote(layer, safe='')}/{unit}"

    def stored_visual(self, layer: str, unit: int, kind: str, index: int = 0, opaque: bool = False) -> str:
        """A stored feature visualisation tile (kind ``positive``, ``negative``, ``diversity``);
        ``opaque``: without its alpha channel (a MaCo tile's transparency)."""
        url = f"/img/visual/{quote(layer, safe='')}/{unit}/{quote(kind, safe='')}/{index}"
        return url + ("?opaque=1" if opaque else "")

    def image(self, idx: int) -> str:
        return f"/image/{idx}"

    def source_image(self, idx: int, size: int = 112) -> str:
        return f"/img/source/{idx}?size={size}"

    def patch(self, layer: str, unit: int) -> str:
        return f"/img/patch/{quote(layer, safe='')}/{unit}"

    def topk(self, layer: str, unit: int, criterion: str, direction: bool = False) -> str:
        return f"/img/topk/{quote(layer, safe='')}/{unit}/{criterion}" + ("?direction=1" if direction else "")

    def rf(self, layer: str, unit: int) -> str:
        return f"/img/rf/{quote(layer, safe='')}/{unit}"

    # learned concept sets (dictionaries)
    def dictionaries(self) -> str:
        return "/concepts"

    def dictionary(self, name: str) -> str:
        return f"/concepts/{quote(name, safe='')}"

    def concept(self, name: str, concept: int) -> str:
        return f"/concepts/{quote(name, safe='')}/{concept}"

    def concept_topk(self, name: str, concept: int, criterion: str) -> str:
        return f"/img/concept/topk/{quote(name, safe='')}/{concept}/{quote(criterion, safe='')}"

    def concept_picture(self, name: str, concept: int) -> str:
        return f"/img/concept/picture/{quote(name, safe='')}/{concept}"

    def search(self) -> str:
        """The search by label (the static site: its index of every label)."""
        return "/search"

    # evaluations of attribution methods
    def evaluations(self) -> str:
        return "/evaluations"

    def evaluation(self, name: str) -> str:
        return f"/evaluations/{quote(name, safe='')}"

    def evaluation_file(self, name: str, kind: str) -> str:
        """A stored file of the evaluation: ``kind`` ``plot``, ``csv`` or ``json``."""
        return f"/evaluations/{quote(name, safe='')}/files/{quote(kind, safe='')}"


def safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


class StaticLinks(Links):
    """Relative file names of the exported site (pages at the top level, images under img/)."""

    static = True

    def home(self) -> str:
        return "index.html"

    def layer(self, layer: str, page: int = 0, **query) -> str:
        return f"layer_{safe_name(layer)}_{page}.html"

    def unit(self, layer: str, unit: int) -> str:
        return f"unit_{safe_name(layer)}_{unit}.html"

    def direction(self, layer: str, idx: int) -> str | None:
        return None

    def visualization(self, layer: str, unit: int) -> str | None:
        return None

    def stored_visual(self, layer: str, unit: int, kind: str, index: int = 0, opaque: bool = False) -> str:
        flat = "_opaque" if opaque else ""
        return f"img/visual_{safe_name(layer)}_{unit}_{safe_name(kind)}{index}{flat}.png"

    def image(self, idx: int) -> str:
        return f"image_{idx}.html"

    def source_image(self, idx: int, size: int = 112) -> str:
        return f"img/source_{idx}_{size}.jpg"

    def patch(self, layer: str, unit: int) -> str:
        return f"img/patch_{safe_name(layer)}_{unit}.jpg"

    def topk(self, layer: str, unit: int, criterion: str, direction: bool = False) -> str:
        return f"img/topk_{safe_name(layer)}_{unit}_{criterion}.png"

    def rf(self, layer: str, unit: int) -> str:
        return f"img/rf_{safe_name(layer)}_{unit}.png"

    def dictionaries(self) -> str:
        return "concepts.html"

    def dictionary(self, name: str) -> str:
        return f"concepts_{safe_name(name)}.html"

    def concept(self, name: str, concept: int) -> str:
        return f"concept_{safe_name(name)}_{concept}.html"

    def concept_topk(self, name: str, concept: int, criterion: str) -> str:
        return f"img/concept_topk_{safe_name(name)}_{concept}_{safe_name(criterion)}.png"

    def concept_picture(self, name: str, concept: int) -> str:
        return f"img/concept_picture_{safe_name(name)}_{concept}.png"

    def search(self) -> str:
        return "labels.html"

    def evaluations(self) -> str:
        return "evaluations.html"

    def evaluation(self, name: str) -> str:
        return f"evaluation_{_unique_name(name)}.html"

    def evaluation_file(self, name: str, kind: str) -> str:
        from convscope.atlas.evaluations import FILES

        return f"img/evaluation_{_unique_name(name)}_{FILES[kind]}"


def _unique_name(name: str) -> str:
    """``name`` as a file name that no other name gives: :func:`safe_name` maps ``. @ + =`` to
    ``_`` (``run.1`` and ``run_1`` alike), so a short digest of the name itself follows."""
    import hashlib

    return f"{safe_name(name)}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def page(title: str, body: str, links: Links, model: str = "") -> str:
    upload = (
        ""
        if links.static
        else (
            '<form class="inline" action="/upload" method="post" enctype="multipart/form-data">'
            '<input type="file" name="file" accept="image/*" id="upload"> '
            "<button>look at my image</button></form>"
        )
    )
    # a GET form (the CSP forbids scripts); the static site cannot search: a link to its index
    search = (
        f"<a href='{links.search()}' id='labels-link'>labels</a>"
        if links.static
        else (
            f"<form class='inline' method='get' action='{links.search()}' role='search'>"
            "<input type='search' name='q' maxlength='100' size='16' placeholder='search labels' "
            "aria-label='search labels' id='search-q'> <button>search</button></form> "
        )
    )
    # an empty icon: otherwise every page asks for a /favicon.ico that is not there (a 404)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)} - convscope"
        f"</title><link rel='icon' href='data:,'><style>{CSS}</style></head><body><header>"
        f"<a href='{links.home()}'>convscope</a> <span>{escape(model)}</span> {search}{upload}</header>"
        f"<main><h1>{escape(title)}</h1>{body}</main></body></html>"
    )


def unit_name(meta: dict, layer: str, unit: int) -> str | None:
    """The model's name of a unit (a classifier's class, from the atlas: ``Subject.unit_name``)."""
    by_layer = meta.get("unit_names")
    names = by_layer.get(layer) if isinstance(by_layer, dict) else None
    if not isinstance(names, list) or not 0 <= unit < len(names):
        return None
    return names[unit] if isinstance(names[unit], str) else None


def _named(meta: dict, layer: str, unit: int) -> str:
    """`` (Egyptian cat)``, escaped, for a unit with a name; empty otherwise."""
    name = unit_name(meta, layer, unit)
    return f" ({escape(name)})" if name else ""


def _rf(row: dict) -> str:
    if row.get("rf_global"):
        return "global"
    if row.get("rf_size_y") is None:
        return "-"
    return f"{row['rf_size_y']:.0f}×{row['rf_size_x']:.0f} px / {row['rf_jump_y']:.0f}"


def model_page(
    meta: dict,
    layers: list[dict],
    dissection: dict,
    empirical: dict,
    n_images: int,
    links: Links,
    dictionaries: list[dict] | None = None,
    evaluations: list[dict] | None = None,
) -> str:
    """The home page: the scanned layers, the learned concept sets (``dictionaries``) and the
    evaluations of attribution methods (``evaluations``) if any."""
    rows = []
    for r in layers:
        d = dissection.get(r["name"], {})
        dtext = (
            "; ".join(
                f"{escape(k)}: {v['detectors']} detectors, {v['unique']} concepts" for k, v in d.items()
            )
            or "-"
        )
        e = empirical.get(r["name"])
        etext = f"{e['mean']:.0f} px ({e['units']} units)" if e else "-"
        rows.append(
            f"<tr><td><a href='{links.layer(r['name'])}'>{escape(r['name'])}</a></td>"
            f"<td>{escape(str(r['type']))}</td><td>{r['channels']}</td>"
            f"<td>{r['height']}×{r['width']}</td><td>{_rf(r)}</td><td>{etext}</td><td>{dtext}</td></tr>"
        )
    src = meta["source"].get("description", "")
    body = (
        f"<p>{n_images} images of {escape(str(src))}; {len(layers)} scanned layers.</p>"
        "<table><tr><th>layer</th><th>type</th><th>units</th><th>map</th><th>theoretical RF</th>"
        "<th>empirical RF</th><th>dissection</th></tr>" + "".join(rows) + "</table>"
    )
    if dictionaries:
        body += (
            f"<h2 id='concepts'><a href='{links.dictionaries()}'>learned concepts</a></h2>"
            + _dictionary_table(dictionaries, links)
        )
    if evaluations:
        body += (
            f"<h2 id='evaluations-title'><a href='{links.evaluations()}'>evaluations of attribution "
            "methods</a></h2>" + evaluations_table(evaluations, links)
        )
    return page(meta["model"].get("name", "model"), body, links, meta["model"].get("name", ""))


def evaluations_table(rows: list[dict], links: Links) -> str:
    """The table of stored evaluations (``rows``: ``AtlasReader.evaluations()``), on the home
    page and the evaluations' index (here, not in viewer.evaluations: that module imports this
    one)."""
    import time

    def listed(values) -> str:
        return escape(", ".join(str(v) for v in values or []))

    def when(stamp) -> str:
        if not isinstance(stamp, (int, float)):
            return "-"
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))

    return (
        "<table id='evaluations'><tr><th>evaluation</th><th>methods</th><th>metrics</th>"
        "<th>images</th><th>skipped</th><th>made</th></tr>"
        + "".join(
            f"<tr><td><a href='{links.evaluation(e['name'])}'>{escape(e['name'])}</a></td>"
            f"<td class='name'>{listed(e['methods'])}</td><td class='name'>{listed(e['metrics'])}</td>"
            f"<td>{int(e['images'] or 0)}</td><td>{int(e['skipped'] or 0)}</td>"
            f"<td>{when(e['created'])}</td></tr>"
            for e in rows
        )
        + "</table>"
    )


def _number(value, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def _dictionary_table(rows: list[dict], links: Links) -> str:
    return (
        "<table id='dictionaries'><tr><th>concept set</th><th>layer</th><th>method</th><th>concepts</th>"
        "<th>error</th><th>nonzero</th><th>dead</th><th>positions</th><th>stored</th></tr>"
        + "".join(
            f"<tr><td><a href='{links.dictionary(d['name'])}'>{escape(d['name'])}</a></td>"
            f"<td>{escape(str(d['layer']))}</td><td>{escape(str(d['method']))}</td><td>{d['n']}</td>"
            f"<td>{_number(d['error'])}</td><td>{_number(d['sparsity'], '.1%')}</td><td>{d['dead']}</td>"
            f"<td>{d['samples']}</td><td>"
            + escape(", ".join(k for k in ("scanned", "importance", "labels") if d.get(k)) or "-")
            + "</td></tr>"
            for d in rows
        )
        + "</table>"
    )


def dictionaries_page(meta: dict, rows: list[dict], links: Links) -> str:
    """The index of the learned concept sets (name, layer, method, n, error, sparsity, dead)."""
    body = (
        _dictionary_table(rows, links)
        if rows
        else "<p>This atlas holds no learned concepts yet (<code>convscope concepts</code> makes them).</p>"
    )
    return page("learned concepts", body, links, meta["model"].get("name", ""))


def dictionary_page(meta: dict, info: dict, cells: list[dict], links: Links) -> str:
    """One concept set: a cell per concept (``cells``: ``concept``, and when stored ``picture``
    (bool), ``image`` (an atlas image index for a thumbnail), ``max``, ``label``, ``detector``,
    ``iou``, ``top_class``)."""
    name = info["name"]
    out = []
    for c in cells:
        i = c["concept"]
        if c.get("picture"):
            img = f"<img loading='lazy' src='{links.concept_picture(name, i)}' alt=''>"
        elif c.get("image") is not None:
            img = f"<img loading='lazy' src='{links.source_image(c['image'])}' alt=''>"
        else:
            img = "<div style='height:112px'></div>"
        extra = f"<br><span class='tag'>max {c['max']:.3g}</span>" if c.get("max") is not None else ""
        if c.get("label"):
            cls = "det" if c.get("detector") else "tag"
            extra += f"<br><span class='{cls}'>{escape(c['label'])} {c['iou']:.2f}</span>"
        if c.get("top_class"):
            extra += f"<br><span class='tag'>class {escape(c['top_class'])}</span>"
        out.append(
            f"<div class='cell'><a href='{links.concept(name, i)}'>{img}<br>concept {i}</a>{extra}</div>"
        )
    body = (
        f"<p>{info['n']} {escape(str(info['method']))} concepts of {escape(str(info['layer']))} "
        f"({info['channels']} channels) from {info['samples']} positions: reconstruction error "
        f"{_number(info['error'])}, {_number(info['sparsity'], '.1%')} of codes nonzero, "
        f"{info['dead']} dead · <a href='{links.dictionaries()}'>all concept sets</a></p>"
        f"<div class='grid'>{''.join(out)}</div>"
    )
    return page(f"concepts {name}", body, links, meta["model"].get("name", ""))


def importance_bars(importance: dict, concept: int, top: int = 20) -> str:
    """The concept's importance for each class as a sorted bar list (the ``top`` largest by
    magnitude), bars scaled to the largest magnitude; negative values drawn in red. Classes
    without a finite value (NaN: no image of the class) are left out."""
    values = [float(v) for v in importance["matrix"][:, concept]]
    counts = list(importance["counts"])
    kept = [j for j in range(len(values)) if math.isfinite(values[j])]
    order = sorted(kept, key=lambda j: -abs(values[j]))[:top]
    order.sort(key=lambda j: -values[j])
    peak = max((abs(values[j]) for j in order), default=0.0) or 1.0
    logits = importance.get("logits")
    rows = "".join(
        f"<tr><td>{escape(str(importance['classes'][j]))}</td><td><div style='width:"
        f"{max(1, round(240 * abs(values[j]) / peak))}px;height:10px;background:"
        f"{'#3a78c2' if values[j] >= 0 else '#c23a3a'}'></div></td><td>{values[j]:.4g}</td>"
        f"<td class='tag'>{int(counts[j])} image{'' if int(counts[j]) == 1 else 's'}</td>"
        + (
            f"<td class='tag'>mean logit {float(logits[j]):.3g}</td>"
            if logits is not None and math.isfinite(float(logits[j]))
            else ""
        )
        + "</tr>"
        for j in order
    )
    grouping = GROUPING.get(importance.get("grouping"), "")
    return (
        f"<h2>importance per class</h2><p class='tag' id='grouping'>"
        f"{escape(str(importance['method']))}{escape(grouping)}</p>"
        f"<table id='importance'>{rows}</table>"
    )


# how the images behind each class's row were chosen (ConceptImportance.grouping)
GROUPING = {
    "label": "; images grouped by their labels",
    "predicted": "; images grouped by the model's prediction (its top class)",
}


def concept_page(
    meta: dict,
    info: dict,
    concept: int,
    stats: dict | None,
    label: dict | None,
    importance: dict | None,
    tops: dict[str, list[dict]],
    links: Links,
    picture: bool = False,
    live: bool = False,
) -> str:
    """One learned concept, like a unit's page: its statistics, dissection label, stored
    picture, importance per class, and per criterion its top-K images (``tops``: rows with
    ``atlas_image``, None for an image the atlas's scan does not hold) with, when ``live`` (the
    viewer has the model), the grid of their best patches and heat maps."""
    name, n = info["name"], info["n"]
    parts = []
    if stats:
        parts.append(
            f"<p>max {stats['max']:.4g}, mean {stats['mean']:.4g}, std {stats['std']:.4g}, fraction "
            f"positive {stats['frac_pos']:.3f}</p>"
        )
    nav = []
    if concept > 0:
        nav.append(f"<a href='{links.concept(name, concept - 1)}'>← concept {concept - 1}</a>")
    if concept + 1 < n:
        nav.append(f"<a href='{links.concept(name, concept + 1)}'>concept {concept + 1} →</a>")
    nav.append(f"<a href='{links.dictionary(name)}'>all concepts of {escape(name)}</a>")
    parts.append("<p>" + " · ".join(nav) + "</p>")
    if label:
        cls = "det" if label["detector"] else ""
        parts.append(
            f"<h2>dissection</h2><p id='label'><span class='{cls}'>{escape(str(label['label']))}</span> "
            f"({escape(str(label['category']))}), IoU {label['iou']:.3f}"
            f"{' — a detector' if label['detector'] else ''} on {escape(str(label['dataset']))}</p>"
        )
    if picture:
        parts.append(
            f"<h2>feature visualization</h2><img src='{links.concept_picture(name, concept)}' "
            "id='picture' alt='feature visualization'>"
        )
    if importance is not None:
        parts.append(importance_bars(importance, concept))
    if not tops:
        parts.append("<p class='tag'>no concept scan stored: no top images</p>")
    for crit, rows in tops.items():
        parts.append(f"<h2>top images by {escape(crit)}</h2>")
        if live and rows:
            parts.append(
                f"<div class='wide'><img src='{links.concept_topk(name, concept, crit)}' "
                "alt='top-k grid with heat maps'></div>"
            )
        cells = []
        for r in rows:
            caption = (
                f"<span class='name' title='{escape(r['name'])}'>{escape(r['name'])}</span>"
                f"<br><span class='tag'>{r['score']:.3g} at ({r['y']}, {r['x']})</span>"
            )
            if r.get("atlas_image") is None:
                cells.append(f"<div class='cell'>{caption}</div>")
            else:
                i = r["atlas_image"]
                cells.append(
                    f"<div class='cell'><a href='{links.image(i)}'><img loading='lazy' "
                    f"src='{links.source_image(i)}' alt=''><br>{caption}</a></div>"
                )
        parts.append(f"<div class='grid'>{''.join(cells)}</div>")
    title = f"{name} concept {concept}" + (f" ({label['label']})" if label else "")
    return page(title, "".join(parts), links, meta["model"].get("name", ""))


def layer_page(
    meta: dict,
    layer: dict,
    units: list[dict],
    total: int,
    page_no: int,
    per_page: int,
    sort: str,
    label: str | None,
    links: Links,
    visuals: dict[int, float] | None = None,
    activation_atlas: str | None = None,
) -> str:
    """``visuals``: unit -> objective of the stored positive feature visualisation, for the
    units that have one (then the grid shows them, with a toggle to the best patch or label);
    ``activation_atlas``: the link to the layer's stored activation atlas, when it has one."""
    cells = []
    for u in units:
        lab = ""
        if u.get("label"):
            cls = "det" if u.get("detector") else "tag"
            lab = f"<br><span class='{cls}'>{escape(u['label'])} {u['iou']:.2f}</span>"
        img = (
            f"<img loading='lazy' src='{links.patch(layer['name'], u['unit'])}' alt=''>"
            if u.get("image") is not None
            else "<div style='height:112px'></div>"
        )
        if visuals:
            img = f"<span class='pt'>{img}</span>"
            if u["unit"] in visuals:
                src = links.stored_visual(layer["name"], u["unit"], "positive", 0)
                img += (
                    f"<span class='fv'><img loading='lazy' src='{src}' alt='feature visualization' "
                    f"title='objective {visuals[u['unit']]:.3g}'></span>"
                )
            else:
                img += "<span class='fv'><div style='height:112px'></div></span>"
        cells.append(
            f"<div class='cell'><a href='{links.unit(layer['name'], u['unit'])}'>{img}"
            f"<br>unit {u['unit']}{_named(meta, layer['name'], u['unit'])}</a><br>"
            f"<span class='tag'>max {u['max']:.3g}</span>{lab}</div>"
        )
    pages = (total + per_page - 1) // per_page
    nav = ""
    if pages > 1:
        around = sorted({0, pages - 1, *range(max(0, page_no - 3), min(pages, page_no + 4))})
        nav = (
            "<nav class='pages'>"
            + "".join(
                f"<a href='{links.layer(layer['name'], page=p, sort=sort, label=label)}'>"
                f"{'<b>' if p == page_no else ''}{p + 1}{'</b>' if p == page_no else ''}</a>"
                for p in around
            )
            + "</nav>"
        )
    controls = (
        ""
        if links.static
        else (
            "<form method='get'>sort <select name='sort'>"
            + "".join(
                f"<option{' selected' if s == sort else ''}>{s}</option>"
                for s in ("unit", "max", "iou", "label")
            )
            + f"</select> label <input name='label' value='{escape(label or '')}' size='10'> "
            "<button>apply</button></form>"
        )
    )
    dirs = ""
    if layer.get("directions") and links.direction(layer["name"], 0):
        dirs = (
            "<p>random directions: "
            + " ".join(
                f"<a href='{links.direction(layer['name'], d)}'>d{d}</a>" for d in range(layer["directions"])
            )
            + "</p>"
        )
    show = ""
    if visuals:  # radio buttons and CSS alone: the pages run no scripts
        show = "<div class='show'>show " + "".join(
            f"<input type='radio' name='show' id='show-{key}'{' checked' if key == 'fv' else ''}>"
            f"<label for='show-{key}'>{text}</label>"
            for key, text in (("fv", "feature visualization"), ("patch", "best patch"), ("label", "label"))
        )
    if activation_atlas:
        dirs += f"<p><a href='{activation_atlas}'>activation atlas of this layer</a></p>"
    body = dirs + (
        f"<p>{escape(str(layer['type']))}, {layer['channels']} units, map {layer['height']}×"
        f"{layer['width']}, receptive field {_rf(layer)}; {total} units shown</p>{controls}{nav}"
        + show  # the toggle's radio buttons must be siblings of the grid
        + f"<div class='grid'>{''.join(cells)}</div>"
        + ("</div>" if show else "")
        + nav
    )
    return page(f"layer {layer['name']}", body, links, meta["model"].get("name", ""))


def unit_page(
    meta: dict,
    layer: dict,
    unit: dict,
    criteria: list[str],
    tops: dict[str, list[dict]],
    concepts: list[dict],
    rf: dict | None,
    links: Links,
    neighbors: list[tuple[int, float]] | None = None,
    direction: bool = False,
    shown: int | None = None,
    visuals: list[dict] | None = None,
) -> str:
    """``shown``: units with pages (a static export may hold only the first few); ``visuals``:
    the unit's stored feature visualisations (rows of ``AtlasReader.visual_rows``), shown
    instead of the link to one rendered on request."""
    name, u = layer["name"], unit["unit"]
    what = f"direction {u}" if direction else f"unit {u}"
    if not direction and unit_name(meta, name, u):
        what += f" ({unit_name(meta, name, u)})"  # page() escapes the title
    parts = [
        f"<p>max {unit['max']:.4g}, mean {unit['mean']:.4g}, std {unit['std']:.4g}, fraction "
        f"positive {unit['frac_pos']:.3f}"
        + (f", threshold {unit['threshold']:.4g}" if unit.get("threshold") is not None else "")
        + "</p>"
    ]
    nav = []
    if not direction and u > 0:
        nav.append(f"<a href='{links.unit(name, u - 1)}'>← unit {u - 1}</a>")
    limit = layer["channels"] if shown is None else min(shown, layer["channels"])
    neighbors = [(j, c) for j, c in (neighbors or []) if j < limit]
    if not direction and u + 1 < limit:
        nav.append(f"<a href='{links.unit(name, u + 1)}'>unit {u + 1} →</a>")
    nav.append(f"<a href='{links.layer(name)}'>all units of {escape(name)}</a>")
    fv = links.visualization(name, u) if not direction and not visuals else None
    if fv:
        nav.append(f"<a href='{fv}' id='fv'>feature visualization (rendered on request, ~10 s on a CPU)</a>")
    parts.append("<p>" + " · ".join(nav) + "</p>")
    if visuals and not direction:
        parts.append(_visuals(name, u, visuals, links))
    for crit in criteria:
        rows = tops.get(crit, [])
        parts.append(
            f"<h2>top images by {escape(crit)}</h2>"  # the grid at its own size: text stays readable
            f"<div class='wide'><img src='{links.topk(name, u, crit, direction)}' "
            f"alt='top-k grid'></div><div class='grid'>"
            + "".join(
                f"<div class='cell'><a href='{links.image(r['image'])}'><img loading='lazy' "
                f"src='{links.source_image(r['image'])}' alt=''><br><span class='name' "
                f"title='{escape(r['name'])}'>{escape(r['name'])}</span></a>"
                f"<br><span class='tag'>{r['score']:.3g} at ({r['y']}, {r['x']})</span></div>"
                for r in rows
            )
            + "</div>"
        )
    if neighbors:
        parts.append(
            "<h2>neighbours in weight space</h2><p>"
            + " · ".join(f"<a href='{links.unit(name, j)}'>unit {j}</a> ({c:.2f})" for j, c in neighbors)
            + "</p><p class='tag'>cosine similarity of the units' incoming weights</p>"
        )
    if concepts:
        parts.append(
            "<h2>dissection</h2><table><tr><th>concepts</th><th>concept</th><th>category</th>"
            "<th>IoU</th></tr>"
            + "".join(
                f"<tr><td>{escape(c['dataset'])}</td><td class='{'det' if c['detector'] else ''}'>"
                f"{escape(c['concept'])}</td><td>{escape(c['category'])}</td><td>{c['iou']:.3f}</td></tr>"
                for c in concepts
            )
            + "</table>"
        )
    if rf:
        parts.append(
            f"<h2>empirical receptive field</h2><p>{rf['size']:.1f} px "
            f"({rf['height']}×{rf['width']}) vs theoretical {rf['theoretical']:.0f} px, from "
            f"{rf['images']} images</p><img src='{links.rf(name, u)}' width='160' alt='average discrepancy'>"
        )
    return page(f"{name} {what}", "".join(parts), links, meta["model"].get("name", ""))


def _visuals(layer: str, unit: int, rows: list[dict], links: Links) -> str:
    """The stored feature visualisations of one unit, each with the objective it reached. RGBA
    tiles (MaCo's transparency as alpha) are shown over a checkerboard, where what fades out is
    what mattered least to the unit, with the opaque image a radio button away (CSS alone)."""
    what = {"positive": "maximised", "negative": "minimised", "diversity": "diversity"}

    def img(r: dict) -> str:
        alt = f"{escape(r['kind'])} feature visualization"
        src = links.stored_visual(layer, unit, r["kind"], r["index"])
        if not r.get("alpha"):
            return f"<img src='{src}' alt='{alt}'>"
        flat = links.stored_visual(layer, unit, r["kind"], r["index"], opaque=True)
        return (
            f"<img class='alpha' src='{src}' alt='{alt} with its transparency'>"
            f"<img class='opaque' src='{flat}' alt='{alt}, opaque'>"
        )

    cells = "".join(
        f"<div class='cell'>{img(r)}<br>{what.get(r['kind'], escape(r['kind']))}"
        + (f" {r['index'] + 1}" if r["kind"] == "diversity" else "")
        + f"<br><span class='tag'>mean activation {r['objective']:.3g}</span></div>"
        for r in rows
    )
    first = rows[0]
    note = f"{escape(str(first['param']))}, {first['steps']} steps, seed {first['seed']}: stored"
    grid = f"<div class='grid visuals' id='visuals'>{cells}</div>"
    if any(r.get("alpha") for r in rows):  # the radio buttons must be siblings of the grid
        note += "; transparency: the accumulated gradient of the objective (MaCo), faded where it is low"
        grid = (
            "<div class='show'>show <input type='radio' name='fvshow' id='fv-alpha' checked>"
            "<label for='fv-alpha'>with transparency</label>"
            "<input type='radio' name='fvshow' id='fv-opaque'><label for='fv-opaque'>opaque</label>"
            f"{grid}</div>"
        )
    return f"<h2>feature visualization</h2>{grid}<p class='tag'>{note}</p>"


def error_page(status: int, message: str, meta: dict, links: Links) -> str:
    """What the server shows for an error on an HTML page (the status code stays the same)."""
    from http import HTTPStatus

    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "error"
    body = f"<p id='error'>{escape(message)}</p><p><a href='{links.home()}'>back to the model</a></p>"
    return page(f"{status} {phrase}", body, links, meta.get("model", {}).get("name", ""))


def image_page(
    meta: dict,
    title: str,
    image_url: str,
    predictions: list[dict] | None,
    attribution_url: str | None,
    units: list[dict],
    links: Links,
    concepts: list[dict] | None = None,
) -> str:
    """``concepts``: learned concepts whose top-K list the image (``dictionary``, ``concept``,
    ``criterion``, ``rank``, ``score``), shown apart from the units."""
    parts = [f"<img class='big' src='{image_url}' alt='image' id='the-image'>"]
    if attribution_url:
        parts.append(f" <img class='big' src='{attribution_url}' alt='Grad-CAM' id='attribution'>")
    if predictions:
        parts.append(
            "<h2>predictions</h2><table id='predictions'>"
            + "".join(f"<tr><td>{escape(p['label'])}</td><td>{p['prob']:.3f}</td></tr>" for p in predictions)
            + "</table>"
        )
    if units:
        parts.append(
            "<h2>units that respond most</h2><table><tr><th>unit</th><th>activation</th>"
            "<th>of its dataset max</th></tr>"
            + "".join(
                f"<tr><td><a href='{links.unit(r['layer'], r['unit'])}'>{escape(r['layer'])}:{r['unit']}"
                f"{_named(meta, r['layer'], r['unit'])}</a></td><td>{r['score']:.3g}</td>"
                f"<td>{r.get('relative', float('nan')):.2f}</td></tr>"
                for r in units
            )
            + "</table>"
        )
    if concepts:
        parts.append(
            "<h2>learned concepts that list this image</h2><table id='image-concepts'><tr><th>concept"
            "</th><th>criterion</th><th>rank</th><th>score</th></tr>"
            + "".join(
                f"<tr><td><a href='{links.concept(c['dictionary'], c['concept'])}'>"
                f"{escape(c['dictionary'])}:{c['concept']}</a></td><td>{escape(c['criterion'])}</td>"
                f"<td>{c['rank'] + 1}</td><td>{c['score']:.3g}</td></tr>"
                for c in concepts
            )
            + "</table>"
        )
    return page(title, "".join(parts), links, meta["model"].get("name", ""))
