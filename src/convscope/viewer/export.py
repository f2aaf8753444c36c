"""``convscope export ATLAS --html OUT``: the viewer's pages as a static site (no server)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from convscope.inputs.fileio import save_image, write_text
from convscope.viewer import activation_atlas as aa
from convscope.viewer import pages, search
from convscope.viewer.concepts import concept_cells, concept_view
from convscope.viewer.evaluations import evaluation_page, evaluation_view, evaluations_page
from convscope.viewer.pictures import concept_topk, opaque, rf_picture, thumbnail, unit_patch
from convscope.viewer.state import open_reader, reopen_atlas
from convscope.viewer.weights import weight_neighbors


def _write(data: bytes, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def export_html(
    atlas: str | Path,
    out: str | Path,
    units_per_layer: int = 64,
    per_page: int = 100,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``index.html``, paginated layer pages, unit pages for the first
    ``units_per_layer`` units of each layer (with their patches and top-K grids), the pages of
    the learned concept sets (:func:`export_concepts`), the evaluations of attribution methods
    (:func:`export_evaluations`), the activation atlases, and a page for every image those
    units, concepts and activation-atlas cells show.
    Returns ``out/index.html``."""
    from convscope.scan.patches import render_topk

    out = Path(out)
    reader = open_reader(atlas)
    meta = reader.meta()
    links = pages.StaticLinks()
    subject, source = reopen_atlas(reader)
    layers = reader.layers()
    write_text(
        out / links.home(),
        pages.model_page(
            meta,
            layers,
            reader.dissection_summary(),
            reader.empirical_summary(),
            reader.n_images(),
            links,
            reader.dictionaries(),
            reader.evaluations(),
        ),
    )
    images: set[int] = set()
    total = sum(min(units_per_layer, r["channels"]) for r in layers)
    done = 0
    report = progress or (lambda d, t: None)
    atlases = {a["layer"] for a in reader.activation_atlases()}
    for lay in layers:
        name = lay["name"]
        link = aa.page_url(links, name) if name in atlases else None  # its activation atlas
        info = subject.layer(name)
        shown = min(units_per_layer, lay["channels"])
        n_pages = (shown + per_page - 1) // per_page
        visuals = {u: v for u, v in reader.visual_objectives(name).items() if u < shown}
        for p in range(n_pages):
            rows, _ = reader.units(name, p, per_page)
            rows = [r for r in rows if r["unit"] < shown]
            write_text(
                out / links.layer(name, page=p),
                pages.layer_page(
                    meta, lay, rows, shown, p, per_page, "unit", None, links, visuals, activation_atlas=link
                ),
            )
        crits = reader.criteria(name)
        for u in range(shown):
            row = reader.unit(name, u)
            tops = {c: reader.topk(name, u, c) for c in crits}
            if tops.get("max"):
                _write(unit_patch(subject, source, info, tops["max"][0]), out / links.patch(name, u))
            for c, rows in tops.items():
                images.update(r["image"] for r in rows)
                if rows:
                    save_image(
                        render_topk(subject, source, reader.unit_topk(name, u, c), cell=96),
                        out / links.topk(name, u, c),
                    )
            rf = reader.empirical_rf(name, u)
            if rf is not None:
                save_image(rf_picture(rf), out / links.rf(name, u))
            stored = _copy_visuals(reader, name, u, out, links)
            write_text(
                out / links.unit(name, u),
                pages.unit_page(
                    meta,
                    lay,
                    row,
                    crits,
                    tops,
                    reader.concepts(name, u),
                    rf,
                    links,
                    weight_neighbors(subject, name, u),
                    shown=shown,
                    visuals=stored,
                ),
            )
            done += 1
            report(done, total)
    exported = {(r["name"], u) for r in layers for u in range(min(units_per_layer, r["channels"]))}
    labels = search.labels_page(meta, reader.all_labels(), links, lambda lay, u: (lay, u) in exported)
    write_text(out / links.search(), labels)
    images |= export_concepts(reader, subject, source, out, meta, links)
    export_evaluations(reader, out, meta, links)
    images |= aa.export_activation_atlases(reader, subject, source, out, meta, links)
    for idx in sorted(images):
        row = reader.image(idx)
        img = source.read(idx)
        _write(thumbnail(img, 112), out / links.source_image(idx))
        _write(thumbnail(img, 448), out / links.source_image(idx, 448))
        units = [r for r in reader.image_units(idx) if r["unit"] < units_per_layer]
        write_text(
            out / links.image(idx),
            pages.image_page(
                meta,
                row["name"],
                links.source_image(idx, 448),
                None,
                None,
                units,
                links,
                reader.image_concepts(idx),
            ),
        )
    return out / links.home()


