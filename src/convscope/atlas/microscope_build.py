"""``convscope microscope``: everything about every chosen unit of a model in one atlas, built as
resumable stages recorded in the atlas's stages table (:mod:`convscope.atlas.stages`).

The stages, in run order (each the existing writer of its part of the atlas):

- ``scan``: top-K images under every criterion, unit statistics, random directions
  (:func:`~convscope.atlas.build.scan_to_atlas`; resumes from its checkpoint in the atlas);
- ``visuals``: stored feature visualisations, positive and negative, of the chosen units
  (:func:`~convscope.atlas.visuals_build.visuals_to_atlas`; resumes at the next stored batch);
- ``dissect``: network dissection on the colour names of the data, and on a Broden-format
  folder when one is given (:func:`~convscope.atlas.build.dissect_to_atlas`; a layer set is
  dissected again whole);
- ``rf``: empirical receptive fields of a seeded sample of units per layer (resumes at the next
  unit without one);
- ``concepts``: a learned concept set per layer, when asked (``"nmf:32"``)
  (:func:`~convscope.atlas.concepts_build.concepts_to_atlas`; resumes from its checkpoints);
- ``activation_atlas``: an activation atlas per layer
  (:func:`~convscope.atlas.activation_atlas_build.activation_atlas_to_atlas`; resumes layer by
  layer).

A stage that is done is skipped by a resumed run (its settings must be the same); one that is
running (a killed run) or failed continues by its own mechanism; ``overwrite`` runs the chosen
stages again, replacing their output and nothing else."""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from convscope.accel import Accel
from convscope.atlas.build import dissect_to_atlas, model_spec, scan_to_atlas
from convscope.atlas.store import Atlas, AtlasConflictError
from convscope.errors import ConvscopeError, UserInputError
from convscope.layers import LayerSpec
from convscope.subject import Subject
from convscope.verbs import image_layers

STAGES = ("scan", "visuals", "dissect", "rf", "concepts", "activation_atlas")
# the module each stage's writer lives in (a build without it runs without that stage)
WRITERS = {
    "visuals": "convscope.atlas.visuals_build",
    "activation_atlas": "convscope.atlas.activation_atlas_build",
}
# each stage's settings unless options= says otherwise (the keywords of its writer)
DEFAULTS: dict[str, dict] = {
    "scan": {"k": 16, "criteria": ["max", "mean", "area"], "directions": 8, "batch_size": 32},
    "visuals": {"kinds": ["positive", "negative"], "diversity": 0, "param": "fft", "steps": 256},
    "dissect": {"batch_size": 32},
    # patch/stride "auto": per layer, see rf_grid (a fixed 11 px / 3 px grid costs ~5,000
    # whole-image forwards per top image of a layer that sees the whole image, about an hour per
    # unit of efficientnet_lite0's blocks.4 on a 2-core CPU; rf_grid: ~200, a minute or two)
    "rf": {"units": 8, "top": 4, "patch": "auto", "stride": "auto", "fill": "noise"},
    "concepts": {"k": 16, "visualize": {"steps": 64, "size": 96}},
    "activation_atlas": {"grid": 20, "steps": 128, "size": 64, "layout": "tsne"},
}
# rf_grid: the occluder's stride is the part of the image a unit sees over this (at least 3 px,
# the patch at least 11 px and about twice the stride), so the map has about as many cells
# across the receptive field at every depth
RF_GRID_CELLS = 16
PROBE_IMAGES = 16  # images of the plan's probe scan
PROBE_STEPS = 4  # optimisation steps of the plan's probe visualisation


class MicroscopeStageError(ConvscopeError):
    """A stage of the microscope failed (recorded in the atlas as failed, with this message)."""


@dataclass
class StagePlan:
    """One stage of a microscope run: ``name``, ``action`` (``run``, ``resume``, ``skip``: done
    with these settings, or ``unavailable``), ``seconds`` (the plan's estimate; None when not
    estimated) and ``note`` (what the estimate counts)."""

    name: str
    action: str
    seconds: float | None = None
    note: str = ""


