"""A small synthetic Broden-format dataset with planted concepts: coloured shapes (circle,
square, triangle; red, green, blue, yellow) on striped or noisy backgrounds, with pixel-level
``color`` and ``object`` segmentations and an image-level ``texture`` label. For tests, the demo
and benchmarks; every image is reproducible from the seed."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLORS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 210, 30)}
SHAPES = ("circle", "square", "triangle")
TEXTURES = ("striped", "noisy")


def make_synthetic_broden(
    root: str | Path, n: int = 64, size: int = 112, seg: int = 56, seed: int = 0
) -> Path:
    """Write ``n`` images of ``size`` px with ``seg`` px segmentations into ``root``."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    concepts = (
        [(name, "color") for name in COLORS]
        + [(s, "object") for s in SHAPES]
        + [(t, "texture") for t in TEXTURES]
    )
    number = {name: i + 1 for i, (name, _) in enumerate(concepts)}
    with open(root / "label.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        w.writerow([0, "-", "", 0, 0, ""])
        for name, cat in concepts:
            w.writerow([number[name], name, cat, 0, 0, ""])
    rows = []
    for i in range(n):
        texture = TEXTURES[i % 2]
        if texture == "striped":
            base = np.zeros((size, size, 3), dtype=np.uint8)
            period = int(rng.integers(6, 12))
            base[(np.arange(size) // (period // 2)) % 2 == 0] = 200
            base[(np.arange(size) // (period // 2)) % 2 == 1] = 90
        else:
            base = (rng.random((size, size, 3)) * 100 + 80).astype(np.uint8)
        img = Image.fromarray(base)
        color_seg = Image.new("L", (size, size), 0)
        shape_seg = Image.new("L", (size, size), 0)
        for _ in range(int(rng.integers(1, 3))):
            cname = list(COLORS)[int(rng.integers(len(COLORS)))]
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            r = int(rng.integers(size // 8, size // 4))
            cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
            box = [cx - r, cy - r, cx + r, cy + r]
            for draw, val in (
                (ImageDraw.Draw(img), COLORS[cname]),
                (ImageDraw.Draw(color_seg), number[cname]),
                (ImageDraw.Draw(shape_seg), number[shape]),
            ):
                if shape == "circle":
                    draw.ellipse(box, fill=val)
                elif shape == "square":
                    draw.rectangle(box, fill=val)
                else:
                    draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=val)
        name = f"{i:05d}.jpg"
        img.save(root / "images" / name, quality=95)
        files = {}
        for cat, segimg in (("color", color_seg), ("object", shape_seg)):
            lab = np.asarray(segimg.resize((seg, seg), Image.NEAREST), dtype=np.int64)
            rgb = np.stack([lab % 256, lab // 256, np.zeros_like(lab)], axis=-1).astype(np.uint8)
            files[cat] = f"{i:05d}_{cat}.png"
            Image.fromarray(rgb).save(root / "images" / files[cat])
        rows.append(
            {
                "image": name,
                "split": "train",
                "ih": size,
                "iw": size,
                "sh": seg,
                "sw": seg,
                "color": files["color"],
                "object": files["object"],
                "part": "",
                "material": "",
                "scene": "",
                "texture": str(number[texture]),
            }
        )
    with open(root / "index.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root
