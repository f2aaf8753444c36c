from __future__ import annotations

from PIL import Image, ImageDraw

from convscope.render.represent import neighbors_grid


def test_neighbour_captions_are_wrapped_not_cut(monkeypatch):
    drawn = []
    real = ImageDraw.ImageDraw.text

    def record(self, xy, text, *a, **kw):
        drawn.append((xy, text))
        return real(self, xy, text, *a, **kw)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", record)
    captions = ["0.912 n02124075_Egyptian_cat", "0.873 n02124075_Egyptian_cat_kitten", "0.5 espresso"]
    tiles = [Image.new("RGB", (64, 48), c) for c in ("red", "green", "blue")]
    grid = neighbors_grid(Image.new("RGB", (50, 50), "grey"), tiles, captions, cell=112)
    for k, caption in enumerate(captions, start=1):  # tile k's lines, top to bottom
        x = 4 + k * (112 + 4)
        lines = [t for (tx, ty), t in sorted(drawn, key=lambda d: d[0][1]) if tx == x]
        assert "".join(lines).replace(" ", "") == caption.replace(" ", "")  # nothing cut
        assert all(len(line) <= 112 // 6 for line in lines)  # each line fits under its tile
    assert max(ty for (_, ty), _ in drawn) + 11 <= grid.height  # the last line fits in the picture
