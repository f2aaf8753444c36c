"""Scan throughput with Ray: 2 local workers vs one process, on the same images, in one run.

    python benchmarks/scale.py [--images 512] [--model efficientnet_lite0] [--layers blocks.3,blocks.5]

The images are the bundled photos and their crops, repeated to ``--images`` through a list file.
One process: ``convscope.scan.scan`` with all threads. Ray: ``ray_scan`` with 2 actors of one
thread each (started and warmed before the clock starts, as a long-running cluster would be),
8 shards. Reports images/s of both, the speed-up, and whether the top-K lists are identical.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import convscope
from convscope.data import open_images
from convscope.samples import sample_view, sample_view_names
from convscope.scan import scan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--layers", default="blocks.3,blocks.5")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).with_name("scale.json")))
    args = ap.parse_args()
    import ray

    from convscope.scale import ray_scan

    root = Path(tempfile.mkdtemp())
    files = []
    for name in sample_view_names():
        p = root / (name.replace("/", "_") + ".png")
        sample_view(name).save(p)
        files.append(p)
    listing = root / "images.txt"
    listing.write_text("\n".join(str(files[i % len(files)]) for i in range(args.images)) + "\n")
    subject = convscope.load(args.model)
    source = open_images(listing)
    layers = args.layers.split(",")
    options = {"k": 16, "threshold_sample": 64, "batch_size": 16}
    x = torch.randn(2, 3, *subject.input_size, requires_grad=True)
    subject.model(x).sum().backward()  # warm-up
    scan(subject, source.subset(range(16)).with_transform(subject.transform), layers, **options)

    t0 = time.perf_counter()
    single = scan(subject, source.with_transform(subject.transform), layers, **options)
    t_single = time.perf_counter() - t0

    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    # warm-up: starts the workers (kept for the measured run) and runs one small pass through each
    ray_scan(subject, source, layers, workers=args.workers, n_shards=args.workers, **{**options, "k": 1})
    t0 = time.perf_counter()
    merged = ray_scan(subject, source, layers, workers=args.workers, n_shards=4 * args.workers, **options)
    t_ray = time.perf_counter() - t0
    ray.shutdown()
    same = all(merged.topk(n, u, c).images.tolist() == single.topk(n, u, c).images.tolist()
               for n in single.layers for u in range(single.channels[n]) for c in single.criteria)
    row = {"model": subject.name, "layers": layers, "images": args.images, "workers": args.workers,
           "one_process_img_s": args.images / t_single, "ray_img_s": args.images / t_ray,
           "speedup": t_single / t_ray, "identical_topk": same,
           "max_abs_stat_diff": float(max(np.abs(single.stats(n).mean - merged.stats(n).mean).max()
                                          for n in single.layers)),
           "torch_threads_one_process": torch.get_num_threads()}
    print(f"one process {row['one_process_img_s']:.1f} img/s, Ray x{args.workers} "
          f"{row['ray_img_s']:.1f} img/s -> {row['speedup']:.2f}x; identical top-K: {same}")
    Path(args.out).write_text(json.dumps(row, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