def _copy_visuals(reader, layer: str, unit: int, out: Path, links: pages.StaticLinks) -> list[dict]:
    """Copy the stored feature visualisations of one unit (symlinks never followed); returns the
    rows whose tile was copied."""
    rows = []
    for row in reader.visual_rows(layer, unit):
        path = reader.visual_tile(layer, unit, row["kind"], row["index"])
        if path is not None:
            data = path.read_bytes()
            _write(data, out / links.stored_visual(layer, unit, row["kind"], row["index"]))
            if row.get("alpha"):  # the unit page offers the opaque image too
                _write(opaque(data), out / links.stored_visual(layer, unit, row["kind"], row["index"], True))
            rows.append(row)
    return rows


def export_concepts(reader, subject, source, out: Path, meta: dict, links: pages.StaticLinks) -> set[int]:
    """The pages of the atlas's learned concept sets (index, one page per set and per concept,
    stored pictures copied, top-K grids with heat maps where the hits are the atlas's images);
    returns the atlas images those pages show."""
    rows = reader.dictionaries()
    if not rows:
        return set()
    write_text(out / links.dictionaries(), pages.dictionaries_page(meta, rows, links))
    images: set[int] = set()
    for info in rows:
        name = info["name"]
        cells = concept_cells(reader, info)
        write_text(out / links.dictionary(name), pages.dictionary_page(meta, info, cells, links))
        concepts = None
        for c in range(info["n"]):
            v = concept_view(reader, name, c)
            picture = reader.dictionary_picture(name, c)
            if picture is not None:
                _write(picture.read_bytes(), out / links.concept_picture(name, c))
            for crit, tops in v["tops"].items():
                images.update(r["atlas_image"] for r in tops if r["atlas_image"] is not None)
                if tops and v["atlas_hits"]:
                    concepts = concepts or reader.dictionary_set(name)
                    top = reader.dictionary_unit_topk(name, c, crit)
                    save_image(
                        concept_topk(subject, source, concepts, top), out / links.concept_topk(name, c, crit)
                    )
            write_text(
                out / links.concept(name, c),
                pages.concept_page(
                    meta,
                    info,
                    c,
                    v["stats"],
                    v["label"],
                    v["importance"],
                    v["tops"],
                    links,
                    picture=v["picture"],
                    live=v["atlas_hits"],
                ),
            )
    return images


def export_evaluations(reader, out: Path, meta: dict, links: pages.StaticLinks) -> int:
    """The pages of the atlas's evaluations of attribution methods (the index and one page per
    evaluation) with their stored ranked plot and tables copied (symlinks never followed);
    returns how many evaluations were written."""
    rows = reader.evaluations()
    if not rows:
        return 0
    write_text(out / links.evaluations(), evaluations_page(meta, rows, links))
    for row in rows:
        name = row["name"]
        info, report, files = evaluation_view(reader, name)
        for kind, path in files.items():
            if path is not None:
                _write(path.read_bytes(), out / links.evaluation_file(name, kind))
        write_text(out / links.evaluation(name), evaluation_page(meta, info, report, files, links))
    return len(rows)
