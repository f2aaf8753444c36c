"""Network dissection throughput: convscope vs a NumPy NetDissect-Lite-style loop, in one run.

    python benchmarks/dissect.py [--concepts BRODEN_DIR] [--images 128] [--model efficientnet_lite0]
                                 [--layers blocks.3,conv_head] [--batch-size 4] [--device cpu]

Without ``--concepts`` it writes a synthetic Broden-format set (224 px images, 112 px
segmentations, the layout of broden1_224) to a temporary folder; with it, any Broden-format
directory is used (``--limit`` takes its first N images). For each layer it reports images/s of
the whole dissection (every pass over the data, forward passes included) for

* convscope: ``convscope.dissect.dissect`` (activations kept on the device between the passes
  when they fit, IoU counts on the device),
* reference: ``convscope.dissect.reference.reference_dissect``: a feature pass storing every
  activation on the host, ``numpy.quantile`` thresholds, then per image and per unit bilinear
  upsampling and ``numpy.bincount`` counting (NetDissect-Lite's tally),

the counting stage alone (convscope's second pass vs the reference's tally), the bare forward
pass of the whole model over the same images at the same batch size, and the largest IoU
difference between the two (equal results).
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
from convscope.dissect import BrodenDataset, dissect, make_synthetic_broden
from convscope.dissect.reference import reference_dissect
from convscope.dissect.transform import dissection_transform


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", default=None, help="a Broden-format directory")
    ap.add_argument("--images", type=int, default=128, help="synthetic images to generate")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--weights", default="default")
    ap.add_argument("--layers", default="blocks.3,conv_head")
    ap.add_argument("--batch-size", type=int, default=None, help="default: dissect's (4 on CPU, 64 on GPU)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(Path(__file__).with_name("dissect.json")))
    args = ap.parse_args()

    root = args.concepts or make_synthetic_broden(tempfile.mkdtemp(), n=args.images, size=224, seg=112)
    subject = convscope.load(args.model, weights=args.weights, device=args.device)
    data = BrodenDataset(root, limit=args.limit)
    n = len(data)
    # warm-up: one backward pass (forwards run slower before it on this CPU) and a small dissection
    x = torch.randn(2, 3, *subject.input_size, device=subject.device, requires_grad=True)
    subject.model(x).sum().backward()
    dissect(subject, BrodenDataset(root, limit=4), args.layers.split(","), batch_size=4)

    bs = args.batch_size or (4 if subject.device.type == "cpu" else 64)
    transform = dissection_transform(subject)
    batches = [
        torch.stack([transform(data.image(i)) for i in range(j, min(n, j + bs))]) for j in range(0, n, bs)
    ]
    with torch.inference_mode():
        t0 = time.perf_counter()
        for b in batches:
            subject.model(b.to(subject.device))
        if subject.device.type == "cuda":
            torch.cuda.synchronize()
        t_bare = time.perf_counter() - t0

    rows = []
    for layer in args.layers.split(","):
        t0 = time.perf_counter()
        ours = dissect(subject, BrodenDataset(root, limit=args.limit), [layer], batch_size=bs)
        t_ours = time.perf_counter() - t0
        timings: dict = {}
        t0 = time.perf_counter()
        thr, iou = reference_dissect(subject, BrodenDataset(root, limit=args.limit), layer, timings=timings)
        t_ref = time.perf_counter() - t0
        d = ours.layers[layer]
        row = {
            "layer": layer,
            "units": d.units,
            "concepts": len(d.concepts),
            "images": n,
            "bare_forward_img_s": n / t_bare,
            "convscope_img_s": n / t_ours,
            "reference_img_s": n / t_ref,
            "speedup": t_ref / t_ours,
            "convscope_counting_s": ours.seconds["pass2"],
            "reference_tally_s": timings["tally"],
            "counting_speedup": timings["tally"] / max(ours.seconds["pass2"], 1e-9),
            "convscope_vs_bare": t_bare / t_ours,
            "max_abs_iou_difference": float(np.abs(d.iou - iou).max()),
            "same_labels": float((d.iou.argmax(1) == iou.argmax(1)).mean()),
            "max_threshold_difference": float(np.abs(d.thresholds - thr).max()),
        }
        rows.append(row)
        print(
            f"{layer:>12} ({d.units} units, {len(d.concepts)} concepts, {n} images): "
            f"convscope {row['convscope_img_s']:.1f} img/s, reference {row['reference_img_s']:.1f} "
            f"img/s -> {row['speedup']:.2f}x; counting {row['convscope_counting_s']:.2f}s vs "
            f"tally {row['reference_tally_s']:.2f}s -> {row['counting_speedup']:.1f}x; "
            f"bare forward {row['bare_forward_img_s']:.1f} img/s; max |dIoU| "
            f"{row['max_abs_iou_difference']:.1e}, same labels {row['same_labels']:.0%}"
        )
    result = {
        "model": subject.name,
        "device": str(subject.device),
        "batch_size": bs,
        "concepts": str(args.concepts or "synthetic 224/112"),
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
