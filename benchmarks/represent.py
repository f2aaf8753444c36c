"""Representation throughput, in one run:

* feature extraction images/s (efficientnet_lite0, GAP of three stages, in memory) as a ratio to
  the bare forward pass of the same model and batch on the same images;
* nearest-neighbour queries/s on random 128-d vectors (1M by default) with FAISS exact, IVF and
  HNSW indexes, and the recall@10 of the approximate ones against exact search.

    python benchmarks/represent.py [--vectors 1000000] [--queries 1000] [--images 256]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import convscope
from convscope.inputs.sources import open_images
from convscope.represent import NeighborIndex, extract_features


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(Path(__file__).with_name("represent.json")))
    args = ap.parse_args()

    s = convscope.load(device=args.device)
    x = torch.randn(2, 3, 224, 224, device=s.device, requires_grad=True)
    s.model(x).sum().backward()  # warm-up: forwards run slower before one backward pass here
    src = open_images("convscope:samples", transform=s.transform)
    src = src.subset([i % len(src) for i in range(args.images)])
    layers = [i.name for i in s.layers.stages()][-3:]
    extract_features(s, src.subset(range(8)), layers, batch_size=8)
    batches = [
        torch.stack([src[j][0] for j in range(i, min(len(src), i + args.batch_size))])
        for i in range(0, len(src), args.batch_size)
    ]
    with torch.inference_mode():
        t0 = time.perf_counter()
        for b in batches:
            s.model(b.to(s.device))
        t_bare = time.perf_counter() - t0
    t0 = time.perf_counter()
    extract_features(s, src, layers, batch_size=args.batch_size)
    t_feat = time.perf_counter() - t0
    feat = {
        "layers": layers,
        "images": len(src),
        "batch_size": args.batch_size,
        "bare_forward_img_s": len(src) / t_bare,
        "features_img_s": len(src) / t_feat,
        "ratio_to_bare_forward": t_bare / t_feat,
    }
    print(
        f"features: {feat['features_img_s']:.1f} img/s vs bare forward {feat['bare_forward_img_s']:.1f}"
        f" img/s -> {feat['ratio_to_bare_forward']:.2f}x (includes decoding; bare forward does not)"
    )

    rng = np.random.default_rng(0)
    db = rng.normal(size=(args.vectors, 128)).astype(np.float32)
    q = db[rng.choice(len(db), args.queries, replace=False)] + 0.05 * rng.normal(
        size=(args.queries, 128)
    ).astype(np.float32)
    rows, exact = [], None
    for kind in ("exact", "ivf", "hnsw"):
        t0 = time.perf_counter()
        index = NeighborIndex(db, "l2", kind, nprobe=16)
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, idx = index.search(q, 10)
        t_q = time.perf_counter() - t0
        if kind == "exact":
            exact = idx
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, exact)]))
        rows.append(
            {"index": kind, "build_s": t_build, "queries_per_s": args.queries / t_q, "recall_at_10": recall}
        )
        print(
            f"{kind:>6}: build {t_build:6.1f} s, {args.queries / t_q:9.1f} queries/s, recall@10 {recall:.3f}"
        )
    result = {
        "device": str(s.device),
        "torch_threads": torch.get_num_threads(),
        "features": feat,
        "neighbors": {"vectors": args.vectors, "dims": 128, "queries": args.queries, "rows": rows},
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