@dataclass
class MicroscopeBuilt:
    """What :func:`microscope_to_atlas` did (or, ``plan_only``, would do): the atlas folder
    ``out``, the ``layers``, the ``plan`` (one :class:`StagePlan` per stage), the stages ``ran``
    now, the ``stages`` table of the atlas after the run (empty for a plan) and ``results``: per
    stage run now, what its writer returned (the scan's :class:`~convscope.scan.result.ScanResult`,
    the visuals' ``VisualsBuilt``...; dissect: a list, one per concept set)."""

    out: Path
    layers: list[str]
    plan: list[StagePlan]
    ran: list[str] = field(default_factory=list)
    stages: list[dict] = field(default_factory=list)
    results: dict = field(default_factory=dict)

    def headline(self) -> str:
        kept = [p.name for p in self.plan if p.action == "skip"]
        return (
            f"microscope of {len(self.layers)} layer(s) in {self.out}: ran {', '.join(self.ran) or 'nothing'}"
            + (f"; kept {', '.join(kept)}" if kept else "")
        )


def available(stage: str) -> bool:
    """Whether this build of convscope has the writer of ``stage``."""
    module = WRITERS.get(stage)
    return module is None or importlib.util.find_spec(module) is not None


def microscope_to_atlas(
    subject: Subject,
    data,
    out: str | Path,
    *,
    layers: LayerSpec = "stages",
    units: str | int | Mapping[str, Sequence[int]] = "all",
    stages: Sequence[str] | None = None,
    concepts: str | None = None,
    broden: str | Path | None = None,
    plan_only: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    seed: int = 0,
    options: Mapping[str, Mapping] | None = None,
    progress: Callable[..., None] | None = None,
) -> MicroscopeBuilt:
    """Build the microscope of ``layers`` (any layer spec) of ``subject`` over the images
    ``data`` (an image source, folder, archive...) in the atlas ``out``: the ``stages`` (None:
    every one this build has; ``concepts`` only with ``concepts="METHOD:N"``), each recorded in
    the atlas's stages table as it starts, ends or fails. ``units``: the units of each layer
    the visualisations are made of: ``"all"``, the first N, or a dict ``{layer: [units]}`` naming
    every layer of the visuals stage (e.g. a seeded sample, :func:`rf_units`); the scan and
    dissection take every unit, the receptive fields a seeded sample; ``broden``: a
    Broden-format folder dissected beside the colour names; ``options``: per stage, keywords
    for its writer over :data:`DEFAULTS`, and ``layers``: that stage's own layer spec instead of
    ``layers``.

    A stage the atlas already records is refused unless ``resume`` (done: skipped, with the
    same settings; killed or failed: continued) or ``overwrite`` (run again, replacing its
    output). ``plan_only``: measure a short probe (a scan of a few images, a few optimisation
    steps of a batch of units) and return the plan with an estimate per stage, writing nothing.
    ``progress(done, total, note)``: ``note`` starts with the stage's name, then the layer being
    worked on where the stage tells it (``"visuals: blocks.4"``); each stage starts with
    ``(0, 0, stage)``. A failing stage is recorded (failed, its one-line error) and raises
    :class:`MicroscopeStageError`; the stages done stay. Unknown stages, layers, options and a
    stage that needs a missing one fail before anything is written."""
    from convscope.concepts.activations import as_source

    if device is not None:
        subject.to(device)
    names = image_layers(subject, layers, "microscope")
    for name in names:
        subject.layers.get(name)
    source = as_source(subject, data)
    if not len(source):
        raise UserInputError(f"{source.spec.get('description', data)} holds no images")
    chosen = _chosen(stages, concepts)
    missing = [s for s in chosen if not available(s)]
    if stages is not None and missing:
        raise UserInputError(f"stage(s) {', '.join(missing)} not available in this build of convscope")
    settings = _settings(names, units, concepts, broden, seed, options or {}, chosen)
    for stage, own in (options or {}).items():  # a stage's own layers (a spec, resolved once)
        if "layers" in own:
            settings[stage]["layers"] = image_layers(subject, own["layers"], "microscope")
    if "visuals" in chosen:  # a units dict naming other layers or units fails here, not mid-run
        from convscope.atlas.visuals_build import chosen_units

        chosen_units(subject, settings["visuals"]["layers"], settings["visuals"]["units"])
    if broden is not None and not Path(broden).is_dir():
        raise UserInputError(f"--broden {broden} is not a folder")
    check_options(subject, settings, chosen)  # every stage's, before the first one starts
    for stage in settings.values():
        _record_accel(stage, subject.device)
    out = Path(out)
    spec = model_spec(subject)
    if plan_only:
        rows = _recorded(out, spec, source)
        _adopt_recorded(settings, rows, options or {}, resume and not overwrite)
        plan = _plan(chosen, rows, settings, resume, overwrite, missing)
        _estimate(subject, source, names, settings, plan)
        return MicroscopeBuilt(out, names, plan)
    scanned = (out / "atlas.db").exists() and Atlas.open(out, readonly=True).run()
    if "rf" in chosen and "scan" not in chosen and not scanned:
        raise UserInputError("the rf stage reads the scan's top images; run the scan stage first")
    report = progress or (lambda done, total, note=None: None)
    with Atlas(out).lock():
        atlas = Atlas.create(out, spec, source.spec, resume=True)
        rows = {r["name"]: r for r in atlas.stages()}
        _adopt_recorded(settings, rows, options or {}, resume and not overwrite)
        plan = _plan(chosen, rows, settings, resume, overwrite, missing)
        built = MicroscopeBuilt(out, names, plan)
        for stage in plan:  # the whole run in the table before its first stage starts
            if stage.action in ("run", "resume"):
                atlas.write_stage(
                    stage.name, "pending", settings[stage.name], position=STAGES.index(stage.name)
                )
        for stage in plan:
            if stage.action not in ("run", "resume"):
                continue
            atlas.write_stage(stage.name, "running", settings[stage.name])
            report(0, 0, stage.name)
            try:
                built.results[stage.name] = RUNNERS[stage.name](
                    atlas, subject, source, settings[stage.name]["layers"], settings[stage.name],
                    stage.action == "resume",
                    _noted(report, stage.name),
                )  # fmt: skip
            except Exception as e:
                line = " ".join(str(e).split()) or type(e).__name__
                atlas.write_stage(stage.name, "failed", error=line)
                raise MicroscopeStageError(
                    f"microscope stage {stage.name} failed: {line}; the stages done are kept, "
                    "rerun with --resume to continue"
                ) from e
            atlas.write_stage(stage.name, "done")
            built.ran.append(stage.name)
        built.stages = atlas.stages()
    return built


