"""Scale benchmarks, three parts (each prints and writes JSON):

    python benchmarks/scale.py ray [--images 512] [--model efficientnet_lite0] [--layers ...]
    python benchmarks/scale.py device [--device cuda] [--images 2048] [--batch-size 128]
    python benchmarks/scale.py precision [--images 256] [--device cpu]

``ray``: 2 local Ray workers vs one process, same images, one run. The images are the bundled
photos and their crops, repeated to ``--images`` through a list file. One process:
``convscope.scan.scanner.scan`` with all threads. Ray: ``RayEngine.scan`` with 2 actors of one thread each
(started and warmed before the clock starts, as a long-running cluster would be), 8 shards.
Reports images/s of both, the speed-up, and whether the top-K lists are identical.

``device`` and ``precision``: see :func:`device_main` and :func:`precision_main`.
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
from convscope.inputs.samples import sample_view, sample_view_names
from convscope.inputs.sources import open_images
from convscope.scan import scan


def ray_main(argv) -> None:
    ap = argparse.ArgumentParser(prog="scale.py ray")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--layers", default="blocks.3,blocks.5")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).with_name("scale.json")))
    args = ap.parse_args(argv)
    import ray

    from convscope.scale import RayEngine

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
    warm, measured = RayEngine(workers=args.workers, n_shards=args.workers), RayEngine(workers=args.workers)
    warm.scan(subject, source, layers, **{**options, "k": 1})
    t0 = time.perf_counter()
    merged = measured.scan(subject, source, layers, **options)  # 4 shards per worker
    t_ray = time.perf_counter() - t0
    ray.shutdown()
    same = all(
        merged.topk(n, u, c).images.tolist() == single.topk(n, u, c).images.tolist()
        for n in single.layers
        for u in range(single.channels[n])
        for c in single.criteria
    )
    row = {
        "model": subject.name,
        "layers": layers,
        "images": args.images,
        "workers": args.workers,
        "one_process_img_s": args.images / t_single,
        "ray_img_s": args.images / t_ray,
        "speedup": t_single / t_ray,
        "identical_topk": same,
        "max_abs_stat_diff": float(
            max(np.abs(single.stats(n).mean - merged.stats(n).mean).max() for n in single.layers)
        ),
        "torch_threads_one_process": torch.get_num_threads(),
    }
    print(
        f"one process {row['one_process_img_s']:.1f} img/s, Ray x{args.workers} "
        f"{row['ray_img_s']:.1f} img/s -> {row['speedup']:.2f}x; identical top-K: {same}"
    )
    Path(args.out).write_text(json.dumps(row, indent=1))
    print(f"wrote {args.out}")


# --- device: one machine at the speed of its accelerator -------------------------------------

SHARED = Path(__file__).resolve().parents[2] / "shared"
CIFAR = SHARED / "data" / "cifar10-jpg.tar.gz"


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _bare(subject, batches, accel) -> float:
    """Images/s of the bare ``model(x)`` on preloaded batches, with the same speed settings."""
    from convscope.accel import prepared

    dev = subject.device
    _sync(dev)
    t0 = time.perf_counter()
    with prepared(subject.model, accel, dev), torch.inference_mode(), accel.autocast(dev):
        for x in batches:
            subject.model(accel.inputs(x, dev))
    _sync(dev)
    return sum(len(x) for x in batches) / (time.perf_counter() - t0)


def _hot(subject, batches, layers, accel, thresholds) -> float:
    """Images/s of the scan's hot path (truncated recorded forward + every criterion folded into
    the device-side state) on the same preloaded batches."""
    from convscope.scan.scanner import _Engine
    from convscope.scan.state import LayerState

    dev = subject.device
    states = {}
    for n in layers:
        info = subject.layer(n)
        shape = tuple(info.shape[1:]) if len(info.shape) == 3 else (1, 1)
        states[n] = LayerState.empty(info.units, shape, 16, ("max", "mean", "area"), dev)
        states[n].thresholds = thresholds[n].to(dev)
    _sync(dev)
    t0 = time.perf_counter()
    with _Engine(subject, layers, {}, accel) as engine:
        start = 0
        for x in batches:
            engine.scan(x, torch.arange(start, start + len(x)), states)
            start += len(x)
    _sync(dev)
    return sum(len(x) for x in batches) / (time.perf_counter() - t0)


def _cpu_name() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def device_main(argv) -> None:
    """Per model (efficientnet_lite0 with its weights, ResNet-50 with random weights) and
    precision: bare forward img/s on preloaded batches, the scan hot path as a ratio to it, and
    end-to-end scans of real JPEGs (CIFAR-10 train, upsampled to the model's input) with PIL
    decoding in auto-sized workers and with decoding on the device. ``--full`` also scans the
    whole 50k-image training set once and reports the wall time."""
    import platform

    from convscope.accel import Accel
    from convscope.inputs.workers import auto_workers

    ap = argparse.ArgumentParser(prog="scale.py device")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default="efficientnet_lite0,timm:resnet50")
    ap.add_argument("--precisions", default=None, help="default: fp32,bf16 on CUDA, fp32 on a CPU")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 128 on CUDA, 32 on a CPU")
    ap.add_argument("--batches", type=int, default=None, help="preloaded batches per timing")
    ap.add_argument("--images", type=int, default=None, help="JPEGs per end-to-end scan")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", default=str(CIFAR))
    ap.add_argument("--full", action="store_true", help="also scan all of --data once (50k for CIFAR-10)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("scale_device.json")))
    args = ap.parse_args(argv)
    gpu = torch.device(args.device).type == "cuda"
    bs = args.batch_size or (128 if gpu else 32)
    n_batches = args.batches or (8 if gpu else 3)
    n_images = args.images or (4096 if gpu else 192)
    precisions = (args.precisions or ("fp32,bf16" if gpu else "fp32")).split(",")
    files = open_images(args.data, pattern="train/*")
    rows = []
    for model in args.models.split(","):
        weights = "default" if model == "efficientnet_lite0" else None
        subject = convscope.load(model, weights=weights, device=args.device)
        layers = subject.layers.select("stages")
        gen = torch.Generator().manual_seed(0)
        batches = [
            torch.randn(bs, 3, *subject.input_size, generator=gen).to(subject.device)
            for _ in range(n_batches)
        ]
        x = batches[0][:4].clone().requires_grad_(True)
        subject.model(x).sum().backward()  # warm-up: forwards are slower until a backward ran
        subject.model.zero_grad(set_to_none=True)
        cal = scan(
            subject,
            files.subset(range(bs)).with_transform(subject.transform),
            layers,
            k=16,
            batch_size=bs,
            threshold_sample=bs,
        )
        for precision in precisions:
            accel = Accel(precision=precision)
            _bare(subject, batches[:1], accel)
            _hot(subject, batches[:1], layers, accel, cal.thresholds)
            bare, hot = [], []
            for _ in range(args.repeats):  # interleaved, so drift hits both alike
                bare.append(_bare(subject, batches, accel))
                hot.append(_hot(subject, batches, layers, accel, cal.thresholds))
            row = {
                "model": subject.name,
                "weights": weights or "random",
                "precision": precision,
                "channels_last": accel.layout(subject.device),
                "batch_size": bs,
                "layers": layers,
                "bare_img_s": float(np.median(bare)),
                "scan_hot_img_s": float(np.median(hot)),
                "ratio_hot_to_bare": float(np.median([h / b for h, b in zip(hot, bare)])),
            }
            subset = files.subset(range(bs, bs + n_images)).with_transform(subject.transform)
            for decode in ("cpu", "device"):
                a = Accel(precision=precision, decode=decode)
                t0 = time.perf_counter()
                r = scan(subject, subset, layers, k=16, batch_size=bs, thresholds=cal.thresholds, accel=a)
                _sync(subject.device)
                row[f"end_to_end_{decode}_decode_img_s"] = r.processed / (time.perf_counter() - t0)
                rate = row[f"end_to_end_{decode}_decode_img_s"]
                row[f"ratio_end_to_end_{decode}_decode"] = rate / row["bare_img_s"]
            rows.append(row)
            print(
                f"{subject.name:<20} {precision}: bare {row['bare_img_s']:8.1f} img/s, scan hot "
                f"{row['scan_hot_img_s']:8.1f} ({row['ratio_hot_to_bare']:.2f}x), files: PIL "
                f"{row['end_to_end_cpu_decode_img_s']:7.1f} ({row['ratio_end_to_end_cpu_decode']:.2f}x), "
                f"device decode {row['end_to_end_device_decode_img_s']:7.1f} "
                f"({row['ratio_end_to_end_device_decode']:.2f}x)"
            )
        if args.full:
            a = Accel(precision=precisions[-1], decode="device" if gpu else "cpu")
            src = files.with_transform(subject.transform)
            t0 = time.perf_counter()
            r = scan(subject, src, layers, k=16, batch_size=bs, threshold_sample=256 * 4, accel=a)
            _sync(subject.device)
            full = {
                "model": subject.name,
                "full_scan_images": r.processed,
                "skipped": len(r.skipped),
                "full_scan_seconds": time.perf_counter() - t0,
                "precision": a.precision,
                "decode": a.decode,
            }
            rows.append(full)
            print(f"{subject.name}: scanned {r.processed} images in {full['full_scan_seconds']:.0f} s")
        del subject
    dev_name = torch.cuda.get_device_name(0) if gpu else _cpu_name() or platform.machine()
    result = {
        "benchmark": "scale-device",
        "device": dev_name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "decode_workers": auto_workers(args.device, batch_bytes=bs * 3 * 224 * 224 * 4),
        "data": args.data,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


# --- precision: what autocast does to the results --------------------------------------------


def precision_main(argv) -> None:
    """The same scan, features and dissection in fp32, bf16 and fp16 on real photos (CIFAR-10
    test images), compared with fp32: per-unit maximum and `area` threshold (relative error),
    top-K overlap per criterion (Jaccard of the K image sets), identical top-1, retrieval
    P@10 with GAP features, and dissection labels (auto-colour concepts)."""
    from convscope.accel import Accel
    from convscope.dissect import ColorConcepts, dissect
    from convscope.represent import extract_features

    ap = argparse.ArgumentParser(prog="scale.py precision")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--dissect-images", type=int, default=48)
    ap.add_argument("--layers", default="blocks.3,blocks.5,bn2")
    ap.add_argument("--precisions", default="fp32,bf16,fp16")
    ap.add_argument("--data", default=str(CIFAR))
    ap.add_argument("--out", default=str(Path(__file__).with_name("precision.json")))
    args = ap.parse_args(argv)
    subject = convscope.load(device=args.device)
    layers = args.layers.split(",")
    allimgs = open_images(args.data, pattern="test/*")
    rng = np.random.default_rng(0)
    pick = sorted(rng.choice(len(allimgs), size=args.images, replace=False).tolist())
    src = allimgs.subset(pick).with_transform(subject.transform)
    x = torch.randn(2, 3, *subject.input_size, requires_grad=True, device=subject.device)
    subject.model(x).sum().backward()
    runs = {}
    for p in args.precisions.split(","):
        a = Accel(precision=p)
        t0 = time.perf_counter()
        sc = scan(subject, src, layers, k=16, batch_size=32, threshold_sample=args.images, accel=a)
        fs = extract_features(subject, src, ["bn2"], batch_size=32, accel=a)
        concepts = ColorConcepts(allimgs.subset(pick[: args.dissect_images]), seg=112)
        ds = dissect(subject, concepts, ["blocks.3"], accel=a)
        runs[p] = (sc, fs, ds, time.perf_counter() - t0)
        print(f"{p}: done in {runs[p][3]:.0f} s")
    ref_sc, ref_fs, ref_ds, _ = runs["fp32"]
    labels = ref_fs.valid_labels()

    def p_at_10(fs):
        """Mean precision@10 by cosine similarity, each image querying the others (exact,
        in NumPy: this part must also run where FAISS is not installed)."""
        x = fs.get("bn2")
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        top = np.argsort(-sim, axis=1, kind="stable")[:, :10]
        return float((labels[top] == labels[:, None]).mean())

    rows = []
    for p, (sc, fs, ds, secs) in runs.items():
        row = {"precision": p, "seconds": secs, "layers": {}}
        for n in layers:
            a, b = ref_sc.stats(n), sc.stats(n)
            scale = np.abs(a.max).max()
            rel_max = np.abs(a.max - b.max) / np.maximum(np.abs(a.max), 1e-3 * scale)
            rel_thr = np.abs(a.threshold - b.threshold) / np.maximum(np.abs(a.threshold), 1e-3 * scale)
            rel_mean = np.abs(a.mean - b.mean) / np.maximum(np.abs(a.mean), 1e-3 * scale)
            per = {}
            for crit in ("max", "mean", "area"):
                jac, top1 = [], []
                for u in range(ref_sc.channels[n]):
                    s1, s2 = ref_sc.topk(n, u, crit).images, sc.topk(n, u, crit).images
                    jac.append(len(set(s1) & set(s2)) / max(1, len(set(s1) | set(s2))))
                    top1.append(len(s1) > 0 and len(s2) > 0 and s1[0] == s2[0])
                per[crit] = {
                    "topk_jaccard_mean": float(np.mean(jac)),
                    "topk_jaccard_min": float(np.min(jac)),
                    "top1_same": float(np.mean(top1)),
                }
            row["layers"][n] = {
                "max_rel_err_median": float(np.median(rel_max)),
                "max_rel_err_p99": float(np.quantile(rel_max, 0.99)),
                "threshold_rel_err_median": float(np.median(rel_thr)),
                "mean_rel_err_median": float(np.median(rel_mean)),
                "units_max_equal": float(np.mean(a.max == b.max)),
                "criteria": per,
            }
        la, lb = ref_ds.layers["blocks.3"], ds.layers["blocks.3"]
        row["retrieval_p_at_10"] = float(p_at_10(fs))
        row["features_rel_err_median"] = float(
            np.median(np.abs(ref_fs.get("bn2") - fs.get("bn2")) / (np.abs(ref_fs.get("bn2")) + 1e-3))
        )
        row["dissect_same_label"] = float((la.iou.argmax(1) == lb.iou.argmax(1)).mean())
        row["dissect_max_abs_iou_diff"] = float(np.abs(la.iou - lb.iou).max())
        rows.append(row)
        for n, l0 in row["layers"].items():
            print(
                f"{p} {n}: rel err median max {l0['max_rel_err_median']:.1e} mean "
                f"{l0['mean_rel_err_median']:.1e} threshold {l0['threshold_rel_err_median']:.1e}; "
                "top-K Jaccard "
                + ", ".join(f"{c} {v['topk_jaccard_mean']:.3f}" for c, v in l0["criteria"].items())
            )
        print(
            f"{p}: P@10 {row['retrieval_p_at_10']:.4f}; features rel err median "
            f"{row['features_rel_err_median']:.1e}; dissection labels same {row['dissect_same_label']:.3f}"
        )
    result = {
        "benchmark": "precision",
        "model": subject.name,
        "device": str(subject.device),
        "images": args.images,
        "data": args.data,
        "torch": torch.__version__,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


def main() -> None:
    import sys

    parts = {"ray": ray_main, "device": device_main, "precision": precision_main}
    if len(sys.argv) < 2 or sys.argv[1] not in parts:
        print(__doc__)
        raise SystemExit(2)
    parts[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
