"""``convscope export ATLAS --html OUT``: the viewer's pages as a static site (no server)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from convscope.inputs.fileio import save_image, write_text
from convscope.viewer import pages
from convscope.viewer.pictures import rf_picture, thumbnail, unit_patch
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
    ``units_per_layer`` units of each layer (with their patches and top-K grids), and a page for
    every image those units show. Returns ``out/index.html``."""
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
            meta, layers, reader.dissection_summary(), reader.empirical_summary(), reader.n_images(), links
        ),
    )
    images: set[int] = set()
    total = sum(min(units_per_layer, r["channels"]) for r in layers)
    done = 0
    report = progress or (lambda d, t: None)
    for lay in layers:
        name = lay["name"]
        info = subject.layer(name)
        shown = min(units_per_layer, lay["channels"])
        n_pages = (shown + per_page - 1) // per_page
        for p in range(n_pages):
            rows, _ = reader.units(name, p, per_page)
            rows = [r for r in rows if r["unit"] < shown]
            write_text(
                out / links.layer(name, page=p),
                pages.layer_page(meta, lay, rows, shown, p, per_page, "unit", None, links),
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
                ),
            )
            done += 1
            report(done, total)
    for idx in sorted(images):
        row = reader.image(idx)
        img = source.read(idx)
        _write(thumbnail(img, 112), out / links.source_image(idx))
        _write(thumbnail(img, 448), out / links.source_image(idx, 448))
        units = [r for r in reader.image_units(idx) if r["unit"] < units_per_layer]
        write_text(
            out / links.image(idx),
            pages.image_page(meta, row["name"], links.source_image(idx, 448), None, None, units, links),
        )
    return out / links.home()
