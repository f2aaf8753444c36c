"""Per-image time of each attribution method, side by side with Captum and pytorch-grad-cam at
equal settings, in one run.

    python benchmarks/attribution.py [--batches 1,4] [--size 224] [--out attribution.json]

Model: torchvision resnet18 with random weights (a ReLU network, so Captum's guided
backpropagation and deconvolution are valid and the outputs agree: see
tests/attribution/test_references.py). Every pair is warmed up, then timed alternately
(ours, theirs) ``--repeats`` times; the median per-image seconds and their ratio are reported.
Occlusion is timed for a class target and for one neuron (``layer2.1:5@14,14``); Captum gets a
forward function that runs the whole model and reads the neuron with a hook, as a user would.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import convscope
from convscope.attribution.targets import resolve_target
from convscope.recorder import Recorder


def timeit(fn, repeats):
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--only", default="", help="run only methods whose name contains this")
    ap.add_argument("--out", default=str(Path(__file__).with_name("attribution.json")))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from captum import attr as ca
    from pytorch_grad_cam import GradCAM, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    subject = convscope.load("torchvision:resnet18", weights=None)
    m = subject.model
    gen = torch.Generator().manual_seed(0)
    rows = []

    # warm up: one backward pass, then forwards
    x0 = torch.randn(2, 3, args.size, args.size, generator=gen, requires_grad=True)
    m(x0).sum().backward()
    m.zero_grad(set_to_none=True)

    unit = "layer2.1:5@14,14"
    uinfo = resolve_target(subject, unit)

    def unit_forward(inp):
        with Recorder(subject, ["layer2.1"]) as rec:
            m(inp)
        return rec["layer2.1"][:, 5, 14, 14]

    def make_pairs(x, n):
        t = [3] * n
        pairs = {
            "saliency": (
                lambda: convscope.explain(subject, x, "saliency", target=3),
                lambda: ca.Saliency(m).attribute(x.clone().requires_grad_(), target=t, abs=True),
            ),
            "input_x_gradient": (
                lambda: convscope.explain(subject, x, "input_x_gradient", target=3),
                lambda: ca.InputXGradient(m).attribute(x.clone().requires_grad_(), target=t),
            ),
            "integrated_gradients (16 steps)": (
                lambda: convscope.explain(subject, x, "ig", target=3, steps=16, baseline="zero", batch=16),
                lambda: ca.IntegratedGradients(m).attribute(
                    x, target=t, n_steps=16, internal_batch_size=16, method="riemann_trapezoid"
                ),
            ),
            "guided": (
                lambda: convscope.explain(subject, x, "guided", target=3),
                lambda: ca.GuidedBackprop(m).attribute(x.clone().requires_grad_(), target=t),
            ),
            "deconvnet": (
                lambda: convscope.explain(subject, x, "deconvnet", target=3),
                lambda: ca.Deconvolution(m).attribute(x.clone().requires_grad_(), target=t),
            ),
            "gradcam": (
                lambda: convscope.explain(subject, x, "gradcam", target=3, layer="layer4.1"),
                lambda: GradCAM(model=m, target_layers=[m.layer4[-1]])(
                    input_tensor=x, targets=[ClassifierOutputTarget(3)] * n
                ),
            ),
        }
        if n == 1:
            pairs["scorecam"] = (
                lambda: convscope.explain(subject, x, "scorecam", target=3, layer="layer4.1", batch=32),
                lambda: ScoreCAM(model=m, target_layers=[m.layer4[-1]])(
                    input_tensor=x, targets=[ClassifierOutputTarget(3)] * n
                ),
            )
            occ = dict(window=32, stride=16, fill="zero")
            pairs["occlusion, class (captum default: 1 per eval)"] = (
                lambda: convscope.explain(subject, x, "occlusion", target=3, batch=32, **occ),
                lambda: ca.Occlusion(m).attribute(
                    x, sliding_window_shapes=(3, 32, 32), strides=(3, 16, 16), baselines=0, target=t
                ),
            )
            pairs["occlusion, class (captum 32 per eval)"] = (
                lambda: convscope.explain(subject, x, "occlusion", target=3, batch=32, **occ),
                lambda: ca.Occlusion(m).attribute(
                    x,
                    sliding_window_shapes=(3, 32, 32),
                    strides=(3, 16, 16),
                    baselines=0,
                    target=t,
                    perturbations_per_eval=32,
                ),
            )
            pairs["occlusion, one neuron (captum 32 per eval)"] = (
                lambda: convscope.explain(subject, x, "occlusion", target=uinfo, batch=32, **occ),
                lambda: ca.Occlusion(unit_forward).attribute(
                    x,
                    sliding_window_shapes=(3, 32, 32),
                    strides=(3, 16, 16),
                    baselines=0,
                    perturbations_per_eval=32,
                ),
            )
        return pairs

    for n in [int(b) for b in args.batches.split(",")]:
        x = torch.randn(n, 3, args.size, args.size, generator=gen)
        pairs = make_pairs(x, n)
        for name, (ours, theirs) in pairs.items():
            if args.only not in name:
                continue
            ours()
            theirs()  # warm-up
            a, b = [], []
            for _ in range(args.repeats):
                a.append(timeit(ours, 1))
                b.append(timeit(theirs, 1))
            ta, tb = statistics.median(a) / n, statistics.median(b) / n
            peer = "pytorch-grad-cam" if "cam" in name else "captum"
            rows.append(
                {
                    "method": name,
                    "batch": n,
                    "ours_s_per_image": ta,
                    "peer": peer,
                    "peer_s_per_image": tb,
                    "speedup": tb / ta,
                }
            )
            print(
                f"batch {n:2d}  {name:48s} ours {ta * 1000:9.1f} ms/img   {peer} "
                f"{tb * 1000:9.1f} ms/img   speed-up {tb / ta:5.2f}x",
                flush=True,
            )
    Path(args.out).write_text(
        json.dumps(
            {
                "model": "torchvision resnet18 (random weights)",
                "size": args.size,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "rows": rows,
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
