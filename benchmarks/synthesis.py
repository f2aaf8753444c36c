"""Feature visualisation throughput: units per minute for a whole layer, convscope (all units of
the layer in one batched run) side by side with Lucent (one unit per run), in one process.

    python benchmarks/synthesis.py [--layer blocks.4] [--units 16] [--steps 32] [--size 128]

Both use the same model (efficientnet_lite0, the offline default), image size, number of steps,
Fourier parametrisation with decorrelated colour, and Lucid's standard transforms. Lucent gets a
wrapper that takes [0, 1] pixels and applies the model's normalisation (so it runs with
``preprocess=False``) and ``fixed_image_size`` so that it does not upsample to 224 px. Needs
``pip install --no-deps torch-lucent`` plus ``decorator ipython kornia==0.4.1``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch

import convscope
from convscope.adversarial import PixelModel
from convscope.synthesis import visualize_units


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layer", default="blocks.4")
    ap.add_argument("--units", type=int, default=16)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument(
        "--lucent-units",
        type=int,
        default=4,
        help="units Lucent renders (its per-unit time is constant; fewer saves time)",
    )
    ap.add_argument("--out", default=str(Path(__file__).with_name("synthesis.json")))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from lucent.optvis import param, render, transform

    subject = convscope.load()
    units = list(range(args.units))
    wrapped = PixelModel(subject).eval()
    lucent_layer = "net_" + args.layer.replace(".", "_")

    # warm-up both (one backward pass first, as elsewhere)
    visualize_units(subject, args.layer, [0, 1], steps=2, size=args.size)
    render.render_vis(
        wrapped,
        f"{lucent_layer}:0",
        param_f=lambda: param.image(args.size, fft=True, decorrelate=True),
        transforms=transform.standard_transforms,
        thresholds=(2,),
        show_image=False,
        preprocess=False,
        fixed_image_size=args.size,
        progress=False,
    )

    t0 = time.perf_counter()
    ours = visualize_units(
        subject, args.layer, units, batch=len(units), steps=args.steps, size=args.size, param="fft"
    )
    t_ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    lucent_scores = []
    for u in units[: args.lucent_units]:
        imgs = render.render_vis(
            wrapped,
            f"{lucent_layer}:{u}",
            param_f=lambda: param.image(args.size, fft=True, decorrelate=True),
            transforms=transform.standard_transforms,
            thresholds=(args.steps,),
            show_image=False,
            preprocess=False,
            fixed_image_size=args.size,
            progress=False,
        )
        img = torch.as_tensor(imgs[-1]).permute(0, 3, 1, 2)
        from convscope.synthesis import evaluate
        from convscope.synthesis import objectives as O

        lucent_scores.append(float(evaluate(subject, O.channel(args.layer, u), img)[0]))
    t_lucent = (time.perf_counter() - t0) / args.lucent_units * args.units

    ours_per_min = args.units / t_ours * 60
    lucent_per_min = args.units / t_lucent * 60
    result = {
        "model": "efficientnet_lite0",
        "layer": args.layer,
        "units": args.units,
        "steps": args.steps,
        "size": args.size,
        "param": "fft + decorrelated colour",
        "transforms": "Lucid standard",
        "threads": torch.get_num_threads(),
        "convscope_units_per_min": ours_per_min,
        "lucent_units_per_min": lucent_per_min,
        "speedup": ours_per_min / lucent_per_min,
        "lucent_units_timed": args.lucent_units,
        "convscope_mean_objective": float(ours.scores[: args.lucent_units].mean()),
        "lucent_mean_objective": sum(lucent_scores) / len(lucent_scores),
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"convscope {ours_per_min:7.2f} units/min (all {args.units} units in one batch)")
    print(f"lucent    {lucent_per_min:7.2f} units/min (one unit per run, {args.lucent_units} timed)")
    print(
        f"speed-up  {result['speedup']:.2f}x; mean objective reached: convscope "
        f"{result['convscope_mean_objective']:.2f}, lucent {result['lucent_mean_objective']:.2f}"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