def _chosen(stages: Sequence[str] | None, concepts: str | None) -> list[str]:
    if stages is None:
        return [s for s in STAGES if (s != "concepts" or concepts) and available(s)]
    stages = [stages] if isinstance(stages, str) else list(stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise UserInputError(f"unknown stage(s) {unknown or 'none'}; choose from {', '.join(STAGES)}")
    if "concepts" in stages and not concepts:
        raise UserInputError("the concepts stage needs concepts='METHOD:N' (e.g. nmf:32)")
    return [s for s in STAGES if s in stages]


def _settings(names, units, concepts, broden, seed, options, chosen) -> dict[str, dict]:
    """Each stage's settings (JSON-able): what it runs with and what a resume must match."""
    unknown = sorted(set(options) - set(STAGES))
    if unknown:
        raise UserInputError(f"options for unknown stage(s) {unknown}; the stages are {', '.join(STAGES)}")
    if isinstance(units, Mapping):  # JSON-able and the same on every run: sorted, distinct
        try:
            units = {str(k): sorted({int(u) for u in v}) for k, v in units.items()}
        except (TypeError, ValueError):
            raise UserInputError(f"units per layer are lists of unit numbers, not {units!r}") from None
    elif isinstance(units, bool) or not (units == "all" or (isinstance(units, int) and units >= 1)):
        raise UserInputError(f"units is 'all', a number >= 1 or a dict {{layer: [units]}}, not {units!r}")
    out = {}
    for stage in STAGES:
        s = {"layers": list(names), "seed": seed, **DEFAULTS[stage], **dict(options.get(stage, {}))}
        if stage == "visuals":
            s["units"] = units
        if stage == "dissect":
            s["broden"] = None if broden is None else str(Path(broden).resolve())
        if stage == "concepts":
            s["method"], s["n"] = _concept_spec(concepts) if concepts else (None, None)
            if s["method"] == "nmf":  # any layer: a stage output need not end in a ReLU
                s.setdefault("clip", True)
        if isinstance(s.get("accel"), Accel):  # recorded as JSON, an Accel again for the writer
            s["accel"] = asdict(s["accel"])
        out[stage] = s
    return {k: json.loads(json.dumps(v, default=repr)) for k, v in out.items()}


def _concept_spec(text: str) -> tuple[str, int]:
    method, _, n = str(text).partition(":")
    if not method or not n.isdigit() or int(n) < 1:
        raise UserInputError(f"concepts is METHOD:N (e.g. nmf:32), not {text!r}")
    return method, int(n)


def _recorded(out: Path, spec: dict, source) -> dict[str, dict]:
    """The stages an existing atlas at ``out`` records (read-only; none for a new folder)."""
    if not (out / "atlas.db").exists():
        return {}
    atlas = Atlas.open(out, readonly=True)
    if atlas.model_spec != spec or atlas.source_spec != source.spec:
        raise AtlasConflictError(f"{out} is an atlas of another model or dataset; choose another --out")
    return {r["name"]: r for r in atlas.stages()}


def _record_accel(s: dict, device) -> None:
    """A stage's ``accel`` as recorded: every field, the memory layout resolved for ``device``,
    so that a dict, an :class:`Accel` and the CLI's flags saying the same thing record the same;
    left out when it is the default (fp32, the device's usual layout)."""
    if s.get("accel") is None:
        s.pop("accel", None)
        return
    a = _options({"accel": s["accel"]})["accel"]
    recorded = {**asdict(a), "channels_last": a.layout(torch.device(device))}
    default = Accel()
    if recorded == {**asdict(default), "channels_last": default.layout(torch.device(device))}:
        s.pop("accel")
    else:
        s["accel"] = recorded


def _adopt_recorded(settings: dict, rows: dict, options: Mapping, resume: bool) -> None:
    """On a resume, each default of :data:`DEFAULTS` that ``options`` does not set is the value
    the atlas recorded for that stage: an atlas made before a default changed (the rf stage's
    occluder, say) continues as it was made; only what the caller asks for must match."""
    if not resume:
        return
    for stage, row in rows.items():
        recorded, own = row.get("settings") or {}, options.get(stage, {})
        if stage not in settings:
            continue
        for key in DEFAULTS.get(stage, {}):
            if key not in own and key in recorded:
                settings[stage][key] = recorded[key]


def _plan(chosen, rows, settings, resume, overwrite, missing) -> list[StagePlan]:
    plan = []
    for stage in STAGES:
        if stage in missing:
            plan.append(StagePlan(stage, "unavailable", note="not available in this build"))
            continue
        if stage not in chosen:
            continue
        row = rows.get(stage)
        if row is None or overwrite:
            plan.append(StagePlan(stage, "run"))
            continue
        if not resume:
            raise AtlasConflictError(
                f"the atlas already records the {stage} stage ({row['status']}); pass --resume to "
                "continue the microscope or --overwrite to run the chosen stages again"
            )
        if row["settings"] != settings[stage]:
            old, new = row["settings"] or {}, settings[stage]
            differ = [k for k in sorted({*old, *new}) if old.get(k) != new.get(k)]
            said = ", ".join(f"{k} {old.get(k)!r} (now {new.get(k)!r})" for k in differ)
            raise AtlasConflictError(
                f"the {stage} stage was run with {said}; resume with those settings or pass "
                f"--overwrite with --stages {stage} to run it again"
            )
        plan.append(StagePlan(stage, "skip" if row["status"] == "done" else "resume"))
    return plan


def _noted(report, stage: str):
    def call(done, total, note=None):
        report(done, total, f"{stage}: {note}" if note else stage)

    return call


def _options(s: dict, *drop: str) -> dict:
    """A stage's settings as its writer's keywords: the stage's ``accel``, JSON in the
    settings (``{"precision": "bf16", "channels_last": true}``), as an :class:`Accel`."""
    out = {k: v for k, v in s.items() if k not in ("layers", "seed", *drop)}
    if isinstance(out.get("accel"), Mapping):
        try:
            out["accel"] = Accel(**out["accel"])
        except TypeError:
            raise UserInputError(
                f"accel takes precision, channels_last and decode, not {sorted(out['accel'])}"
            ) from None
    return out


# -- the stages ----------------------------------------------------------------------------------
def _scan(atlas, subject, source, names, s, resume, progress):
    if not resume:  # a new scan: never the checkpoint of an earlier one
        atlas.checkpoint_path.unlink(missing_ok=True)
    return scan_to_atlas(
        subject, source, atlas.path, names, resume=True, seed=s["seed"], progress=progress, **_options(s)
    )[1]


def _visuals(atlas, subject, source, names, s, resume, progress):
    from convscope.atlas.visuals_build import visuals_to_atlas

    return visuals_to_atlas(
        subject, atlas.path, names, s["units"], seed=s["seed"], resume=resume, overwrite=not resume,
        progress=progress, **_options(s, "units"),
    )  # fmt: skip


def _dissect(atlas, subject, source, names, s, resume, progress):
    sets = ["auto-color"] + ([s["broden"]] if s["broden"] else [])
    return [
        dissect_to_atlas(
            subject,
            concepts,
            atlas.path,
            names,
            images=source,
            seed=s["seed"],
            progress=progress,
            **_options(s, "broden"),
        )  # fmt: skip
        for concepts in sets
    ]


def rf_units(layer_units: int, n: int, seed: int, layer: str) -> list[int]:
    """The seeded sample of ``n`` of a layer's ``layer_units`` units whose receptive fields the
    rf stage measures (sorted; the same for a layer on every run)."""
    import zlib

    rng = np.random.default_rng([seed, zlib.crc32(layer.encode())])
    return sorted(int(u) for u in rng.choice(layer_units, size=min(n, layer_units), replace=False))


def rf_grid(
    subject: Subject, layer: str, patch: int | str = "auto", stride: int | str = "auto"
) -> tuple[int, int]:
    """The occluder ``(patch, stride)`` in px the rf stage uses on ``layer``: a number is kept;
    ``"auto"`` scales with what a unit of the layer sees, ``min(theoretical RF, image side)``:
    stride = that / :data:`RF_GRID_CELLS` (at least 3), patch = 2 x that automatic stride + 1
    (at least 11), also when the stride is given. efficientnet_lite0 at 224 px: 11 / 3 up to
    ``blocks.1``, 11 / 4 at ``blocks.2``, 19 / 9 at ``blocks.3``, 29 / 14 from ``blocks.4``."""
    for name, value in (("patch", patch), ("stride", stride)):
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserInputError(f"the rf stage's {name} is 'auto' or a number of px >= 1, not {value!r}")
    rf = subject.layer(layer).rf
    side = min(subject.input_size)
    seen = side if rf is None or rf.is_global else min(float(rf.size[0]), side)
    auto = max(3, round(seen / RF_GRID_CELLS))
    stride = auto if stride == "auto" else stride
    return (max(11, 2 * auto + 1) if patch == "auto" else patch), stride


def check_rf_options(subject: Subject, layers: Sequence[str], options: Mapping) -> None:
    """Refuse (one-line :class:`UserInputError`) an option the rf stage does not take
    (``units``, the sample per layer, and :func:`~convscope.empirical.report.write_rf_report`'s
    settings) and values it cannot run with on ``layers``: counts < 1, an unknown criterion or
    fill, a patch or stride :func:`rf_grid` refuses, an occluder larger than the model's input."""
    from convscope.atlas.build import check_counts, check_option_names, takes
    from convscope.empirical.discrepancy import FILLS
    from convscope.empirical.report import write_rf_report
    from convscope.scan.state import CRITERIA

    own = takes(write_rf_report, "atlas", "subject", "source", "layer", "units") | {"units"}
    check_option_names("rf", options, own)
    check_counts("rf", options, {"units": 1, "top": 1})
    if options.get("fill", "noise") not in FILLS:
        raise UserInputError(f"the rf stage's fill is one of {', '.join(FILLS)}, not {options['fill']!r}")
    if options.get("criterion", "max") not in CRITERIA:
        raise UserInputError(
            f"the rf stage's criterion is one of {', '.join(CRITERIA)}, not {options['criterion']!r}"
        )
    side = min(subject.input_size)
    for layer in layers:
        patch, _ = rf_grid(subject, layer, options.get("patch", "auto"), options.get("stride", "auto"))
        if patch > side:
            raise UserInputError(f"the rf stage's patch ({patch} px) is larger than the {side} px input")


def _rf(atlas, subject, source, names, s, resume, progress) -> None:
    from convscope.empirical.report import write_rf_report, write_rf_sizes

    todo = []
    grids = {name: rf_grid(subject, name, s["patch"], s["stride"]) for name in names}
    for name in names:
        done = {r["unit"] for r in atlas.empirical_rfs(name)} if resume else set()
        sample = rf_units(subject.layer(name).units or 0, s["units"], s["seed"], name)
        todo += [(name, u) for u in sample if u not in done]
    options = _options(s, "units", "patch", "stride")
    for i, (name, unit) in enumerate(todo):
        progress(i, len(todo), name)
        patch, stride = grids[name]
        write_rf_report(atlas, subject, source, name, [unit], patch=patch, stride=stride, **options)
    progress(len(todo), len(todo), None)
    if atlas.empirical_rfs():
        write_rf_sizes(atlas)


def _concepts(atlas, subject, source, names, s, resume, progress) -> None:
    from convscope.atlas.concepts_build import concepts_to_atlas

    for name in names:
        concepts_to_atlas(
            atlas.path, subject, source, name, method=s["method"], n=s["n"], seed=s["seed"],
            resume=resume, overwrite=not resume, progress=progress, **_options(s, "method", "n"),
        )  # fmt: skip


def _activation_atlas(atlas, subject, source, names, s, resume, progress):
    from convscope.atlas.activation_atlas_build import activation_atlas_to_atlas

    return activation_atlas_to_atlas(
        subject, source, atlas.path, names, resume=resume, overwrite=not resume, progress=progress,
        seed=s["seed"], **_options(s),
    )  # fmt: skip


def check_options(subject: Subject, settings: Mapping[str, dict], chosen: Sequence[str]) -> None:
    """Refuse, before any stage starts (and for the plan), what a chosen stage would refuse only
    once it runs: an option its writer does not take (named with its close match and the valid
    names) or a value it cannot run with; each stage's own check, given the keywords its runner
    passes (``settings``: :func:`microscope_to_atlas`'s per stage)."""
    from convscope.atlas.build import check_dissect_options, check_scan_options

    for stage in chosen:
        s = settings[stage]
        if stage == "scan":
            check_scan_options(_options(s))
        elif stage == "visuals":
            from convscope.atlas.visuals_build import check_options as check_visuals

            check_visuals(_options(s, "units"))
        elif stage == "dissect":
            check_dissect_options(_options(s, "broden"))
        elif stage == "rf":
            check_rf_options(subject, s["layers"], _options(s))
        elif stage == "concepts":
            from convscope.atlas.concepts_build import check_options as check_concepts

            check_concepts(s["method"], s["n"], _options(s, "method", "n"))
        elif stage == "activation_atlas" and available(stage):
            from convscope.atlas.activation_atlas_build import check_options as check_atlas

            check_atlas(_options(s))


RUNNERS = {
    "scan": _scan,
    "visuals": _visuals,
    "dissect": _dissect,
    "rf": _rf,
    "concepts": _concepts,
    "activation_atlas": _activation_atlas,
}


# -- the plan's probe ----------------------------------------------------------------------------
def _estimate(subject, source, names, settings, plan) -> None:
    """Fill each planned stage's estimate from a short probe: a scan of a few images (seconds
    per image through the layers) and a few optimisation steps of a batch of units of the deepest
    layer (seconds per image-step)."""
    from convscope.scan.scanner import scan

    todo = [p for p in plan if p.action in ("run", "resume")]
    if not todo:
        return
    n = len(source)
    probe = min(PROBE_IMAGES, n)
    s = settings["scan"]
    t = time.perf_counter()
    scan(subject, source, names, indices=range(probe), k=min(s["k"], probe), threshold_sample=probe,
         batch_size=min(s["batch_size"], probe))  # fmt: skip
    per_image = (time.perf_counter() - t) / probe
    deepest = settings["visuals"]["layers"][-1]
    per_step = _probe_visuals(subject, deepest, settings["visuals"]) if _needs_fv(todo) else 0.0
    side = subject.input_size[0]
    for p in todo:
        p.seconds, p.note = _stage_estimate(
            p.name, settings[p.name], settings[p.name]["layers"], subject, n, per_image, per_step, side
        )


def _needs_fv(todo) -> bool:
    return any(p.name in ("visuals", "concepts", "activation_atlas") for p in todo)


def _probe_visuals(subject, layer: str, s: dict) -> float:
    from convscope.synthesis.layer_visuals import visualize_layer

    units = list(range(min(4, subject.layer(layer).units or 1)))
    kinds = s.get("kinds", ["positive"])
    speed = {"accel": _options(s)["accel"]} if "accel" in s else {}
    t = time.perf_counter()
    visualize_layer(  # a fixed batch: no memory probe in the time
        subject, layer, units, kinds=kinds, steps=PROBE_STEPS, size=s.get("size"), seed=0,
        batch=len(units) * len(kinds), **speed,
    )  # fmt: skip
    return (time.perf_counter() - t) / (len(units) * len(kinds) * PROBE_STEPS)


def _stage_estimate(stage, s, names, subject, n, per_image, per_step, side):
    if stage == "scan":
        return n * per_image, f"{n} images"
    if stage == "visuals":
        units = [_layer_units(subject, name, s["units"]) for name in names]
        slots = len(s["kinds"]) + (s["diversity"] if s["diversity"] >= 2 else 0)
        images = sum(units) * slots
        return images * s["steps"] * per_step, f"{images} images x {s['steps']} steps"
    if stage == "dissect":
        sets = 1 + bool(s["broden"])
        return 2 * sets * n * per_image, f"{sets} concept set(s), 2 passes"
    if stage == "rf":  # occlusions within reach of a unit (an upper bound: shallow ones see crops)
        units = occlusions = 0
        for name in names:
            patch, stride = rf_grid(subject, name, s["patch"], s["stride"])
            rf = subject.layer(name).rf
            # the occluder positions that overlap the unit's theoretical RF (all on a deep layer)
            span = side - patch if rf is None or rf.is_global else min(side - patch, rf.size[0] + patch - 2)
            n_units = min(s["units"], subject.layer(name).units or 0)
            units += n_units
            occlusions += n_units * s["top"] * (int(span) // stride + 1) ** 2
        return occlusions * per_image, f"{units} units x {s['top']} images: {occlusions} occlusions"
    if stage == "concepts":
        steps = (s.get("visualize") or {}).get("steps", 64) if s.get("visualize") else 0
        per_layer = 3 * n * per_image + s["n"] * steps * per_step
        return len(names) * per_layer, f"{len(names)} layer(s) x (3 passes + {s['n']} pictures)"
    if stage == "activation_atlas":
        cells = s["grid"] ** 2 // 2  # about half a t-SNE grid's cells are drawn
        per_layer = 2 * n * per_image + cells * s["steps"] * per_step
        return len(names) * per_layer, f"{len(names)} layer(s) x (2 passes + ~{cells} cells)"
    return None, ""


def _layer_units(subject, name: str, units) -> int:
    n = subject.layer(name).units or 0
    if isinstance(units, dict):
        return len(units.get(name, ()))
    return n if units == "all" else min(int(units), n)


__all__ = [
    "STAGES",
    "MicroscopeBuilt",
    "MicroscopeStageError",
    "StagePlan",
    "microscope_to_atlas",
    "rf_grid",
    "rf_units",
]
