"""The viewer's activation-atlas page of a layer (Carter et al. 2019), shared by the server and
the static export: the stored tiles on a zoomable, scrollable canvas, and per drawn cell a
panel with its count, top class and the patches of its most typical vectors. The page has no
script (the viewer's content security policy forbids them): zoom is a CSS radio toggle, panning
is the canvas's scroll bars, a cell opens its panel as the URL fragment's ``:target``. Tiles are
read as stored; a patch is a crop of an atlas image, as the unit pages' patches are."""

from __future__ import annotations

from html import escape
from urllib.parse import quote

from convscope.viewer.pages import Links, page, safe_name

ZOOMS = (1, 2, 4, 8)  # the canvas's widths: this many times the grid's side at its tile size


def page_url(links: Links, layer: str) -> str:
    """The activation-atlas page of ``layer``."""
    if links.static:
        return f"activation_atlas_{safe_name(layer)}.html"
    return f"/activation-atlas/{quote(layer, safe='')}"


def tile_url(links: Links, layer: str, cell: int) -> str:
    """The stored tile PNG of one drawn cell."""
    if links.static:
        return f"img/activation_atlas_{safe_name(layer)}_{int(cell)}.png"
    return f"/img/activation-atlas/{quote(layer, safe='')}/tile/{int(cell)}"


def patch_url(links: Links, layer: str, cell: int, k: int) -> str:
    """The JPEG patch of a cell's ``k``-th most typical vector."""
    if links.static:
        return f"img/activation_atlas_{safe_name(layer)}_{int(cell)}_{int(k)}.jpg"
    return f"/img/activation-atlas/{quote(layer, safe='')}/patch/{int(cell)}/{int(k)}"


def same_images(reader, layer: str) -> bool:
    """Whether ``layer``'s activation atlas was built on the atlas's own images (then its
    typical vectors' image numbers are the atlas's, and their patches can be shown)."""
    settings = reader.atlas.activation_atlas_settings(layer) or {}
    return settings.get("data") == reader.atlas.source_spec


def cell_patch(subject, source, info, where) -> bytes:
    """The JPEG patch of one typical vector ``where`` = (image, y, x): the image cropped to the
    receptive field of that position, as a unit's best patch."""
    from convscope.viewer.pictures import unit_patch

    image, y, x = (int(v) for v in where)
    return unit_patch(subject, source, info, {"image": image, "y": y, "x": x})


STYLE = """
.aa-zoom{margin:6px 0}.aa-zoom label{margin-right:10px}
.aa-view{overflow:auto;width:fit-content;max-width:100%;max-height:78vh;border:1px solid #ccc;
background:#fff}
.aa-canvas{position:relative}
.aa-canvas a{position:absolute;display:block;box-sizing:border-box}
.aa-canvas a img{width:100%;height:100%;display:block;image-rendering:auto}
.aa-canvas a:hover,.aa-canvas a:focus{outline:2px solid #e33;z-index:2}
.aa-panel{display:none;position:fixed;right:12px;top:60px;width:300px;max-height:85vh;overflow:auto;
background:#fff;border:1px solid #888;box-shadow:0 2px 10px #0004;padding:8px;z-index:5}
.aa-panel:target{display:block}.aa-panel img.tile{width:100%}
.aa-panel .patches img{width:88px;height:88px;object-fit:contain;background:#eee;margin:2px}
"""


