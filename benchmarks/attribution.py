"""Per-image time of each attribution method and metric, side by side with its peer library at
equal settings, in one run.

    python benchmarks/attribution.py [--quick] [--batches 1,16] [--repeats 3] [--only NAME]

Model: the offline default, ``convscope.load("efficientnet_lite0")``, on 8 bundled photos
(scikit-image samples) preprocessed as the subject does (224 px); batch 16 is the 8 photos and
their mirror images. Peers: Captum (gradient methods, occlusion), pytorch-grad-cam (the CAM
family, on ``--cam-layer``), Zennit (LRP, EpsilonPlus with the canonizers convscope picks) and
Quantus 0.6 (metrics, on NumPy arrays, as Quantus is used; ROAD and the confidence metrics
against pytorch-grad-cam's, as in tests/attribution/test_metrics.py). Captum's guided
backpropagation and deconvolution get a copy of the model whose ``nn.ReLU6`` modules are
``nn.ReLU`` subclasses computing ReLU6, which Captum can hook (on the model itself Captum returns
the plain gradient; see tests/attribution/test_references.py).

At batch 1 each timed call runs the images one at a time; at batch 16 one call takes the batch.
Every pair is warmed up, then timed alternately (ours, peer) ``--repeats`` times in one process;
the median per-image seconds are reported, and ``speedup`` = peer time / our time (> 1: convscope
is faster). Expensive pairs (marked ``heavy``) run on ``--heavy-images`` photos at batch 1 and
``--heavy-repeats`` times. Deterministic metrics also report the largest relative difference of
the two libraries' values (``max_rel_diff``).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import convscope
from convscope.attribution import metrics as M
from convscope.attribution.targets import Target
from convscope.inputs.samples import sample_image

PHOTOS = (
    "chelsea",
    "coffee",
    "astronaut",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "camera",
)


class _CaptumReLU6(nn.ReLU):
    """An nn.ReLU (so Captum hooks it) that computes ReLU6."""

    def forward(self, x):
        return nn.functional.relu6(x)


def hookable_twin(model: nn.Module) -> nn.Module:
    twin = copy.deepcopy(model)
    for mod in list(twin.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, nn.ReLU6):
                setattr(mod, name, _CaptumReLU6())
    return twin


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def per_call(fn, args: tuple, batch: int):
    """A zero-argument callable running ``fn(x, y[, maps])`` on the images one at a time (batch 1)
    or at once."""
    if batch == 1:
        return lambda: [fn(*(t[i : i + 1] for t in args)) for i in range(len(args[0]))]
    return lambda: fn(*args)


def rel_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b))))


def method_pairs(subject, args):
    """name -> (peer, heavy, ours(x, y), theirs(x, y))."""
    import pytorch_grad_cam as gc
    from captum import attr as ca
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlus

    from convscope.attribution.lrp import canonizers_for

    m = subject.model
    twin = hookable_twin(m)
    layer = args.cam_layer
    cam_module = dict(m.named_modules())[layer]
    steps, samples = args.steps, args.samples
    win, stride = args.window, args.stride
    # Perturbation methods: ours at its default batch (auto_batch, sized by memory), the peer at
    # the same batch where it takes one (pytorch-grad-cam's Score-CAM has a fixed 16).
    from convscope.attribution.batching import auto_batch

    per = auto_batch(subject, torch.zeros(1, 3, *subject.input_size))

    def tgt(y):
        return Target("class", tuple(int(c) for c in y))

    def ex(method, **kw):
        return lambda x, y: convscope.explain(subject, x, method, target=tgt(y), **kw)

    def req(x):
        return x.clone().requires_grad_()

    def cam(cls, **kw):
        def run(x, y):
            with cls(model=m, target_layers=[cam_module], **kw) as c:
                return c(input_tensor=x, targets=[ClassifierOutputTarget(int(c_)) for c_ in y])

        return run

    def fullgrad(x, y):
        with gc.FullGrad(model=m, target_layers=[]) as c:
            return c(input_tensor=x, targets=[ClassifierOutputTarget(int(c_)) for c_ in y])

    def zennit_lrp(x, y):
        with torch.no_grad():
            out = m(x)
        onehot = torch.zeros_like(out)
        idx = torch.arange(len(x)), torch.as_tensor(y)
        onehot[idx] = out[idx]
        with Gradient(m, EpsilonPlus(canonizers=canonizers_for(m))) as attributor:
            return attributor(x, onehot)[1]

    def smooth_captum(x, y):
        # our noise is a fraction of each image's range; Captum's stdevs is absolute: pass the same
        span = float(x.amax() - x.amin())
        nt = ca.NoiseTunnel(ca.Saliency(m))
        return nt.attribute(
            req(x),
            nt_type="smoothgrad",
            nt_samples=samples,
            stdevs=0.15 * span,
            target=[int(c) for c in y],
            abs=False,
        )

    C = "captum"
    G = "pytorch-grad-cam"
    pairs = {
        "saliency": (
            C,
            False,
            ex("saliency"),
            lambda x, y: ca.Saliency(m).attribute(req(x), target=[int(c) for c in y]),
        ),
        "input_x_gradient": (
            C,
            False,
            ex("input_x_gradient"),
            lambda x, y: ca.InputXGradient(m).attribute(req(x), target=[int(c) for c in y]),
        ),
        f"integrated_gradients ({steps} steps)": (
            C,
            False,
            ex("integrated_gradients", steps=steps, baseline="zero", batch=16),
            lambda x, y: ca.IntegratedGradients(m).attribute(
                x,
                target=[int(c) for c in y],
                n_steps=steps,
                internal_batch_size=16,
                method="riemann_trapezoid",
            ),
        ),
        f"smoothgrad ({samples} samples)": (C, False, ex("smoothgrad", samples=samples), smooth_captum),
        "guided": (
            C,
            False,
            ex("guided"),
            lambda x, y: ca.GuidedBackprop(twin).attribute(req(x), target=[int(c) for c in y]),
        ),
        "deconvnet": (
            C,
            False,
            ex("deconvnet"),
            lambda x, y: ca.Deconvolution(twin).attribute(req(x), target=[int(c) for c in y]),
        ),
        f"occlusion ({win} px / {stride}, {per} per eval)": (
            C,
            True,
            ex("occlusion", window=win, stride=stride, fill="zero"),
            lambda x, y: ca.Occlusion(m).attribute(
                x,
                sliding_window_shapes=(3, win, win),
                strides=(3, stride, stride),
                baselines=0,
                target=[int(c) for c in y],
                perturbations_per_eval=per,
            ),
        ),
        "gradcam": (G, False, ex("gradcam", layer=layer), cam(gc.GradCAM)),
        "gradcam++": (G, False, ex("gradcam++", layer=layer), cam(gc.GradCAMPlusPlus)),
        "layercam": (G, False, ex("layercam", layer=layer), cam(gc.LayerCAM)),
        "hirescam": (G, False, ex("hirescam", layer=layer), cam(gc.HiResCAM)),
        "xgradcam": (G, False, ex("xgradcam", layer=layer), cam(gc.XGradCAM)),
        "eigencam": (G, False, ex("eigencam", layer=layer), cam(gc.EigenCAM)),
        "eigengradcam": (G, False, ex("eigengradcam", layer=layer), cam(gc.EigenGradCAM)),
        "fullgrad": (G, False, ex("fullgrad"), fullgrad),
        f"scorecam ({per} per pass, theirs 16)": (G, True, ex("scorecam", layer=layer), cam(gc.ScoreCAM)),
        "ablationcam (batch 32)": (
            G,
            True,
            ex("ablationcam", layer=layer, batch=32),
            cam(gc.AblationCAM, batch_size=32),
        ),
        "lrp (epsilon_plus)": ("zennit", False, ex("lrp", composite="epsilon_plus"), zennit_lrp),
    }
    # black-box methods: Captum's KernelShap / Lime on our SLIC superpixels (computed inside both
    # timed calls), the same seed and samples; TorchRay's rise on the same masks (made inside both)
    from convscope.attribution.blackbox import rise_masks, rise_upsample, superpixels

    segs, bb_samples, bb_batch = args.segments, args.bb_samples, per

    def captum_superpixel(cls):
        def run(x, y):
            seg = superpixels(subject, x, segs)
            out = []
            for i in range(len(x)):
                torch.manual_seed(0)
                a = cls(lambda inp, c=int(y[i]): m(inp)[:, c]).attribute(
                    x[i : i + 1],
                    baselines=torch.zeros_like(x[i : i + 1]),
                    feature_mask=seg[i][None, None],
                    n_samples=bb_samples,
                    perturbations_per_eval=bb_batch,
                )
                out.append(a[0, 0])
            return torch.stack(out)

        return run

    n_masks, cells = args.masks, 7

    def torchray_rise(x, y):
        from torchray.attribution.rise import rise

        masks = rise_upsample(*rise_masks(n_masks, tuple(x.shape[2:]), cells, 0.5, 0), tuple(x.shape[2:]))
        with torch.no_grad():
            sal = rise(m, x, filter_masks=masks[:, None], num_masks=n_masks, batch_size=per)
        return sal[torch.arange(len(x)), torch.as_tensor(y)]

    bb = dict(segments=segs, samples=bb_samples, fill="zero", seed=0)
    pairs[f"kernel_shap ({segs} superpixels, {bb_samples} samples)"] = (
        C,
        True,
        ex("kernel_shap", **bb),
        captum_superpixel(ca.KernelShap),
    )
    pairs[f"lime ({segs} superpixels, {bb_samples} samples)"] = (
        C,
        True,
        ex("lime", **bb),
        captum_superpixel(ca.Lime),
    )
    pairs[f"rise ({n_masks} masks, 7 cells, batch {per})"] = (
        "torchray",
        True,
        ex("rise", masks=n_masks, cells=cells, p=0.5, seed=0),
        torchray_rise,
    )
    return pairs


def metric_pairs(subject, args, maps: torch.Tensor):
    """name -> (peer, heavy, ours(x, y, a), theirs(x, y, a), deterministic); ``a`` are the saliency
    maps of the images ``x``, the same for both libraries."""
    import quantus
    from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
    from pytorch_grad_cam.metrics.perturbation_confidence import (
        PerturbationConfidenceMetric,
        RemoveMostRelevantFirst,
    )
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    m = subject.model
    h, w = maps.shape[-2:]

    def crop(t):
        return t[..., 1:-1, 1:-1].contiguous()

    def q(metric, x, y, a, explain=False, crop_to=None, **kw):
        a = a.numpy()[:, None]
        if crop_to:
            x, a = crop(x), crop(torch.as_tensor(a)).numpy()
        extra = {}
        if explain:
            extra["explain_func"] = _quantus_saliency(subject)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return metric(
                model=m, x_batch=x.numpy(), y_batch=np.asarray(y), a_batch=a, device="cpu", **extra, **kw
            )

    patch, regions = args.patch, args.regions
    boxes = (h // 4, w // 4, 3 * h // 4, 3 * w // 4)

    box_mask = np.zeros((len(maps), 1, h, w), np.float32)  # the central half of each image
    box_mask[:, :, boxes[1] : boxes[3], boxes[0] : boxes[2]] = 1
    box_bool = torch.as_tensor(box_mask[:, 0] > 0)

    def masks_for(x):
        return box_mask[: len(x)]

    def gc_targets(y):
        return [ClassifierOutputSoftmaxTarget(int(c)) for c in y]

    Q = "quantus"
    pairs = {
        # Quantus steps over channel-pixels and wants 3 * step to divide H * W, which no step
        # does at 224 px: both run on the central 222 px, 1369 pixels (37 x 37) a step, 36 steps
        "pixel_flipping (222 px, 36 steps)": (
            Q,
            False,
            lambda x, y, a: M.pixel_flipping(subject, crop(x), crop(a), y, step=37 * 37, curve=True),
            lambda x, y, a: q(
                quantus.PixelFlipping(features_in_step=3 * 37 * 37, disable_warnings=True),
                x,
                y,
                a,
                crop_to=222,
            ),
            True,
        ),
        f"region_perturbation ({patch} px, {regions} regions)": (
            Q,
            False,
            lambda x, y, a: M.region_perturbation(subject, x, a, y, patch=patch, regions=regions, curve=True),
            lambda x, y, a: q(
                quantus.RegionPerturbation(
                    patch_size=patch, regions_evaluation=regions, disable_warnings=True
                ),
                x,
                y,
                a,
            ),
            True,
        ),
        f"faithfulness_correlation ({args.runs} runs, subset {args.subset})": (
            Q,
            False,
            lambda x, y, a: M.faithfulness_correlation(subject, x, a, y, runs=args.runs, subset=args.subset),
            lambda x, y, a: q(
                quantus.FaithfulnessCorrelation(
                    nr_runs=args.runs, subset_size=args.subset, return_aggregate=False, disable_warnings=True
                ),
                x,
                y,
                a,
            ),
            False,
        ),
        f"infidelity (patch {patch})": (
            Q,
            False,
            lambda x, y, a: M.infidelity(subject, x, a, y, patch_sizes=(patch,)),
            lambda x, y, a: q(
                quantus.Infidelity(perturb_patch_sizes=[patch], n_perturb_samples=1, disable_warnings=True),
                x,
                y,
                a,
            ),
            False,
        ),
        f"max_sensitivity ({args.sens_samples} samples, saliency)": (
            Q,
            False,
            lambda x, y, a: M.max_sensitivity(
                subject, x, a, y, method="saliency", samples=args.sens_samples, radius=0.2
            ),
            lambda x, y, a: q(
                quantus.MaxSensitivity(nr_samples=args.sens_samples, lower_bound=0.2, disable_warnings=True),
                x,
                y,
                a,
                explain=True,
            ),
            False,
        ),
        "pointing_game": (
            Q,
            False,
            lambda x, y, a: M.pointing_game(subject, x, a, y, masks=box_bool[: len(x)]),
            lambda x, y, a: q(quantus.PointingGame(disable_warnings=True), x, y, a, s_batch=masks_for(x)),
            True,
        ),
        "attribution_localisation": (
            Q,
            False,
            lambda x, y, a: M.attribution_localisation(subject, x, a, y, masks=box_bool[: len(x)]),
            lambda x, y, a: q(
                quantus.AttributionLocalisation(disable_warnings=True), x, y, a, s_batch=masks_for(x)
            ),
            True,
        ),
        "road (morf, 20/50/80 %, noise 0)": (
            "pytorch-grad-cam",
            False,
            lambda x, y, a: M.road(subject, x, a, y, percentiles=(20, 50, 80), noise=0, curve=True),
            lambda x, y, a: np.stack(
                [
                    PerturbationConfidenceMetric(RemoveMostRelevantFirst(p, NoisyLinearImputer(noise=0)))(
                        x, a.numpy(), gc_targets(y), m
                    )
                    for p in (20, 50, 80)
                ],
                1,
            ),
            True,
        ),
        "average_drop + increase_in_confidence": (
            "pytorch-grad-cam",
            False,
            lambda x, y, a: (
                M.average_drop(subject, x, a, y),
                M.increase_in_confidence(subject, x, a, y),
            ),
            lambda x, y, a: (
                DropInConfidence()(x, scale_cam_image(a.numpy()), gc_targets(y), m),
                IncreaseInConfidence()(x, scale_cam_image(a.numpy()), gc_targets(y), m),
            ),
            False,  # pytorch-grad-cam's drop is not divided by the probability (see the test)
        ),
        "model_randomisation (MPRT, saliency, all layers)": (
            Q,
            True,
            lambda x, y, a: M.model_randomisation(subject, x, a, y, method="saliency", reduce="none"),
            lambda x, y, a: q(quantus.MPRT(disable_warnings=True), x, y, explain=True),
            False,
        ),
    }
    return pairs


def _quantus_saliency(subject):
    def run(model, inputs, targets, **kw):
        s = convscope.Subject(model, subject.preprocess, subject.labels, "q")
        t = Target("class", tuple(int(c) for c in np.asarray(targets).ravel()))
        return convscope.explain(s, torch.as_tensor(inputs), "saliency", target=t).maps[:, None]

    return run


def bench(name, peer, heavy, ours, theirs, data, n, args, rows, check=False):
    if heavy and n == 1:
        data = tuple(t[: args.heavy_images] for t in data)
    x = data[0]
    repeats = args.heavy_repeats if heavy else args.repeats
    fa, fb = per_call(ours, data, n), per_call(theirs, data, n)
    # warm-up on one image (the first call of a method builds hooks, caches, kernels)
    first = tuple(t[:1] for t in data)
    ra, rb = ours(*first), theirs(*first)
    diff = None
    if check:
        if isinstance(ra, tuple):
            ra, rb = ra[0], rb[0]
        diff = rel_diff(ra, rb)
    a, b = [], []
    for _ in range(repeats):
        a.append(timed(fa))
        b.append(timed(fb))
    ta, tb = statistics.median(a) / len(x), statistics.median(b) / len(x)
    row = dict(method=name, batch=n, images=len(x), ours_s_per_image=ta, peer=peer, peer_s_per_image=tb)
    row["speedup"] = tb / ta
    if diff is not None:
        row["max_rel_diff"] = diff
    rows.append(row)
    note = "" if diff is None else f"   max rel diff {diff:.1e}"
    print(
        f"batch {n:2d}  {name:52s} ours {ta * 1000:9.1f} ms/img   {peer:16s} {tb * 1000:9.1f} ms/img   "
        f"speed-up {tb / ta:6.2f}x{note}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run: batch 1 and 2, small settings")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--images", type=int, default=8, help="photos at batch 1 (cheap pairs)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--heavy-images", type=int, default=2)
    ap.add_argument("--heavy-repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--cam-layer", default="blocks.5")
    ap.add_argument("--steps", type=int, default=16, help="integrated gradients steps")
    ap.add_argument("--samples", type=int, default=8, help="smoothgrad samples")
    ap.add_argument("--window", type=int, default=56)
    ap.add_argument("--stride", type=int, default=28)
    ap.add_argument("--patch", type=int, default=28)
    ap.add_argument("--regions", type=int, default=16)
    ap.add_argument("--runs", type=int, default=10, help="faithfulness correlation runs")
    ap.add_argument("--subset", type=int, default=224 * 16)
    ap.add_argument("--sens-samples", type=int, default=3)
    ap.add_argument("--segments", type=int, default=25, help="kernel_shap / lime superpixels")
    ap.add_argument("--bb-samples", type=int, default=64, help="kernel_shap / lime samples")
    ap.add_argument("--masks", type=int, default=128, help="rise masks")
    ap.add_argument("--only", default="", help="run only pairs whose name contains this")
    ap.add_argument("--skip", default="", help="comma-separated substrings of pairs to leave out")
    ap.add_argument("--kind", choices=("all", "methods", "metrics"), default="all")
    ap.add_argument("--out", default=str(Path(__file__).with_name("attribution.json")))
    args = ap.parse_args()
    if args.quick:
        args.batches, args.images, args.repeats, args.heavy_images = "1,2", 2, 1, 1
        args.steps, args.samples, args.window, args.stride = 4, 2, 112, 112
        args.runs, args.subset, args.regions, args.patch = 3, 512, 4, 32
        args.segments, args.bb_samples, args.masks = 9, 16, 32
        args.skip = args.skip or "scorecam,ablationcam,model_randomisation,pixel_flipping,lrp"
    if args.threads:
        torch.set_num_threads(args.threads)
    skip = [s for s in args.skip.split(",") if s]

    torch.manual_seed(0)
    subject = convscope.load("efficientnet_lite0")
    photos = subject.load_images([sample_image(n) for n in PHOTOS])
    photos = torch.cat([photos, photos.flip(-1)])  # 16: the photos and their mirror images
    with torch.no_grad():
        labels = subject.model(photos).argmax(1).numpy()
    subject.model.zero_grad(set_to_none=True)
    x_req = photos[:2].clone().requires_grad_()
    subject.model(x_req).sum().backward()
    subject.model.zero_grad(set_to_none=True)

    saliency = convscope.explain(subject, photos, "saliency", target=Target("class", tuple(labels.tolist())))
    maps = torch.as_tensor(np.asarray(saliency.maps, np.float32))
    rows = []
    mpairs = metric_pairs(subject, args, maps)
    batches = [int(b) for b in args.batches.split(",")]
    for n in batches:
        k = args.images if n == 1 else n
        x, y, a = photos[:k], labels[:k], maps[:k]
        for name, (peer, heavy, ours, theirs) in method_pairs(subject, args).items():
            if args.kind != "metrics" and args.only in name and not any(s in name for s in skip):
                bench(name, peer, heavy, ours, theirs, (x, y), n, args, rows)
                write(args, rows)
        for name, (peer, heavy, ours, theirs, det) in mpairs.items():
            if args.kind != "methods" and args.only in name and not any(s in name for s in skip):
                bench(name, peer, heavy, ours, theirs, (x, y, a), n, args, rows, check=det)
                write(args, rows)
    write(args, rows)
    print(f"wrote {args.out}")


def write(args, rows) -> None:
    Path(args.out).write_text(
        json.dumps(
            {
                "model": "efficientnet_lite0 (convscope.load default)",
                "images": list(PHOTOS) + ["(mirrored)"],
                "size": 224,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
                "rows": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
