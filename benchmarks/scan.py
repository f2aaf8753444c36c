"""Scan throughput as a ratio to the bare forward pass, and scan memory at two dataset sizes.

    python benchmarks/scan.py [--device cpu] [--batch-size 32] [--repeats 5] [--out scan.json]

What is measured, in one run on one device (absolute times drift 15-30% between runs on
shared machines, so only ratios of interleaved measurements are reported):

- ``bare``: images/s of ``model(x)`` on preloaded batches (inference mode), the physical
  reference of DESIGN.md;
- ``scan_hot``: images/s of the scan's hot path on the same batches: truncated forward with
  the recorder, all criteria (max, mean, area) and per-unit statistics folded into the
  device-side state, 4 layers, K = 16;
- ``scan_end_to_end``: images/s of ``convscope.scan.scan`` over a generated dataset (includes
  the calibration sample for `area` thresholds and the data path), divided by ``bare``;
- ``peak_rss_mb`` of a fresh process scanning 256 and 1024 images (must not grow with size).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import convscope
from convscope.accel import Accel, prepared
from convscope.inputs.images import ImageRecord
from convscope.inputs.sources import ImageSource
from convscope.scan import scan
from convscope.scan.scanner import _Engine
from convscope.scan.state import LayerState

LAYERS = ["blocks.1", "blocks.3", "blocks.5", "bn2"]
K = 16
ACCEL = Accel()  # set from --precision / --channels-last


class GeneratedSource(ImageSource):
    """``n`` random images made on the fly from their index (constant memory)."""

    def __init__(self, n: int, size=(224, 224)):
        super().__init__(
            [ImageRecord(i, f"gen/{i:06d}") for i in range(n)],
            [],
            None,
            f"generated {n}",
            transform=lambda img: img,
        )
        self.size = size

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return torch.randn(3, *self.size, generator=g), i, None


def warm_up(subject, x):
    # Forwards run ~30% slower until one backward pass has run (allocator/threads settle).
    x = x[:4].clone().requires_grad_(True)
    subject.model(x).sum().backward()
    subject.model.zero_grad(set_to_none=True)
    with torch.inference_mode():
        for _ in range(2):
            subject.model(x.detach())


def time_bare(subject, batches):
    dev = subject.device
    t0 = time.perf_counter()
    with prepared(subject.model, ACCEL, dev), torch.inference_mode(), ACCEL.autocast(dev):
        for x in batches:
            subject.model(ACCEL.inputs(x, dev))
    if subject.device.type == "cuda":
        torch.cuda.synchronize()
    return sum(len(x) for x in batches) / (time.perf_counter() - t0)


def time_scan_hot(subject, batches, thresholds):
    states = {
        n: LayerState.empty(
            subject.layer(n).units, subject.layer(n).shape[1:], K, ("max", "mean", "area"), subject.device
        )
        for n in LAYERS
    }
    for n in LAYERS:
        states[n].thresholds = thresholds[n]
    t0 = time.perf_counter()
    with _Engine(subject, LAYERS, {}, ACCEL) as engine:
        start = 0
        for x in batches:
            engine.scan(x, torch.arange(start, start + len(x)), states)
            start += len(x)
    if subject.device.type == "cuda":
        torch.cuda.synchronize()
    return sum(len(x) for x in batches) / (time.perf_counter() - t0)


def memory_child(n: int, batch_size: int, device: str) -> None:
    subject = convscope.load(device=device)
    res = scan(subject, GeneratedSource(n), LAYERS, k=K, batch_size=batch_size, threshold_sample=64)
    state_bytes = sum(
        t.numel() * t.element_size()
        for s in res.states.values()
        for top in s.topk.values()
        for t in (top.scores, top.images, top.positions)
    )
    print(
        json.dumps(
            {
                "images": n,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "state_mb": state_bytes / 2**20,
                "images_per_s": res.images_per_second,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--precision", default="fp32", help="fp32, bf16 or fp16 (bare and scan alike)")
    ap.add_argument("--channels-last", action="store_true", default=None)
    ap.add_argument("--out", default=str(Path(__file__).with_name("scan.json")))
    ap.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global ACCEL
    ACCEL = Accel(precision=args.precision, channels_last=args.channels_last)
    if args.memory_child:
        memory_child(args.memory_child, args.batch_size, args.device)
        return

    subject = convscope.load(device=args.device)
    gen = torch.Generator().manual_seed(0)
    batches = [
        torch.randn(args.batch_size, 3, 224, 224, generator=gen).to(subject.device)
        for _ in range(args.batches)
    ]
    warm_up(subject, batches[0])
    calib = scan(subject, GeneratedSource(64), LAYERS, k=K, batch_size=args.batch_size, threshold_sample=64)
    thresholds = {n: t.to(subject.device) for n, t in calib.thresholds.items()}
    time_scan_hot(subject, batches[:1], thresholds)  # warm the scan path too

    bare, hot = [], []
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        bare.append(time_bare(subject, batches))
        hot.append(time_scan_hot(subject, batches, thresholds))
    ratios = [h / b for h, b in zip(hot, bare)]
    n_e2e = args.batch_size * args.batches * 2
    e2e = scan(
        subject,
        GeneratedSource(n_e2e),
        LAYERS,
        k=K,
        batch_size=args.batch_size,
        threshold_sample=args.batch_size,
        accel=ACCEL,
    )
    bare_after = time_bare(subject, batches)

    memory = []
    for n in (256, 1024):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--memory-child",
                str(n),
                "--device",
                args.device,
                "--batch-size",
                str(args.batch_size),
                "--threads",
                str(args.threads or torch.get_num_threads()),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        memory.append(json.loads(out.stdout.strip().splitlines()[-1]))

    result = {
        "benchmark": "scan",
        "model": "efficientnet_lite0",
        "input": "224x224",
        "layers": LAYERS,
        "k": K,
        "criteria": ["max", "mean", "area"],
        "batch_size": args.batch_size,
        "device": str(subject.device),
        "threads": torch.get_num_threads(),
        "precision": ACCEL.precision,
        "channels_last": ACCEL.layout(subject.device),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "bare_images_per_s": statistics.median(bare),
        "scan_hot_images_per_s": statistics.median(hot),
        "ratio_scan_hot_to_bare": statistics.median(ratios),
        "ratios_per_repeat": ratios,
        "scan_end_to_end_images": n_e2e,
        "scan_end_to_end_images_per_s": e2e.images_per_second,
        "ratio_end_to_end_to_bare": e2e.images_per_second / statistics.median(bare + [bare_after]),
        "memory": memory,
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"bare forward        {result['bare_images_per_s']:8.1f} img/s")
    print(
        f"scan (hot path)     {result['scan_hot_images_per_s']:8.1f} img/s   "
        f"ratio {result['ratio_scan_hot_to_bare']:.3f}  (per repeat: "
        + ", ".join(f"{r:.3f}" for r in ratios)
        + ")"
    )
    print(
        f"scan (end to end)   {result['scan_end_to_end_images_per_s']:8.1f} img/s   "
        f"ratio {result['ratio_end_to_end_to_bare']:.3f}  ({n_e2e} generated images, "
        "incl. threshold sample)"
    )
    for m in memory:
        print(
            f"memory, {m['images']:5d} images: peak RSS {m['peak_rss_mb']:.0f} MB, "
            f"top-K state {m['state_mb']:.2f} MB"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
