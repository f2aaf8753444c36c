"""The microscope stage by stage: the time of each stage of ``microscope_to_atlas`` on
CIFAR-10 test photos with a fixed, seeded unit sample per layer, the time projected for every
unit of every chosen layer, the plan's own estimate beside it, the feature-visualisation stage's
units x steps per second against Lucent (one unit per run) in the same process, and our
images-per-optimisation sweep (issue #22, items 3 and 4).

    python benchmarks/microscope.py [--quick] [--images 1000] [--layers stages] [--threads N]

Data: ``--images`` CIFAR-10 test JPEGs (the first N/10 of each class by file name) extracted from
``--archive`` into a cache folder under the temp directory (reused; never committed). Model: the
offline default ``convscope.load("efficientnet_lite0")``; layers: ``--layers`` (a LayerTable.select
spec, default its ``stages``).

Stages, each one ``microscope_to_atlas(stages=[stage])`` call on one temp atlas, timed wall-clock
(the stages table's own seconds are kept too): ``scan`` (microscope defaults), ``visuals`` of
``--visual-units`` units per layer drawn by ``rf_units`` (seed 0; positive and negative images,
``--steps`` steps at ``--size`` px), ``dissect`` (colour names), ``rf`` (``--rf-units`` units per
layer, ``--rf-top`` top images, the stage's default occluder grid, ``rf_grid``), ``concepts``
(``nmf:--concepts-n`` on ``--one-layer``) and ``activation_atlas`` (on ``--one-layer``, ``--grid``
cells a side, ``--aa-steps`` steps). Per-layer times inside the visuals and rf stages come from
the stages' progress notes, which name the layer (time from one note to the next is charged to
the layer the first names).

Projection, per stage, for every unit of every chosen layer and ``--project-images`` images
(the measured settings otherwise), with N the images run, P the projected images, U_l a layer's
units, u_l the units measured on it and t_l its measured seconds, L the chosen layers:

- scan, dissect: t x P / N (they already cover every unit);
- visuals, rf: sum over layers of t_l / u_l x U_l (a unit costs what the sampled ones did);
- concepts, activation_atlas (measured on one layer): L x (t_data x P / N + t_fixed), t_fixed
  the phases that do not read the data (concept pictures; the atlas's layout and cell
  visualisations), t_data the rest; deeper or shallower layers than the one measured may differ.

The plan (``microscope_to_atlas(plan_only=True)``, its short probe) is asked for the measured
settings on the images run and for the every-unit settings on ``--project-images`` images, and
printed beside both.

Feature visualisation against Lucent (``--fv-layers``): our ``visualize_layer`` of ``--fv-units``
units (positive images only) in one optimisation against Lucent's ``render.render_vis`` of
``--lucent-units`` of them one at a time, interleaved ``--repeats`` times after a warm-up; units
x steps per second, and the mean channel activation each reached on the shared units. Same:
Fourier parametrisation with decorrelated colour, image size, steps, Adam at 0.05, Lucid's
standard transforms (pad 12, jitter 8, scale 0.9-1.1, rotate +-10 deg, jitter 4). Differences:
Lucent runs the whole model (we stop at the layer), computes weight gradients, draws its
transforms per unit (ours: one draw per step shared by the batch) and picks rotation 0 five more
times out of 26; Lucent gets ``PixelModel`` ([0, 1] pixels) with ``preprocess=False`` and
``fixed_image_size=--size``. Needs ``pip install --no-deps torch-lucent`` and kornia 0.4.1.

Batch sweep (``--sweep-layer``, ``--sweep-batches``): ``visualize_layer`` of B units in one
optimisation (``batch=B``, positive images, ``--sweep-steps`` steps), interleaved ``--repeats``
times; units x steps per second per B and the smallest B within 10% of the best ("saturates").

Writes ``microscope.json`` beside this script (``--quick``: ``microscope_quick.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tarfile
import tempfile
import time
import warnings
from pathlib import Path

import torch

import convscope
from convscope.atlas.microscope_build import DEFAULTS, microscope_to_atlas, rf_units
from convscope.synthesis.layer_visuals import visualize_layer

ARCHIVE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpg.tar.gz"
STAGE_ORDER = ("scan", "visuals", "dissect", "rf", "concepts", "activation_atlas")
# phases of the one-layer stages that do not read the data (their time does not grow with it)
FIXED_PHASES = {"concepts": ("pictures",), "activation_atlas": ("layout", "visualisation")}


def cifar_folder(archive: Path, n: int) -> Path:
    """``n`` CIFAR-10 test JPEGs (the first n/10 per class by name) in a cache folder."""
    out = Path(tempfile.gettempdir()) / f"convscope-bench-cifar10-test-{n}"
    if out.is_dir() and len(list(out.rglob("*.jpg"))) == n:
        return out
    with tarfile.open(archive) as tar:
        members = sorted(
            (
                m
                for m in tar.getmembers()
                if m.isfile() and m.name.startswith("test/") and m.name.endswith(".jpg")
            ),
            key=lambda m: m.name,
        )
        classes = sorted({m.name.split("/")[1] for m in members})
        share = {c: n // len(classes) + (i < n % len(classes)) for i, c in enumerate(classes)}
        chosen = []
        for c in classes:
            chosen += [m for m in members if m.name.split("/")[1] == c][: share[c]]
        tmp = Path(tempfile.mkdtemp(dir=tempfile.gettempdir(), prefix="convscope-bench-"))
        for m in chosen:
            target = tmp / m.name.removeprefix("test/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(m).read())
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return out


class Clock:
    """Progress callback that keeps (time, note) of every call."""

    def __init__(self):
        self.events: list[tuple[float, str]] = []

    def __call__(self, done, total, note=None):
        self.events.append((time.perf_counter(), note or ""))

    def charged(self, end: float, part: int) -> dict[str, float]:
        """Seconds per ``part`` of the note (1: the layer of "stage: layer"; for the one-layer
        stages the note's phase), each interval charged to the note that opened it."""
        out: dict[str, float] = {}
        stamps = self.events + [(end, "")]
        for (t0, note), (t1, _) in zip(stamps, stamps[1:]):
            bits = [b.strip() for b in note.split(":")]
            if len(bits) > part:
                out[bits[part]] = out.get(bits[part], 0.0) + t1 - t0
        return out


def stage_options(args) -> dict:
    """The microscope options of the run (over its DEFAULTS)."""
    options = {
        "visuals": {"steps": args.steps, "size": args.size},
        "rf": {"units": args.rf_units, "top": args.rf_top},
        "concepts": {"layers": [args.one_layer]},
        "activation_atlas": {"layers": [args.one_layer], "grid": args.grid, "steps": args.aa_steps},
    }
    if args.quick:  # a smoke run: small top-K lists and pictures
        options["scan"] = {"k": 4, "directions": 2}
        options["concepts"].update({"k": 4, "visualize": {"steps": args.steps, "size": 64}})
        options["activation_atlas"].update({"size": 48, "layout": "pca"})
    return options


def run_stages(subject, folder, out, args, layers, visual_units) -> tuple[dict, dict]:
    """Every stage once, in order, on one atlas; per stage its wall seconds, the stages table's
    seconds and the per-layer / per-phase split."""
    options = stage_options(args)
    kw = dict(layers=layers, units=visual_units, concepts=f"nmf:{args.concepts_n}", options=options)
    warm_up(subject, folder, layers, visual_units, args)
    times = {}
    for stage in STAGE_ORDER:
        if stage in args.skip:
            continue
        clock = Clock()
        t0 = time.perf_counter()
        built = microscope_to_atlas(subject, folder, out, stages=[stage], progress=clock, **kw)
        end = time.perf_counter()
        row = next(r for r in built.stages if r["name"] == stage)
        split = clock.charged(end, 2 if stage == "activation_atlas" else 1)  # its notes: layer: phase
        times[stage] = {"wall_s": end - t0, "table_s": row["seconds"], "split_s": split}
        print(f"  {stage:<17} {end - t0:8.1f} s", flush=True)
    return times, kw


def warm_up(subject, folder, layers, visual_units, args) -> None:
    """The first pass through a layer at a batch shape costs seconds more than the next (kernel
    set-up): one scan batch and one step of each layer's visuals batch, untimed."""
    from convscope.concepts.activations import as_source
    from convscope.scan.scanner import scan

    source = as_source(subject, folder)
    scan(subject, source, layers, indices=range(8), k=2, threshold_sample=8, batch_size=8)
    for name in layers:
        visualize_layer(subject, name, visual_units[name], steps=1, size=args.size)


def project(subject, times, args, layers, visual_units, one_layer, n_images) -> dict:
    """Each stage's projected seconds for every unit of every chosen layer (docstring formula)."""
    scale = args.project_images / n_images
    units = {name: subject.layer(name).units or 0 for name in layers}
    rf_sample = {name: len(rf_units(units[name], args.rf_units, 0, name)) for name in layers}
    out = {}
    for stage, t in times.items():
        if stage in ("scan", "dissect"):
            out[stage] = {"seconds": t["wall_s"] * scale, "formula": "t x P / N"}
        elif stage in ("visuals", "rf"):
            measured = {name: len(visual_units[name]) for name in layers} if stage == "visuals" else rf_sample
            per_unit = {
                name: t["split_s"].get(name, 0.0) / measured[name] for name in layers if measured[name]
            }
            out[stage] = {
                "seconds": sum(per_unit[name] * units[name] for name in per_unit),
                "per_unit_s": per_unit,
                "formula": "sum_l t_l / u_l x U_l",
            }
        else:
            fixed = sum(s for phase, s in t["split_s"].items() if phase in FIXED_PHASES[stage])
            data = t["wall_s"] - fixed
            out[stage] = {
                "seconds": len(layers) * (data * scale + fixed),
                "data_s": data,
                "fixed_s": fixed,
                "formula": f"L x (t_data x P / N + t_fixed), measured on {one_layer}",
            }
    return out


def plans(subject, folder, kw, args, layers) -> dict:
    """The plan's estimate per stage for the measured settings and for every unit."""
    tmp = Path(tempfile.mkdtemp(prefix="convscope-bench-plan-")) / "atlas"
    stages = [s for s in STAGE_ORDER if s not in args.skip]
    measured = microscope_to_atlas(subject, folder, tmp, stages=stages, plan_only=True, **kw)
    every = {
        **kw["options"],
        "rf": {**kw["options"]["rf"], "units": max(subject.layer(n).units for n in layers)},
    }
    for stage in ("concepts", "activation_atlas"):
        every[stage] = {**every[stage], "layers": layers}
    projected = cifar_folder(args.archive, args.project_images)  # the plan counts the images it is given
    full = microscope_to_atlas(
        subject, projected, tmp, stages=stages, plan_only=True, **{**kw, "units": "all", "options": every}
    )
    return {
        "measured_settings": {p.name: {"seconds": p.seconds, "note": p.note} for p in measured.plan},
        "every_unit": {p.name: {"seconds": p.seconds, "note": p.note} for p in full.plan},
    }


def lucent_pair(subject, layer, units, lucent_units, args) -> dict:
    """Our batched visualize_layer against Lucent one unit at a time, interleaved."""
    from lucent.optvis import param, render, transform

    from convscope.adversarial import PixelModel
    from convscope.synthesis import evaluate
    from convscope.synthesis import objectives as O

    wrapped = PixelModel(subject).eval()
    name = "net_" + layer.replace(".", "_")

    def ours(steps):
        return visualize_layer(
            subject, layer, units, kinds=("positive",), steps=steps, size=args.size, batch=len(units)
        )

    def lucent(unit, steps):
        return render.render_vis(
            wrapped, f"{name}:{unit}", param_f=lambda: param.image(args.size, fft=True, decorrelate=True),
            transforms=transform.standard_transforms, thresholds=(steps,), show_image=False,
            preprocess=False, fixed_image_size=args.size, progress=False,
        )[-1]  # fmt: skip

    ours(2), lucent(units[0], 2)  # warm-up
    t_ours, t_lucent, ours_obj, lucent_obj = [], [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        result = ours(args.steps)
        t_ours.append(time.perf_counter() - t0)
        ours_obj = [float(result.objectives[i, 0]) for i in range(lucent_units)]
        t0 = time.perf_counter()
        images = [lucent(u, args.steps) for u in units[:lucent_units]]
        t_lucent.append(time.perf_counter() - t0)
        lucent_obj = [
            float(
                evaluate(
                    subject, O.channel(layer, u), torch.as_tensor(img).permute(0, 3, 1, 2).to(subject.device)
                )[0]
            )
            for u, img in zip(units, images)
        ]
    ours_rate = len(units) * args.steps / statistics.median(t_ours)
    lucent_rate = lucent_units * args.steps / statistics.median(t_lucent)
    return {
        "units": units,
        "lucent_units": units[:lucent_units],
        "convscope_s": t_ours,
        "lucent_s": t_lucent,
        "convscope_units_steps_per_s": ours_rate,
        "lucent_units_steps_per_s": lucent_rate,
        "speedup": ours_rate / lucent_rate,
        "convscope_mean_objective": statistics.mean(ours_obj),
        "lucent_mean_objective": statistics.mean(lucent_obj),
    }


def batch_sweep(subject, layer, batches, args) -> dict:
    """Units x steps per second of visualize_layer at B units per optimisation."""
    order = rf_units(subject.layer(layer).units, max(batches), 1, layer)
    run = {b: (lambda b=b: visualize_layer(subject, layer, order[:b], kinds=("positive",),
                                           steps=args.sweep_steps, size=args.size, batch=b))
           for b in batches}  # fmt: skip
    visualize_layer(subject, layer, order[:2], kinds=("positive",), steps=2, size=args.size)  # warm-up
    seconds = {b: [] for b in batches}
    for _ in range(args.repeats):
        for b in batches:
            t0 = time.perf_counter()
            run[b]()
            seconds[b].append(time.perf_counter() - t0)
    rate = {b: b * args.sweep_steps / statistics.median(seconds[b]) for b in batches}
    best = max(rate.values())
    saturates = min(b for b in batches if rate[b] >= 0.9 * best)
    # what batch=None chooses for the largest count (one step: only its choice is read)
    auto = visualize_layer(subject, layer, order, kinds=("positive",), steps=1, size=args.size)
    return {"layer": layer, "steps": args.sweep_steps, "seconds": seconds, "units_steps_per_s": rate,
            "saturates_at": saturates, "auto_batch": auto.settings.get("batch")}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run: tens of images, 2 units, few steps")
    ap.add_argument("--archive", type=Path, default=ARCHIVE)
    ap.add_argument("--images", type=int, default=None, help="CIFAR-10 test photos [1000; quick 40]")
    ap.add_argument("--project-images", type=int, default=1000)
    ap.add_argument("--layers", default=None, help="layer spec [stages; quick blocks.1,bn2]")
    ap.add_argument("--one-layer", default=None, help="layer of the concepts and activation atlas [blocks.4]")
    ap.add_argument("--visual-units", type=int, default=None, help="units per layer visualised [8; quick 2]")
    ap.add_argument("--steps", type=int, default=None, help="steps per feature visualisation [64; quick 4]")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--rf-units", type=int, default=None, help="units per layer of the rf stage [4; quick 1]")
    ap.add_argument("--rf-top", type=int, default=None, help="top images per rf unit [2; quick 1]")
    ap.add_argument("--concepts-n", type=int, default=None, help="NMF concepts [8; quick 3]")
    ap.add_argument("--grid", type=int, default=None, help="activation atlas grid side [8; quick 3]")
    ap.add_argument("--aa-steps", type=int, default=None, help="steps per atlas cell [64; quick 4]")
    ap.add_argument("--fv-layers", default=None, help="layers of the Lucent pair [blocks.2,blocks.4,bn2]")
    ap.add_argument("--fv-units", type=int, default=None, help="units of our batch in the pair [8; quick 2]")
    ap.add_argument("--lucent-units", type=int, default=None, help="units Lucent renders [2; quick 1]")
    ap.add_argument("--sweep-layer", default="blocks.4")
    ap.add_argument("--sweep-batches", default=None, help="[1,4,8,16,32,64; quick 1,4,8]")
    ap.add_argument("--sweep-steps", type=int, default=None, help="[8; quick 2]")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats [2; quick 1]")
    ap.add_argument("--skip", default="", help="comma-separated stages or 'lucent', 'sweep', 'plan'")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (Lucent then runs there too)")
    ap.add_argument(
        "--plan-only", action="store_true", help="print the plan's estimate for these settings; run nothing"
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    q = args.quick
    for key, full, quick in (
        ("images", 1000, 40), ("visual_units", 8, 2), ("steps", 64, 4), ("rf_units", 4, 1),
        ("rf_top", 2, 1), ("concepts_n", 8, 3), ("grid", 8, 3), ("aa_steps", 64, 4), ("fv_units", 8, 2),
        ("lucent_units", 2, 1),
        ("sweep_batches", "1,4,8,16,32,64", "1,4,8"), ("sweep_steps", 8, 2), ("repeats", 2, 1),
        ("fv_layers", "blocks.2,blocks.4,bn2", "blocks.4"), ("one_layer", "blocks.4", "blocks.4"),
        ("layers", "stages", "blocks.1,bn2"),
    ):  # fmt: skip
        if getattr(args, key) is None:
            setattr(args, key, quick if q else full)
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    out_json = args.out or Path(__file__).with_name("microscope_quick.json" if q else "microscope.json")
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)

    folder = cifar_folder(args.archive, args.images)
    subject = convscope.load("efficientnet_lite0", device=args.device)
    layers = subject.layers.select(args.layers.split(",") if "," in args.layers else args.layers)
    visual_units = {name: rf_units(subject.layer(name).units, args.visual_units, 0, name) for name in layers}
    print(f"{args.images} CIFAR-10 test photos in {folder}; layers {', '.join(layers)}; "
          f"{torch.get_num_threads()} threads", flush=True)  # fmt: skip
    if args.plan_only:
        kw = dict(
            layers=layers, units=visual_units, concepts=f"nmf:{args.concepts_n}", options=stage_options(args)
        )
        stages = [s for s in STAGE_ORDER if s not in args.skip]
        tmp = Path(tempfile.mkdtemp(prefix="convscope-bench-plan-")) / "atlas"
        plan = microscope_to_atlas(subject, folder, tmp, stages=stages, plan_only=True, **kw).plan
        for p in plan:
            print(f"  {p.name:<17} {fmt(p.seconds):>9}  {p.note}")
        print(f"  {'total':<17} {fmt(sum(p.seconds or 0 for p in plan)):>9}")
        return
    atlas = Path(tempfile.mkdtemp(prefix="convscope-bench-microscope-")) / "atlas"
    t0 = time.perf_counter()
    times, kw = run_stages(subject, folder, atlas, args, layers, visual_units)
    total = time.perf_counter() - t0
    projected = project(subject, times, args, layers, visual_units, args.one_layer, args.images)
    planned = {} if "plan" in args.skip else plans(subject, folder, kw, args, layers)

    print(f"\nstages on {args.images} images (projection: every unit of {len(layers)} layers, "
          f"{args.project_images} images)")  # fmt: skip
    print(f"{'stage':<17} {'measured':>9} {'plan':>9} {'projected':>10} {'plan (all)':>11}  rate")
    for stage, t in times.items():
        plan = planned.get("measured_settings", {}).get(stage, {}).get("seconds")
        plan_all = planned.get("every_unit", {}).get(stage, {}).get("seconds")
        p = projected[stage]
        if stage in ("scan", "dissect"):
            rate = f"{args.images / t['wall_s']:.1f} images/s"
        elif stage in ("visuals", "rf"):
            rate = ", ".join(f"{k} {v:.2f} s/unit" for k, v in p["per_unit_s"].items())
        else:
            rate = f"{p['data_s']:.1f} s data + {p['fixed_s']:.1f} s fixed on {args.one_layer}"
        cells = f"{t['wall_s']:8.1f}s {fmt(plan):>9} {fmt(p['seconds']):>10} {fmt(plan_all):>11}"
        print(f"{stage:<17} {cells}  {rate}")
    print(f"{'total':<17} {total:8.1f}s {'':>9} {fmt(sum(p['seconds'] for p in projected.values())):>10}")

    pairs = {}
    if "lucent" not in args.skip:
        print(f"\nfeature visualisation, {args.steps} steps at {args.size} px: units x steps / s")
        for layer in [s.strip() for s in args.fv_layers.split(",") if s.strip()]:
            units = rf_units(subject.layer(layer).units, args.fv_units, 2, layer)
            pairs[layer] = r = lucent_pair(subject, layer, units, args.lucent_units, args)
            ours, theirs = r["convscope_units_steps_per_s"], r["lucent_units_steps_per_s"]
            print(f"  {layer:<9} convscope {ours:7.2f} ({len(units)} in one batch)  lucent {theirs:7.2f} "
                  f"(one at a time)  {r['speedup']:.2f}x; objective {r['convscope_mean_objective']:.2f} "
                  f"vs {r['lucent_mean_objective']:.2f}")  # fmt: skip
    sweep = {}
    if "sweep" not in args.skip:
        batches = [int(b) for b in args.sweep_batches.split(",")]
        sweep = batch_sweep(subject, args.sweep_layer, batches, args)
        print(f"\nbatch sweep, {args.sweep_layer}, {args.sweep_steps} steps: units x steps / s")
        for b, r in sweep["units_steps_per_s"].items():
            print(f"  batch {b:>3}: {r:7.2f}")
        print(f"  within 10% of the best from batch {sweep['saturates_at']} "
              f"(batch=None chose {sweep['auto_batch']} for {max(batches)} units)")  # fmt: skip

    result = {
        "model": "efficientnet_lite0",
        "quick": q,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "settings": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items() if k != "out"}
        | {
            "archive": str(args.archive),
            "layers": layers,
            "visual_units": visual_units,
            "microscope_defaults": DEFAULTS,
        },  # fmt: skip
        "stages": times,
        "total_s": total,
        "projected": projected,
        "projected_total_s": sum(p["seconds"] for p in projected.values()),
        "plan": planned,
        "lucent": pairs,
        "sweep": sweep,
    }
    out_json.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out_json}")


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f}s" if seconds < 5400 else f"{seconds / 3600:.1f}h"


if __name__ == "__main__":
    main()