def activation_atlas_page(
    meta: dict, summary: dict, cells: list[dict], links: Links, patches: bool, layer_link: str | None = None
) -> str:
    """The page of one layer's activation atlas (``summary``: ``AtlasReader.activation_atlas``;
    ``cells``: its drawn cells; ``patches``: whether the typical vectors' patches are shown)."""
    layer, grid, tile = summary["layer"], int(summary["grid"]), int(summary["tile"] or 64)
    info = summary.get("info") or {}
    radios, rules = [], []
    for z in ZOOMS:
        checked = " checked" if z == 2 else ""
        radios.append(
            f"<input type='radio' name='aa-zoom' id='aa-z{z}'{checked}><label for='aa-z{z}'>{z}x</label>"
        )
        side = grid * tile * z // 2
        rules.append(f"#aa-z{z}:checked~.aa-view .aa-canvas{{width:{side}px;height:{side}px}}")
    tiles = []
    for c in cells:
        left, top, side = 100 * c["col"] / grid, 100 * c["row"] / grid, 100 / grid
        title = f"{c['count']} vectors; {c['top_label'] or '?'} {c['top_share']:.0%}"
        place = f"left:{left:.4f}%;top:{top:.4f}%;width:{side:.4f}%;height:{side:.4f}%"
        src = tile_url(links, layer, c["cell"])
        tiles.append(
            f"<a href='#cell{c['cell']}' style='{place}' title='{escape(title)}'>"
            f"<img loading='lazy' src='{src}' alt=''></a>"
        )
    panels = []
    for c in cells:
        shown = ""
        if patches and c["typical"]:
            imgs = []
            for k, t in enumerate(c["typical"]):
                what = f"image {int(t[0])} at ({int(t[1])}, {int(t[2])})"
                src = patch_url(links, layer, c["cell"], k)
                imgs.append(
                    f"<a href='{links.image(int(t[0]))}'><img loading='lazy' src='{src}' alt='{what}' "
                    f"title='{what}'></a>"
                )
            shown = f"<div class='patches'>{''.join(imgs)}</div>"
        elif c["typical"]:
            shown = "<p class='tag'>the atlas was built on other images than the atlas's: no patches</p>"
        panels.append(
            f"<div class='aa-panel' id='cell{c['cell']}'><a href='#'>close</a>"
            f"<h3>cell {c['cell']} (row {c['row']}, column {c['col']})</h3>"
            f"<img class='tile' src='{tile_url(links, layer, c['cell'])}' alt='feature visualisation'>"
            f"<table><tr><td>vectors</td><td>{int(c['count'])}</td></tr>"
            f"<tr><td>top class</td><td>{escape(c['top_label'] or '-')} ({c['top_share']:.0%})</td></tr>"
            f"<tr><td>mean vector norm</td><td>{c['norm']:.4g}</td></tr>"
            f"<tr><td>objective</td><td>{c['score']:.4g}</td></tr></table>"
            f"<h4>most typical vectors</h4>{shown}</div>"
        )
    about = (
        f"<p>{len(cells)} of {grid}x{grid} cells drawn from {int(summary['samples'])} activation vectors of "
        f"{int(summary['images'] or 0)} images ({escape(str(summary['layout']))} layout, at least "
        f"{escape(str(info.get('min_count', '?')))} vectors a cell); top class: "
        f"{escape(str(info.get('class_rule', '')))}. Click a tile for its panel; zoom:</p>"
    )
    back = f"<p><a href='{layer_link}'>layer {escape(layer)}</a></p>" if layer_link else ""
    body = (
        f"<style>{STYLE}{''.join(rules)}</style>{back}{about}"
        f"<div class='aa-zoom'>{''.join(radios)}"
        f"<div class='aa-view'><div class='aa-canvas'>{''.join(tiles)}</div></div></div>"
        f"{''.join(panels)}"
    )
    return page(f"activation atlas of {layer}", body, links, meta["model"].get("name", ""))


def export_activation_atlases(reader, subject, source, out, meta: dict, links) -> set[int]:
    """The static export's activation-atlas pages (one per stored layer) with their tiles
    copied (symlinks never followed) and their typical vectors' patches cropped; returns the
    atlas images those patches link to (the export writes their pages)."""
    from convscope.inputs.fileio import write_text

    images: set[int] = set()
    for row in reader.activation_atlases():
        layer = row["layer"]
        summary, cells = reader.activation_atlas(layer), reader.activation_atlas_cells(layer)
        for c in cells:
            path = reader.activation_atlas_file(layer, "tile", c["cell"])
            if path is not None:
                target = out / tile_url(links, layer, c["cell"])
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(path.read_bytes())
        patches = same_images(reader, layer)
        if patches:
            info = subject.layer(layer)
            for c in cells:
                for k, where in enumerate(c["typical"]):
                    target = out / patch_url(links, layer, c["cell"], k)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(cell_patch(subject, source, info, where))
                    images.add(int(where[0]))
        layers = {r["name"] for r in reader.layers()}
        back = links.layer(layer) if layer in layers else None
        write_text(
            out / page_url(links, layer), activation_atlas_page(meta, summary, cells, links, patches, back)
        )
    return images
