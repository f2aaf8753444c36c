"""Fill an atlas with the feature visualisations of every chosen unit of some layers (the
microscope's visuals stage): whole layers optimised in batches by
:func:`~convscope.synthesis.layer_visuals.visualize_layer`, each batch stored as it finishes, so
that a killed run resumes at the next batch and gives the same tiles as an uninterrupted one."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from convscope.atlas.build import model_spec
from convscope.atlas.store import Atlas, AtlasConflictError
from convscope.errors import UserInputError
from convscope.layers import LayerSpec
from convscope.subject import Subject
from convscope.verbs import image_layers

NO_SOURCE = {"description": "no images (feature visualisations only)"}


@dataclass
class VisualsBuilt:
    """What :func:`visuals_to_atlas` did: the ``atlas`` written, per layer the units it
    visualised now (``made``) and those already stored and kept (``reused``, ``resume``)."""

    atlas: Atlas
    made: dict[str, int] = field(default_factory=dict)
    reused: dict[str, int] = field(default_factory=dict)

    def headline(self) -> str:
        parts = [f"{layer}: {n} made, {self.reused.get(layer, 0)} kept" for layer, n in self.made.items()]
        return f"feature visualisations in {self.atlas.path}: " + "; ".join(parts)


def visuals_to_atlas(
    subject: Subject,
    out: str | Path | Atlas,
    layers: LayerSpec,
    units: str | int | Sequence[int] | Mapping[str, Sequence[int]] = "all",
    *,
    kinds: Sequence[str] = ("positive", "negative"),
    diversity: int = 0,
    param: str = "fft",
    steps: int = 256,
    size: int | None = None,
    seed: int = 0,
    batch: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: Callable[..., None] | None = None,
    **options,
) -> VisualsBuilt:
    """Store feature visualisations of ``units`` (``"all"``, the first N, a list, or a dict
    ``{layer: [units]}`` naming every chosen layer) of each of ``layers`` (any layer spec) of
    ``subject`` in the atlas ``out`` (an atlas of this model, or a new one), holding its writer
    lock throughout: per unit the ``kinds`` and ``diversity`` images of
    :func:`~convscope.synthesis.layer_visuals.visualize_layer` (``param``, ``steps``, ``size``,
    ``seed``, ``options`` its settings), written batch by batch (``batch`` images per stored
    batch; None: :func:`~convscope.synthesis.layer_visuals.auto_batch`'s, the images that fit
    in memory, measured per layer, halved inside on out-of-memory).

    A layer that already has visuals is refused unless ``resume`` (its stored units are kept,
    the missing ones made; other settings than it was made with are refused, naming each) or
    ``overwrite`` (removed first). ``progress(done, total, layer)`` counts images over all layers,
    the kept ones counted done at the start (that first call without a layer); ``layer`` names the
    layer being made. Unknown layers, kinds or units fail before anything is written."""
    from convscope.synthesis.layer_visuals import auto_batch, run_settings, slots_for, visualize_layer

    check_options({"kinds": kinds, "diversity": diversity, "param": param, "steps": steps, "size": size,
                   "batch": batch, **options})  # fmt: skip
    names = image_layers(subject, layers, "visuals")
    slots = slots_for(kinds, diversity)
    chosen = chosen_units(subject, names, units)
    wanted = {
        **run_settings(param, steps, size, seed, options.pop("diversity_weight", 100.0), options),
        "slots": [list(s) for s in slots],
        # MaCo's tiles carry its transparency map as their alpha channel (RGBA PNGs)
        **({"alpha": True} if param == "maco" else {}),
    }
    weight = wanted["diversity_weight"]
    path = out.path if isinstance(out, Atlas) else Path(out)
    built = VisualsBuilt(Atlas(path))
    with Atlas(path).lock():
        store = Atlas.for_model(path, model_spec(subject), NO_SOURCE)
        built.atlas = store
        todo: dict[str, list[int]] = {}
        for name in names:
            stored = store.visual_settings(name)
            if stored is not None and overwrite:
                store.delete_visuals(name)
            elif stored is not None and not resume:
                raise AtlasConflictError(
                    f"{store.path} already holds feature visualisations of {name}; pass --resume to "
                    "continue them or --overwrite to make them again"
                )
            elif stored is not None:
                _check_settings(stored, wanted, name)
            have = store.visual_units(name) if stored is not None and not overwrite else set()
            todo[name] = [u for u in chosen[name] if u not in have]
            built.reused[name] = len(chosen[name]) - len(todo[name])
        total = sum(len(chosen[n]) for n in names) * len(slots)
        done = sum(built.reused.values()) * len(slots)
        report = progress or (lambda d, t, note=None: None)
        report(done, total)
        for name in names:
            built.made[name] = 0
            if not todo[name]:
                continue
            # batch=None: one stored batch per optimisation, as many images as fit (measured)
            images = batch or auto_batch(
                subject, name, param=param, size=size, images=len(todo[name]) * len(slots), **options
            )
            per = max(1, images // len(slots))
            for start in range(0, len(todo[name]), per):
                part = todo[name][start : start + per]
                base = done

                def step(d, t, base=base, name=name):
                    report(base + d, total, name)

                result = visualize_layer(
                    subject, name, part, kinds=kinds, diversity=diversity, diversity_weight=weight,
                    param=param, steps=steps, size=size, batch=batch, seed=seed, progress=step, **options,
                )  # fmt: skip
                store.write_visuals(result, wanted)
                done = base + len(part) * len(slots)
                built.made[name] += len(part)
                report(done, total, name)
    return built


def chosen_units(subject: Subject, names: Sequence[str], units) -> dict[str, list[int]]:
    """The sorted units to visualise of each layer of ``names`` (resolved layer names):
    ``units`` is ``"all"``, the first N, a list (the same for every layer) or a dict
    ``{layer: "all" | N | [units]}`` naming exactly ``names``. UserInputError otherwise."""
    if isinstance(units, Mapping):
        extra = sorted(set(units) - set(names))
        lacking = [name for name in names if name not in units]
        if extra or lacking:
            raise UserInputError(
                f"units per layer must name exactly the layers {', '.join(names)}"
                + (f"; not chosen: {', '.join(extra)}" if extra else "")
                + (f"; missing: {', '.join(lacking)}" if lacking else "")
            )
        return {name: _units(subject, name, units[name]) for name in names}
    return {name: _units(subject, name, units) for name in names}


def _units(subject: Subject, layer: str, units) -> list[int]:
    n = subject.layer(layer).units or 0
    if isinstance(units, str):
        if units != "all":
            raise UserInputError(f"units is 'all', a number or a list of units, not {units!r}")
        return list(range(n))
    if isinstance(units, int):
        if units < 1:
            raise UserInputError(f"units must be >= 1, not {units}")
        return list(range(min(units, n)))
    chosen = sorted({int(u) for u in units})
    bad = [u for u in chosen if not 0 <= u < n]
    if bad or not chosen:
        raise UserInputError(f"{layer} has units 0..{n - 1}; got {bad or 'none'}")
    return chosen


def _check_settings(stored: dict, wanted: dict, layer: str) -> None:
    stored = dict(stored)
    # before the precision was recorded, an accel (any, fp32 too) was only named in "other"
    other = [k for k in stored.pop("other", []) if k != "accel"]
    if other:
        stored["other"] = other
    if wanted.get("alpha") and "alpha" not in stored:
        raise AtlasConflictError(
            f"the atlas's MaCo feature visualisations of {layer} were made before their "
            "transparency was stored; pass --overwrite to make them again"
        )
    differ = [key for key in sorted({*stored, *wanted}) if stored.get(key) != wanted.get(key)]
    if differ:
        said = ", ".join(f"{key} {stored.get(key)!r} (now {wanted.get(key)!r})" for key in differ)
        raise AtlasConflictError(
            f"the atlas's feature visualisations of {layer} were made with {said}; resume with "
            "those settings or pass --overwrite to make them again"
        )


def check_options(options: Mapping) -> None:
    """Refuse (one-line :class:`UserInputError`, before any work) an option
    :func:`visuals_to_atlas` does not take (``options``: its keywords less the subject, atlas,
    layers, units, seed, resume and overwrite; ``diversity_weight`` and
    :func:`~convscope.synthesis.engine.optimize`'s settings pass through) and values it cannot
    run with: unknown kinds or parametrisation, a diversity of 1, steps, size or batch < 1."""
    from convscope.atlas.build import check_counts, check_option_names, takes
    from convscope.synthesis.engine import optimize
    from convscope.synthesis.layer_visuals import slots_for
    from convscope.synthesis.param import check_param

    own = takes(visuals_to_atlas, "subject", "out", "layers", "units", "seed", "resume", "overwrite")
    own -= {"progress"}
    set_here = ("subject", "objective", "batch", "size", "param", "steps", "seed", "labels", "init")
    passed = takes(optimize, *set_here, "final_scores", "progress")
    check_option_names("visuals", options, own | passed | {"diversity_weight"})
    check_counts("visuals", options, {"steps": 1, "batch": 1, "diversity": 0})
    slots_for(options.get("kinds", ("positive", "negative")), options.get("diversity", 0))
    check_param(options.get("param", "fft"))
    size = options.get("size")
    sides = size if isinstance(size, (list, tuple)) else [size]
    if size is not None and (
        len(sides) not in (1, 2) or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in sides)
    ):
        raise UserInputError(f"the visuals stage's size is a side or (height, width) >= 1 px, not {size!r}")


__all__ = ["VisualsBuilt", "chosen_units", "visuals_to_atlas"]
