"""Throughput of the microscope's feature-visualisation stage against its batch: image-steps per
second (units x slots x steps / s) of :func:`~convscope.synthesis.layer_visuals.visualize_layer`
at each batch, per layer, on this machine's device (where more images per optimisation stop
paying is where ``batch=None`` caps the batch on a CPU).

    python benchmarks/visuals_batch.py [--layers blocks.1,blocks.4,bn2] [--batches 1,2,4,8,16,32,64]
        [--steps 6] [--size 128] [--repeats 2] [--device cpu]

Each point: positive images of ``batch`` units in one optimisation (fft, the stage's default
transforms, the forward pass stopped at the layer), the best of ``repeats`` rounds over all the
batches after one warm-up, so that a busy machine's slow spells count less and hit every batch.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import convscope
from convscope.synthesis.layer_visuals import visualize_layer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="blocks.1,blocks.4,bn2")
    ap.add_argument("--batches", default="1,2,4,8,16,32,64")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(Path(__file__).with_name("visuals_batch.json")))
    args = ap.parse_args()
    subject = convscope.load("efficientnet_lite0", device=args.device)
    batches = [int(b) for b in args.batches.split(",")]
    rows = []

    def run(layer, b):
        n = subject.layer(layer).units
        units = [u % n for u in range(b)]
        t = time.perf_counter()
        visualize_layer(subject, layer, units, kinds=("positive",), steps=args.steps, size=args.size, batch=b)
        if subject.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    for layer in args.layers.split(","):
        run(layer, 2)  # warm-up
        best = {}
        for _ in range(args.repeats):  # rounds over every batch: a load swing hits them all alike
            for b in batches:
                best[b] = min(best.get(b, float("inf")), run(layer, b))
        for b in batches:
            rate = b * args.steps / best[b]
            rows.append({"layer": layer, "batch": b, "seconds": best[b], "image_steps_per_s": rate})
            print(f"{layer:10s} batch {b:4d}: {rate:7.1f} image-steps/s", flush=True)
    info = {
        "machine": platform.platform(),
        "threads": torch.get_num_threads(),
        "device": args.device,
        "steps": args.steps,
        "size": args.size,
        "repeats": args.repeats,
    }
    Path(args.out).write_text(json.dumps({"settings": info, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
