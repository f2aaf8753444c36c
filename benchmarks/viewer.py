"""Viewer page latency (p50 / p95) on a synthetic atlas of 100,000 images and 10,000 units.

    python benchmarks/viewer.py [--images 100000] [--layers 10] [--units 1000] [--repeat 30]

The atlas is written straight into SQLite (10 layers x 1,000 units, top-16 by max, mean and area
= 480,000 top-K rows, a concept label per unit); its 100,000 image rows point at 50 small JPEG
files through a list file. Requests go through FastAPI's TestClient (in-process, no network),
each page type ``--repeat`` times at varying units/pages after one warm-up request. The image
page (a model forward pass, predictions and unit ranking) is measured on a real atlas of
efficientnet_lite0 over the bundled photos, since it needs the model.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def build(root: Path, n_images: int, n_layers: int, units: int, k: int = 16) -> Path:
    from convscope.atlas.store import Atlas

    rng = np.random.default_rng(0)
    files = []
    for i in range(50):
        p = root / "img" / f"{i:02d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(p)
        files.append(p)
    listing = root / "images.txt"
    listing.write_text("\n".join(str(files[i % 50]) for i in range(n_images)) + "\n")
    atlas = Atlas.create(
        root / "atlas",
        {"name": "synthetic"},
        {"description": "synthetic", "source": str(listing), "images": n_images},
    )
    con = sqlite3.connect(atlas.db_path)
    con.execute("CREATE INDEX IF NOT EXISTS topk_image ON topk(image)")
    con.executemany(
        "INSERT INTO images(idx, name, label, status, reason) VALUES (?, ?, ?, 'ok', NULL)",
        ((i, f"img/{i % 50:02d}.jpg#{i}", i % 10) for i in range(n_images)),
    )
    con.execute(
        "CREATE TABLE IF NOT EXISTS unit_labels(dataset TEXT, layer TEXT, unit INTEGER, concept "
        "INTEGER, name TEXT, category TEXT, iou REAL, detector INTEGER, coverage REAL, "
        "PRIMARY KEY(dataset, layer, unit))"
    )
    names = ["red", "green", "blue", "striped", "circle", "square"]
    for li in range(n_layers):
        layer = f"layer{li}"
        con.execute(
            "INSERT INTO layers VALUES (?, ?, 'Conv2d', ?, 0, 14, 14, 67, 67, 8, 8, 3.5, 3.5, 0)",
            (layer, li, units),
        )
        con.executemany(
            "INSERT INTO units VALUES (?, 'channel', ?, ?, ?, ?, ?, ?)",
            ((layer, u, float(rng.random()), 1.0, float(rng.random() * 10), 0.5, 5.0) for u in range(units)),
        )
        rows = []
        for crit in ("max", "mean", "area"):
            imgs = rng.integers(0, n_images, (units, k))
            for u in range(units):
                rows += [
                    (layer, "channel", u, crit, r, int(imgs[u, r]), float(k - r), 3, 4) for r in range(k)
                ]
        con.executemany("INSERT INTO topk VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        con.executemany(
            "INSERT INTO unit_labels VALUES ('synthetic', ?, ?, ?, ?, 'color', ?, ?, 0.005)",
            (
                (layer, u, u % 6, names[u % 6], float(rng.random() * 0.2), int(u % 3 == 0))
                for u in range(units)
            ),
        )
    con.commit()
    con.close()
    return atlas.path


def measure(client, urls: list[str]) -> dict:
    client.get(urls[0])  # warm-up
    times = []
    for url in urls:
        t0 = time.perf_counter()
        r = client.get(url)
        times.append(time.perf_counter() - t0)
        assert r.status_code == 200, (url, r.status_code)
    t = np.array(times) * 1000
    return {"p50_ms": float(np.percentile(t, 50)), "p95_ms": float(np.percentile(t, 95)), "n": len(t)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--units", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--out", default=str(Path(__file__).with_name("viewer.json")))
    args = ap.parse_args()
    from fastapi.testclient import TestClient

    from convscope.viewer.app import create_app

    root = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    atlas = build(root, args.images, args.layers, args.units)
    built = time.perf_counter() - t0
    client = TestClient(create_app(atlas), base_url="http://127.0.0.1")  # a name the viewer answers
    rng = np.random.default_rng(1)
    n = args.repeat
    L = args.layers
    U = args.units
    pages = {
        "model": ["/"] * n,
        "layer (page of 100, by unit)": [f"/layer/layer{i % L}?page={i % 10}" for i in range(n)],
        "layer (sorted by IoU)": [f"/layer/layer{i % L}?sort=iou&page={i % 10}" for i in range(n)],
        "layer (label filter)": [f"/layer/layer{i % L}?label=stri&page={i % 3}" for i in range(n)],
        "unit": [f"/unit/layer{i % L}/{int(rng.integers(U))}" for i in range(n)],
        "api unit (JSON)": [f"/api/unit/layer{i % L}/{int(rng.integers(U))}" for i in range(n)],
        "image thumbnail (cold)": [f"/img/source/{int(rng.integers(args.images))}" for i in range(n)],
    }
    rows = {name: measure(client, urls) for name, urls in pages.items()}
    warm = pages["image thumbnail (cold)"]
    rows["image thumbnail (cached)"] = measure(client, warm)

    # the image page needs the model: a real atlas of efficientnet_lite0 over the bundled photos
    from convscope.cli.main import main as cli

    real = root / "real"
    cli(
        [
            "scan",
            "--data",
            "convscope:samples",
            "--layers",
            "blocks.2,blocks.4,classifier",
            "--k",
            "4",
            "--threshold-sample",
            "8",
            "--out",
            str(real),
        ]
    )
    rc = TestClient(create_app(real), base_url="http://127.0.0.1")
    rows["image page (model forward, real atlas)"] = measure(rc, [f"/image/{i % 100}" for i in range(n)])
    for name, r in rows.items():
        print(f"{name:>40}: p50 {r['p50_ms']:7.1f} ms   p95 {r['p95_ms']:7.1f} ms")
    result = {"images": args.images, "units": L * U, "topk_rows": L * U * 48, "build_s": built, "pages": rows}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
