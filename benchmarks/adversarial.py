"""PGD throughput side by side with torchattacks, in one run.

    python benchmarks/adversarial.py [--batch 16] [--steps 10] [--repeats 3]

efficientnet_lite0 (offline default), L-infinity PGD, eps 2/255, alpha eps/4, no random start,
on the bundled photos at 224 px; both produce the same images (tests/adversarial). Median of
alternating runs after warm-up; images per second and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import convscope
from convscope.adversarial import PixelModel, pgd
from convscope.inputs.samples import sample_images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).with_name("adversarial.json")))
    args = ap.parse_args()
    import torchattacks

    subject = convscope.load()
    imgs = [img for _, img in sample_images()][: args.batch]
    x = subject.load_pixels(imgs)
    with torch.no_grad():
        labels = subject.model(subject.preprocess.normalize(x)).argmax(-1)
    eps = 2 / 255
    atk = torchattacks.PGD(
        PixelModel(subject).eval(), eps=eps, alpha=eps / 4, steps=args.steps, random_start=False
    )

    def ours():
        pgd(subject, x, eps=eps, alpha=eps / 4, steps=args.steps, labels=labels.tolist())

    def theirs():
        atk(x, labels)

    ours()
    theirs()
    a, b = [], []
    for _ in range(args.repeats):
        for fn, acc in ((ours, a), (theirs, b)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    n = x.shape[0]
    ours_ips, theirs_ips = n / statistics.median(a), n / statistics.median(b)
    result = {
        "model": "efficientnet_lite0",
        "batch": n,
        "steps": args.steps,
        "eps": "2/255",
        "threads": torch.get_num_threads(),
        "convscope_images_per_s": ours_ips,
        "torchattacks_images_per_s": theirs_ips,
        "ratio": ours_ips / theirs_ips,
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"convscope    {ours_ips:6.2f} images/s")
    print(f"torchattacks {theirs_ips:6.2f} images/s")
    print(f"ratio        {ours_ips / theirs_ips:.2f}x  (convscope includes the top-5 before/after)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
