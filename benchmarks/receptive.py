"""Discrepancy maps per second: convscope vs a plain one-occlusion-per-forward loop vs Captum's
Occlusion with a layer-unit forward function, in one run.

    python benchmarks/receptive.py [--layer blocks.2] [--unit 3] [--patch 11] [--stride 6]

efficientnet_lite0 at 224 px on the bundled chelsea photo, the unit measured at its peak,
11 px random-pixel occluder. The plain loop and convscope give the same values
(tests/empirical); Captum runs the same occluded forward passes (the whole model, the unit read
with a hook, 64 per batch) and aggregates them per pixel.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import convscope
from convscope.empirical import discrepancy_map
from convscope.empirical.discrepancy import _filler
from convscope.recorder import Recorder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layer", default="blocks.2")
    ap.add_argument("--unit", type=int, default=3)
    ap.add_argument("--patch", type=int, default=11)
    ap.add_argument("--stride", type=int, default=6)
    ap.add_argument("--out", default=str(Path(__file__).with_name("receptive.json")))
    args = ap.parse_args()
    from captum.attr import Occlusion
    from skimage import data

    s = convscope.load()
    x = s.load_images([data.chelsea()])
    layer, unit, p, st = args.layer, args.unit, args.patch, args.stride
    fill = _filler(s, x, "noise", p, 0)
    discrepancy_map(s, x, layer, unit, patch=p, stride=st)  # warm-up
    t0 = time.perf_counter()
    dm = discrepancy_map(s, x, layer, unit, patch=p, stride=st)
    t_ours = time.perf_counter() - t0
    py, px = dm.peak

    def unit_forward(inp):
        with Recorder(s, [layer]) as rec:
            s.model(inp)
        return rec[layer][:, unit, py, px]

    t0 = time.perf_counter()
    Occlusion(unit_forward).attribute(
        x, sliding_window_shapes=(3, p, p), strides=(3, st, st), baselines=fill, perturbations_per_eval=64
    )
    t_captum = time.perf_counter() - t0

    H, W = x.shape[2:]
    with torch.no_grad():
        clean = unit_forward(x)
        t0 = time.perf_counter()
        n = 0
        for y0 in range(0, H - p + 1, st):
            for x0 in range(0, W - p + 1, st):
                occ = x.clone()
                occ[:, :, y0 : y0 + p, x0 : x0 + p] = fill[:, :, y0 : y0 + p, x0 : x0 + p]
                abs(float(clean - unit_forward(occ)))
                n += 1
        t_loop = time.perf_counter() - t0
    r = {
        "model": "efficientnet_lite0",
        "layer": layer,
        "unit": unit,
        "patch": p,
        "stride": st,
        "positions": n,
        "evaluated_by_convscope": dm.evaluated,
        "convscope_maps_per_s": 1 / t_ours,
        "captum_maps_per_s": 1 / t_captum,
        "plain_loop_maps_per_s": 1 / t_loop,
        "speedup_vs_captum": t_captum / t_ours,
        "speedup_vs_plain_loop": t_loop / t_ours,
        "threads": torch.get_num_threads(),
    }
    Path(args.out).write_text(json.dumps(r, indent=1))
    print(
        f"{n} occluder positions; convscope evaluates {dm.evaluated} (the rest lie outside "
        "the unit's receptive field) on crops of the receptive field"
    )
    print(f"convscope   {1 / t_ours:8.3f} maps/s  ({t_ours:.2f} s)")
    print(
        f"captum      {1 / t_captum:8.3f} maps/s  ({t_captum:.2f} s)   "
        f"convscope is {t_captum / t_ours:.1f}x faster"
    )
    print(
        f"plain loop  {1 / t_loop:8.3f} maps/s  ({t_loop:.2f} s)   convscope is {t_loop / t_ours:.1f}x faster"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
