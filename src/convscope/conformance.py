"""The conformance suite: every user verb run on a registry of architectures with random weights.

One check body per capability (:data:`CHECKS`), run on each member of :data:`ARCHITECTURES`
(torchvision and timm models, random init, no download). A check verifies shapes, finite values,
that no forward/backward hook is left on the model afterwards, and that the result renders
(``to_image()`` is not blank). :func:`run_conformance` returns a :class:`ConformanceReport`:
per (architecture, capability) ``ok``, ``failed`` (the one-line error) or ``n/a`` (why), with
timings; :meth:`ConformanceReport.table` is the Markdown compatibility table.

``python -m convscope.conformance [--all] [--out FILE]`` prints or writes that table (the fast
members only, unless ``--all``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from convscope.errors import first_line

__all__ = [
    "ARCHITECTURES",
    "CAPABILITIES",
    "Architecture",
    "CheckResult",
    "ConformanceReport",
    "NotApplicable",
    "load_member",
    "run_check",
    "run_conformance",
]


@dataclass(frozen=True)
class Architecture:
    """One member of the registry: ``spec`` as :func:`convscope.load` takes it (random weights),
    ``size`` the input side in px (the smallest the model accepts; None: its own), ``slow``
    whether loading it and running every check took over :data:`SLOW_SECONDS` on a 2-core CPU
    (measured; MaxViT, which fails before its checks run, is marked slow by its size: a 224 px
    transformer, and ConvNeXt-atto fast: a 64 px CNN)."""

    name: str
    spec: str
    size: int | None = None
    slow: bool = False


ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture("alexnet", "torchvision:alexnet", 64),
    Architecture("vgg11", "torchvision:vgg11", 64, slow=True),
    Architecture("resnet18", "torchvision:resnet18", 64),
    Architecture("densenet121", "torchvision:densenet121", 64, slow=True),
    Architecture("mobilenet_v3_small", "torchvision:mobilenet_v3_small", 64),
    Architecture("efficientnet_b0", "torchvision:efficientnet_b0", 64),
    Architecture("regnet_y_400mf", "torchvision:regnet_y_400mf", 64),
    Architecture("convnext_tiny", "torchvision:convnext_tiny", 64, slow=True),
    Architecture("googlenet", "torchvision:googlenet", 64),
    Architecture("inception_v3", "torchvision:inception_v3", 80),
    Architecture("vit_b_16", "torchvision:vit_b_16", None, slow=True),
    Architecture("efficientnet_lite0", "timm:efficientnet_lite0", 64),
    Architecture("convnext_atto", "timm:convnext_atto", 64),
    Architecture("vit_tiny_patch16_224", "timm:vit_tiny_patch16_224", None, slow=True),
    Architecture("vit_small_patch14_reg4_dinov2", "timm:vit_small_patch14_reg4_dinov2", None, slow=True),
    Architecture("vit_base_patch16_clip_224", "timm:vit_base_patch16_clip_224", None, slow=True),
    Architecture("swin_tiny_patch4_window7_224", "timm:swin_tiny_patch4_window7_224", None, slow=True),
    Architecture("maxvit_tiny_tf_224", "timm:maxvit_tiny_tf_224", None, slow=True),
)
BY_NAME = {a.name: a for a in ARCHITECTURES}

CAPABILITIES = (
    "layers",
    "rf",
    "record",
    "scan",
    "explain",
    "visualize",
    "invert",
    "attack",
    "dissect",
    "features",
    "empirical_rf",
)


class NotApplicable(Exception):
    """A capability that does not apply to an architecture (the message says why)."""


@dataclass
class CheckResult:
    """The outcome of one check: ``status`` ``ok``, ``failed`` or ``n/a``; ``detail`` the one-line
    error or reason (for explain: the methods that failed or did not apply); ``seconds`` wall time."""

    architecture: str
    capability: str
    status: str
    detail: str = ""
    seconds: float = 0.0


@dataclass
class ConformanceReport:
    """Every :class:`CheckResult` of a run, in order."""

    results: list[CheckResult] = field(default_factory=list)
    load_seconds: dict[str, float] = field(default_factory=dict)  # building each member

    def get(self, architecture: str, capability: str) -> CheckResult | None:
        """The result of one (architecture, capability), or None if it was not run."""
        for r in self.results:
            if r.architecture == architecture and r.capability == capability:
                return r
        return None

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "failed"]

    def table(self) -> str:
        """Markdown: architecture x capability (ok, ok* (ok, with a note), FAIL, n/a) and the
        seconds per architecture, then one line per failure or note saying exactly what and why."""
        archs = list(dict.fromkeys(r.architecture for r in self.results))
        caps = list(dict.fromkeys(r.capability for r in self.results))
        mark = {"ok": "ok", "failed": "**FAIL**", "n/a": "n/a"}
        lines = [
            "| architecture | " + " | ".join(caps) + " | seconds |",
            "|---" * (len(caps) + 2) + "|",
        ]
        for a in archs:
            cells, total = [], self.load_seconds.get(a, 0.0)
            for c in caps:
                r = self.get(a, c)
                if r is None:
                    cells.append("")
                    continue
                total += r.seconds
                cells.append(mark[r.status] + ("*" if r.status == "ok" and r.detail else ""))
            lines.append(f"| {a} | " + " | ".join(cells) + f" | {total:.0f} |")
        notes = [r for r in self.results if r.detail]
        if notes:
            lines += ["", "Details:", ""]
            for r in notes:
                lines.append(f"- {r.architecture} / {r.capability} ({r.status}): {r.detail}")
        return "\n".join(lines) + "\n"


# -- members ----------------------------------------------------------------------------------------
def load_member(arch: Architecture | str):
    """The :class:`~convscope.subject.Subject` of a registry member: random weights, at its input size."""
    from convscope.subject import Subject
    from convscope.zoo import load

    arch = BY_NAME[arch] if isinstance(arch, str) else arch
    torch.manual_seed(0)
    subject = load(arch.spec, weights="none")
    if arch.size is None or tuple(subject.input_size) == (arch.size, arch.size):
        return subject
    pre = dataclasses.replace(subject.preprocess, size=(arch.size, arch.size), resize=arch.size)
    small = Subject(subject.model, pre, subject.labels, subject.name)
    small.spec = subject.spec
    return small


def hook_count(model: torch.nn.Module) -> int:
    """How many forward, forward-pre and backward hooks the modules of ``model`` hold."""
    n = 0
    for m in model.modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            n += len(getattr(m, attr, {}) or {})
    return n


def _finite(name: str, a) -> None:
    a = np.asarray(a.detach().float().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    if a.size == 0:
        raise AssertionError(f"{name} is empty")
    if not np.isfinite(a).all():
        raise AssertionError(f"{name} has non-finite values")


def _renders(result, **options) -> None:
    img = np.asarray(result.to_image(**options).convert("RGB"))
    if img.size == 0 or img.std() == 0:
        raise AssertionError(f"{type(result).__name__}.to_image() is blank")


def _stage_layers(subject) -> list[str]:
    """The ``stages`` layers; where that names none (a failure the layers check records), the
    last spatial layer of the table, so that the other checks still run."""
    from convscope.errors import UserInputError

    try:
        names = subject.layers.select("stages")
    except UserInputError:
        names = []
    if names:
        return names
    maps = [i for i in subject.layers if i.is_map]
    return [max(maps, key=lambda i: i.order).name] if maps else []


def _target_layer(subject) -> str:
    """The deepest spatial layer (a map larger than 1 x 1; the global pool is not one): the
    layer a user studies first, on a CNN and on a ViT (whose token blocks are maps too)."""
    maps = [i for i in subject.layers if i.is_map and i.shape[1] * i.shape[2] > 1]
    if not maps:
        maps = [i for i in subject.layers if i.shape is not None]
    return max(maps, key=lambda i: i.order).name


def _last_conv(subject) -> str:
    """The last convolution that runs (the layer the Zeiler-Fergus projection starts from)."""
    return max((subject.layers.get(n) for n in subject.layers.select("all-conv")), key=lambda i: i.order).name


class Fixture:
    """What the checks share for one member: the subject, a tiny batch, image files, a layer."""

    def __init__(self, arch: Architecture, folder: Path):
        self.arch = arch
        self.folder = folder
        self.subject = load_member(arch)
        h, w = self.subject.input_size
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(2, 3, h, w, generator=g)
        self._images: Path | None = None
        self._concepts: Path | None = None

    @property
    def layer(self) -> str:
        return _target_layer(self.subject)

    def images(self) -> Path:
        """A folder of 6 small random-noise PNG files."""
        if self._images is None:
            from PIL import Image

            root = self.folder / "images"
            root.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(0)
            h, w = self.subject.input_size
            for i in range(6):
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"{i}.png")
            self._images = root
        return self._images

    def concepts(self) -> Path:
        if self._concepts is None:
            from convscope.dissect import make_synthetic_broden

            h, _ = self.subject.input_size
            self._concepts = make_synthetic_broden(self.folder / "broden", n=4, size=h, seg=max(h // 2, 8))
        return self._concepts


# -- checks -------------------------------------------------------------------------------------------
def check_layers(f: Fixture) -> str:
    table = f.subject.layers
    if len(table) == 0:
        raise AssertionError("the layer table is empty")
    ran = [i for i in table if i.shape is not None]
    if not ran:
        raise AssertionError("no layer has a shape")
    unknown = [i.name for i in ran if i.rf is None]
    if unknown:
        raise AssertionError(
            f"{len(unknown)} layers have no receptive field (neither finite nor global): "
            + ", ".join(unknown[:4])
        )
    for i in ran:
        rf = i.rf
        if not rf.is_global and not all(math.isfinite(s) and s >= 1 for s in rf.size):
            raise AssertionError(f"{i.name}: receptive field {rf.size} is neither finite nor global")
        if rf.is_global and not rf.reason:
            raise AssertionError(f"{i.name}: its receptive field is global without a reason")
    if not f.subject.layers.select("stages"):
        raise AssertionError("'stages' names no layer")
    return ""


# The rf check measures at most this many layers per member, spread over depth.
RF_LAYERS = 4


def _rf_layers(subject) -> list:
    """Up to :data:`RF_LAYERS` map layers spread over depth: the ``stages`` and the deepest map
    (a ViT's token blocks); where ``stages`` names none, every map larger than 1 x 1."""
    from convscope.errors import UserInputError

    try:
        names = subject.layers.select("stages")
    except UserInputError:
        names = []
    maps = [i for i in subject.layers if i.is_map and i.shape[1] * i.shape[2] > 1]
    pool = [subject.layers.get(n) for n in names] or maps
    if maps:
        pool.append(max(maps, key=lambda i: i.order))
    pool = sorted({i.name: i for i in pool}.values(), key=lambda i: i.order)
    if len(pool) <= RF_LAYERS:
        return pool
    picks = sorted({round(k * (len(pool) - 1) / (RF_LAYERS - 1)) for k in range(RF_LAYERS)})
    return [pool[k] for k in picks]


def check_rf(f: Fixture) -> str:
    """Theoretical receptive fields against gradient support: at the centre and the top-left
    unit of each layer of :func:`_rf_layers`, no input pixel outside the theoretical box may
    have a gradient."""
    from convscope.empirical import gradient_supports

    infos = _rf_layers(f.subject)
    if not infos:
        raise NotApplicable("no spatial map layer")
    missing = [i.name for i in infos if i.rf is None]
    if missing:
        raise AssertionError(
            f"{len(missing)} of the {len(infos)} layers checked have no receptive field: "
            + ", ".join(missing)
        )
    checks = gradient_supports(f.subject, [i.name for i in infos], samples=2)
    # and at the top-left unit, where padding, crops and wrap-around show
    corners = [i for i in infos if i.is_map]
    if corners:
        checks += gradient_supports(f.subject, [i.name for i in corners], [(0, 0)] * len(corners), samples=2)
    left = [c for c in checks if not c.inside]
    if left:
        raise AssertionError(
            "; ".join(
                f"{c.layer} at {c.position}: gradient support {_box(c.support_box)} leaves the "
                f"theoretical box {_box(c.box)} ({c.rf}), {c.outside} px outside"
                for c in left
            )
        )
    _renders(checks[-1])
    notes = [
        f"{c.layer}: {c.claim.replace('_', ' ')} claim, support covers {c.coverage:.0%} of the image"
        for c in checks
        if c.backed is False
    ]
    notes += [f"{c.layer}: no pixel has a gradient" for c in checks if c.support_box is None]
    return "; ".join(notes)


def _box(b) -> str:
    return "(empty)" if b is None else f"y {b[0]}..{b[2]}, x {b[1]}..{b[3]}"


def check_record(f: Fixture) -> str:
    names = _stage_layers(f.subject)
    with f.subject.record(names) as rec:
        out = f.subject(f.x)
    _finite("model output", out)
    for n in names:
        got = rec[n]
        want = f.subject.layers.get(n).shape
        if want is not None and tuple(got.shape[1:]) != tuple(want):
            raise AssertionError(f"{n}: recorded {tuple(got.shape[1:])}, the table says {want}")
        _finite(n, got)
    return ""


def check_scan(f: Fixture) -> str:
    import convscope.verbs as verbs
    from convscope.inputs import open_images

    images = open_images(f.images(), transform=f.subject.transform)
    layer = f.layer
    res = verbs.scan(f.subject, images, layer, k=2, criteria=("max", "mean", "area"), batch_size=3)
    units = f.subject.layers.get(layer).units
    for c in ("max", "mean", "area"):
        top = res.topk(layer, 0, c)
        _finite(f"top-k {c} scores", top.scores)
    if units is None:
        raise AssertionError(f"{layer} has no units")
    _renders(res)
    return ""


def _explain_options(f: Fixture, method: str) -> dict:
    from convscope.attribution import method_options
    from convscope.attribution.cam import default_cam_layer

    takes = set(method_options(method))
    h, _ = f.subject.input_size
    wanted = {
        # the default CAM layer: a class-token ViT's deepest map (after its last attention) is
        # refused, its patch tokens do not reach the output
        "layer": default_cam_layer(f.subject),
        "steps": 4,
        "samples": 2,
        "window": max(h // 4, 4),
        "stride": max(h // 4, 4),
        "batch": 64,
    }
    return {k: v for k, v in wanted.items() if k in takes}


# Score-CAM runs the model once per channel: past this many channels x input pixels it is left out.
SCORECAM_BUDGET = 10_000_000


def check_explain(f: Fixture) -> str:
    import convscope.verbs as verbs
    from convscope.attribution import method_names
    from convscope.attribution.cam import default_cam_layer
    from convscope.errors import UserInputError

    x = f.x[:1]
    failed, skipped = [], []
    units = f.subject.layers.get(default_cam_layer(f.subject)).units or 0
    for method in method_names():
        h, w = f.subject.input_size
        if method == "scorecam" and units * h * w > SCORECAM_BUDGET:
            # One forward pass per channel: left out for time, not because it fails.
            skipped.append(f"scorecam not run ({units} channels at {h} x {w} px: too slow for the suite)")
            continue
        before = hook_count(f.subject.model)
        try:
            # The Zeiler-Fergus projection explains a unit, not a class score.
            target = f"{_last_conv(f.subject)}:0" if method == "zeiler_fergus" else "top"
            amap = verbs.explain(f.subject, x, method, target, **_explain_options(f, method))
            if amap.maps.shape[0] != 1 or amap.maps.shape[-2:] != tuple(x.shape[-2:]):
                raise AssertionError(f"maps {amap.maps.shape} for input {tuple(x.shape)}")
            _finite("maps", amap.maps)
            _renders(amap)
            if hook_count(f.subject.model) != before:
                raise AssertionError("hooks left on the model")
        except UserInputError as e:
            plain = ("sequential stack", "starts at the pixels")  # what the projection needs
            if method == "zeiler_fergus" and any(p in str(e) for p in plain):
                skipped.append(f"{method} n/a (not a plain chain of convolutions from the pixels)")
            else:
                failed.append(f"{method}: {type(e).__name__}: {first_line(e)}")
        except Exception as e:  # record, go on with the next method
            failed.append(f"{method}: {type(e).__name__}: {first_line(e)}")
    if failed:
        ran = len(method_names()) - len(skipped)
        raise AssertionError(f"{len(failed)} of {ran} methods failed: " + "; ".join(failed))
    return "; ".join(skipped)


def check_visualize(f: Fixture) -> str:
    import convscope.verbs as verbs

    res = verbs.visualize(f.subject, f.layer, units=(0, 1), steps=3)
    imgs = np.asarray(res.images)
    if imgs.shape[0] != 2:
        raise AssertionError(f"{imgs.shape[0]} images for 2 units")
    _finite("images", imgs)
    _renders(res)
    return ""


def check_invert(f: Fixture) -> str:
    import convscope.verbs as verbs

    res = verbs.invert(f.subject, f.x[:1], f.layer, steps=3, restarts=1)
    _renders(res)
    return ""


def check_attack(f: Fixture) -> str:
    import convscope.verbs as verbs

    res = verbs.attack(f.subject, f.x[:2], method="pgd", eps=2 / 255, steps=2)
    _renders(res)
    return ""


def check_dissect(f: Fixture) -> str:
    import convscope.verbs as verbs
    from convscope.dissect import BrodenDataset

    data = BrodenDataset(f.concepts())
    res = verbs.dissect(f.subject, data, f.layer, batch_size=2)
    _renders(res)
    return ""


def check_features(f: Fixture) -> str:
    import convscope.verbs as verbs
    from convscope.inputs import open_images

    images = open_images(f.images(), transform=f.subject.transform)
    names = _stage_layers(f.subject)
    fs = verbs.features(f.subject, images, names, pooling="gap", batch_size=3)
    for n in fs.select(None):
        v = fs.get(n)
        if v.shape[0] != 6:
            raise AssertionError(f"{n}: {v.shape[0]} rows for 6 images")
        _finite(n, v)
    _renders(fs)
    return ""


def check_empirical_rf(f: Fixture) -> str:
    import convscope.verbs as verbs

    info = f.subject.layers.get(f.layer)
    if not info.is_map:
        raise NotApplicable(f"{f.layer} is not a spatial map")
    h, _ = f.subject.input_size
    step = max(h // 8, 3)
    res = verbs.empirical_rf(f.subject, f.x[:2], f.layer, 0, patch=step, stride=step)
    _renders(res)
    return ""


CHECKS: dict[str, Callable[[Fixture], str]] = {
    "layers": check_layers,
    "rf": check_rf,
    "record": check_record,
    "scan": check_scan,
    "explain": check_explain,
    "visualize": check_visualize,
    "invert": check_invert,
    "attack": check_attack,
    "dissect": check_dissect,
    "features": check_features,
    "empirical_rf": check_empirical_rf,
}


def run_check(f: Fixture, capability: str) -> CheckResult:
    """Run one check on a fixture; never raises (the outcome is in the result)."""
    start = time.perf_counter()
    before = hook_count(f.subject.model)
    try:
        detail = CHECKS[capability](f)
        if hook_count(f.subject.model) != before:
            raise AssertionError(f"{hook_count(f.subject.model) - before} hooks left on the model")
        status = "ok"
    except NotApplicable as e:
        status, detail = "n/a", str(e)
    except Exception as e:  # the suite records every failure
        status, detail = "failed", f"{type(e).__name__}: {first_line(e, limit=2000)}"
    return CheckResult(f.arch.name, capability, status, detail, time.perf_counter() - start)


def run_conformance(
    names: Sequence[str] | None = None,
    capabilities: Sequence[str] | None = None,
    progress: Callable[[CheckResult], None] | None = None,
) -> ConformanceReport:
    """Run the checks ``capabilities`` (default: all of :data:`CAPABILITIES`) on the registry
    members ``names`` (default: every member). ``progress`` is told each result as it comes."""
    from convscope.errors import NameNotFoundError

    archs = list(ARCHITECTURES) if names is None else [BY_NAME.get(n) or n for n in names]
    for a in archs:
        if isinstance(a, str):
            raise NameNotFoundError(a, list(BY_NAME), what="architecture")
    caps = list(CAPABILITIES if capabilities is None else capabilities)
    for c in caps:
        if c not in CHECKS:
            raise NameNotFoundError(c, list(CHECKS), what="capability")
    report = ConformanceReport()
    for arch in archs:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            try:
                fixture = Fixture(arch, Path(tmp))
                report.load_seconds[arch.name] = time.perf_counter() - start
            except Exception as e:
                line = f"load: {type(e).__name__}: {first_line(e)}"
                took = time.perf_counter() - start
                results = (CheckResult(arch.name, c, "failed", line, took) for c in caps)
            else:
                results = (run_check(fixture, c) for c in caps)
            for r in results:
                report.results.append(r)
                if progress is not None:
                    progress(r)
    return report


PAGE = """# Conformance: every capability on every architecture

Generated by `python -m convscope.conformance --all --out docs/conformance.md --readme README.md`
(do not edit by hand; the suite is `src/convscope/conformance.py`, its tests
`tests/conformance/`). Random weights, no download; input {sizes}. Each check: shapes, finite
values, no hook left on the model, the result renders (`to_image()` not blank). `ok*`: passed,
with a note below; `**FAIL**`: the one-line error is below; `n/a`: does not apply, and why.
Seconds: one run on a shared 2-core CPU, load included (they vary with the machine's load; members
that took about {slow:.0f} s or more are marked slow and run in the test suite only with `CONVSCOPE_SLOW=1`).

"""
BEGIN, END = "<!-- conformance:begin -->", "<!-- conformance:end -->"


def page(report: ConformanceReport) -> str:
    """The Markdown page of a run: how it was made, then :meth:`ConformanceReport.table`."""
    sizes = (
        "the smallest the model accepts (64 px for most CNNs, 80 px for Inception-v3, "
        "the model's own for the transformers)"
    )
    return PAGE.format(sizes=sizes, slow=SLOW_SECONDS) + report.table()


SLOW_SECONDS = 8.0


def write_readme(path: str | Path, report: ConformanceReport) -> None:
    """Replace the text between the conformance markers of ``path`` with the grid of ``report``."""
    text = Path(path).read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} section")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    grid = report.table().split("\n\nDetails:", 1)[0].rstrip("\n")
    Path(path).write_text(f"{head}{BEGIN}\n{grid}\n{END}{tail}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m convscope.conformance", description=__doc__)
    parser.add_argument("--all", action="store_true", help="every member, the slow ones too")
    parser.add_argument("--only", default="", help="comma list of members")
    parser.add_argument("--capabilities", default="", help="comma list of capabilities")
    parser.add_argument("--out", default="", help="write the Markdown page to this file")
    parser.add_argument(
        "--readme", default="", help="put the grid between the conformance markers of this file"
    )
    args = parser.parse_args(argv)
    if args.only:
        names = args.only.split(",")
    else:
        names = [a.name for a in ARCHITECTURES if args.all or not a.slow]
    caps = args.capabilities.split(",") if args.capabilities else None

    def tell(r: CheckResult) -> None:
        line = f"{r.architecture:32s} {r.capability:14s} {r.status:6s} {r.seconds:6.1f}s {r.detail}"
        print(line, flush=True)

    report = run_conformance(names, caps, progress=tell)
    if args.out:
        Path(args.out).write_text(page(report))
    if args.readme:
        write_readme(args.readme, report)
    print(report.table())


if __name__ == "__main__":
    main()
