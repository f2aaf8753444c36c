"""Accuracy of the `area` thresholds estimated from a calibration sample.

    python benchmarks/thresholds.py [--images 1000] [--sample 256] [--out thresholds.json]

Scans CIFAR-10 test images (from ../shared/data, upsampled to 224 px) through the offline
default model, then computes each unit's exact 0.995 quantile over *all* activation values of
*all* images and reports, per layer: the fraction of all values above the estimated threshold
(ideal: 0.5%) and the relative error of the estimate against the exact quantile.
"""

from __future__ import annotations

import argparse
import json
import os
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

import convscope
from convscope.inputs.sources import open_images
from convscope.quantiles import quantile_thresholds, saturation_rule
from convscope.scan import scan

LAYERS = ["blocks.1", "blocks.3", "blocks.5", "bn2"]
SHARED = Path(os.environ.get("CONVSCOPE_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def extract(n: int, dest: Path) -> None:
    per_class = n // 10
    seen: dict[str, int] = {}
    with tarfile.open(SHARED / "data" / "cifar10-jpg.tar.gz") as tf:
        for m in tf:
            parts = m.name.split("/")
            if m.isfile() and parts[0] == "test" and seen.get(parts[1], 0) < per_class:
                seen[parts[1]] = seen.get(parts[1], 0) + 1
                (dest / parts[1]).mkdir(parents=True, exist_ok=True)
                (dest / parts[1] / parts[2]).write_bytes(tf.extractfile(m).read())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--sample", type=int, default=256)
    ap.add_argument("--out", default=str(Path(__file__).with_name("thresholds.json")))
    args = ap.parse_args()
    subject = convscope.load()
    with tempfile.TemporaryDirectory() as tmp:
        extract(args.images, Path(tmp))
        src = open_images(tmp, transform=subject.transform)
        res = scan(subject, src, LAYERS, k=4, criteria=["area"], threshold_sample=args.sample, batch_size=32)
        # exact quantiles over everything (fine at this size; a scan never does this)
        values = {n: [] for n in LAYERS}
        with subject.record(LAYERS, stop=True) as rec:
            for i in range(0, len(src), 64):
                x = torch.stack([src[j][0] for j in range(i, min(i + 64, len(src)))])
                with torch.inference_mode():
                    subject(x)
                for n in LAYERS:
                    a = rec[n]
                    values[n].append(a.transpose(0, 1).reshape(a.shape[1], -1).clone())
    report = {"images": len(src), "sample": res.config["threshold_sample"], "layers": {}}
    for n in LAYERS:
        v = torch.cat(values[n], dim=1).float()
        exact = saturation_rule(quantile_thresholds(v), v.max(1).values)
        est = res.states[n].thresholds.cpu()
        above = (v > est[:, None]).float().mean(1).numpy() * 100
        above_exact = (v > exact[:, None]).float().mean(1).numpy() * 100
        rel = ((est - exact).abs() / exact.abs().clamp_min(1e-6)).numpy()
        report["layers"][n] = {
            "units": int(v.shape[0]),
            "percent_above_median": float(np.median(above)),
            "percent_above_p05_p95": [float(np.percentile(above, 5)), float(np.percentile(above, 95))],
            "exact_percent_above_median": float(np.median(above_exact)),
            "exact_percent_above_p05_p95": [
                float(np.percentile(above_exact, 5)),
                float(np.percentile(above_exact, 95)),
            ],
            "relative_error_median": float(np.median(rel)),
            "relative_error_p95": float(np.percentile(rel, 95)),
        }
        r = report["layers"][n]
        print(
            f"{n:9s} {r['units']:5d} units: values above estimate {r['percent_above_median']:.3f}% "
            f"(5-95%: {r['percent_above_p05_p95'][0]:.3f}-{r['percent_above_p05_p95'][1]:.3f}%), "
            f"[exact quantile: {r['exact_percent_above_median']:.3f}%, 5-95%: "
            f"{r['exact_percent_above_p05_p95'][0]:.3f}-{r['exact_percent_above_p05_p95'][1]:.3f}%], "
            f"threshold rel. error median {r['relative_error_median']:.3f}, "
            f"p95 {r['relative_error_p95']:.3f}"
        )
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
