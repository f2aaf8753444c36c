"""Build activation atlases of layers and store them in an atlas (a stage of ``convscope
microscope``): one writer at a time, resumable layer by layer, refusing a resume with other
settings."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from convscope.atlas.build import check_counts, check_option_names, model_spec, takes
from convscope.atlas.cleanup import entries, undo_failed_build
from convscope.atlas.store import Atlas, AtlasConflictError
from convscope.errors import UserInputError
from convscope.subject import Subject

# activation_atlas() keywords that change how the work is run or reported, not what it finds
NOT_SETTINGS = ("progress", "workers", "accel")


@dataclass
class ActivationAtlasesBuilt:
    """What :func:`activation_atlas_to_atlas` did: the ``atlas`` written, the ``layers`` whose
    activation atlas it holds now, those ``reused`` as stored (``resume``), and the
    ``results`` (layer -> :class:`~convscope.synthesis.activation_atlas.ActivationAtlas`) built
    by this call."""

    atlas: Atlas
    layers: list[str]
    reused: list[str] = field(default_factory=list)
    results: dict = field(default_factory=dict)

    def headline(self) -> str:
        built = [layer for layer in self.layers if layer not in self.reused]
        return (
            f"activation atlases of {len(self.layers)} layer(s) in {self.atlas.path} "
            f"({len(built)} built, {len(self.reused)} reused)"
        )


def activation_atlas_to_atlas(
    subject: Subject,
    data,
    out: str | Path | Atlas,
    layers: str | Sequence[str],
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    **options,
) -> ActivationAtlasesBuilt:
    """Build the activation atlas of each layer of ``layers`` (a layer spec or a list of
    names) over ``data`` (:func:`convscope.synthesis.activation_atlas.activation_atlas`, with
    ``options``: ``samples_per_image``, ``max_samples``, ``layout``, ``grid``, ``min_count``,
    ``steps``, ``size``, ``batch``, ``top``, ``seed``, ...) and store each in the atlas ``out``
    (created for this model and data, or one of this model's) as soon as it is done
    (:meth:`Atlas.write_activation_atlas`). ``progress(done, total, note)``: the note names the
    layer and the stage.

    The writer lock is held throughout. A layer already stored is refused unless ``resume``
    (it is reused when its settings are these; other settings are refused, naming each) or
    ``overwrite`` (built again); so a killed run continues with the layers it had not stored.
    Unknown options, layers and settings fail before the atlas is created or written; a failed
    build of a new atlas leaves nothing behind."""
    from convscope.concepts.activations import as_source
    from convscope.synthesis.activation_atlas import activation_atlas

    check_options(options)
    if isinstance(layers, str):
        names = [str(n) for n in subject.layers.select(layers)]
    else:
        names = [str(n) for spec in layers for n in subject.layers.select(spec)]
    names = list(dict.fromkeys(names))
    if not names:
        raise UserInputError(f"{layers!r} names no layer of {subject.name}")
    source = as_source(subject, data)
    out = out.path if isinstance(out, Atlas) else Path(out)
    before = entries(out)
    try:
        with Atlas(out).lock():
            return _build(activation_atlas, subject, source, out, names, resume, overwrite, progress, options)
    except BaseException as e:
        undo_failed_build(out, before, refused=isinstance(e, UserInputError))
        raise


def check_options(options: Mapping) -> None:
    """Refuse (one-line :class:`UserInputError`, before any work) an option
    :func:`activation_atlas_to_atlas` does not take (``options``: its keywords less the subject,
    data, atlas, layers, resume and overwrite; the unknown name with its close match and the
    valid names) and settings :func:`~convscope.synthesis.activation_atlas.activation_atlas`
    cannot run with (:func:`~convscope.synthesis.activation_atlas.check_settings`)."""
    from convscope.synthesis.activation_atlas import activation_atlas, check_settings

    allowed = takes(activation_atlas, "subject", "data", "layer", "progress")
    known = {"steps", "size", "param", "lr", "decorrelate", "transform"}  # optimize()'s, passed through
    check_option_names("activation_atlas", options, allowed | known)
    sizes = ("grid", "min_count", "steps", "batch", "size", "samples_per_image", "max_samples", "batch_size")
    check_counts("activation_atlas", options, {**dict.fromkeys(sizes, 1), "top": 0, "workers": 0})
    check_settings(**{k: v for k, v in options.items() if k in inspect.signature(check_settings).parameters})
    if "param" in options:
        from convscope.synthesis.param import check_param

        check_param(options["param"])


def build_settings(subject: Subject, source, layer: str, options: dict) -> dict:
    """What a layer's activation atlas was built with, as JSON (a ``resume`` must ask for the
    same): the model, the data, the layer and every option that changes the result, defaults
    filled in."""
    from convscope.synthesis.activation_atlas import activation_atlas

    defaults = {
        k: p.default
        for k, p in inspect.signature(activation_atlas).parameters.items()
        if p.default is not inspect.Parameter.empty and p.kind is not inspect.Parameter.VAR_KEYWORD
    }
    chosen = {**defaults, **options}
    plain = {k: v for k, v in chosen.items() if k not in NOT_SETTINGS}
    return json.loads(
        json.dumps(
            {"model": subject.name, "data": source.spec, "layer": layer, **plain},
            sort_keys=True,
            default=repr,
        )
    )


def _build(activation_atlas, subject, source, out, names, resume, overwrite, progress, options):
    store = Atlas.for_model(out, model_spec(subject), source.spec)
    stored = {a["layer"] for a in store.activation_atlases()}
    wanted = {layer: build_settings(subject, source, layer, options) for layer in names}
    reused = []
    for layer in names:  # every refusal before any work
        if layer not in stored or overwrite:
            continue
        if not resume:
            raise AtlasConflictError(
                f"{store.path} already holds an activation atlas of {layer}; pass --resume to reuse "
                "it, or --overwrite to build it again"
            )
        have = store.activation_atlas_settings(layer) or {}
        differ = [k for k in sorted({*have, *wanted[layer]}) if have.get(k) != wanted[layer].get(k)]
        if differ:
            said = ", ".join(f"{k} {have.get(k)!r} (now {wanted[layer].get(k)!r})" for k in differ)
            raise AtlasConflictError(
                f"the activation atlas of {layer} in {store.path} was built with {said}; resume with "
                "those settings or pass --overwrite to build it again"
            )
        reused.append(layer)
    results = {}
    for layer in names:
        if layer in reused:
            continue

        def report(done, total, stage, layer=layer):
            if progress is not None:
                progress(done, total, f"{layer}: {stage}")

        result = activation_atlas(subject, source, layer, progress=report, **options)
        store.write_activation_atlas(result, wanted[layer])
        results[layer] = result
    return ActivationAtlasesBuilt(store, names, reused, results)


__all__ = ["ActivationAtlasesBuilt", "activation_atlas_to_atlas", "build_settings"]
