"""``evaluate``: every attribution method scored by every metric on the same images.

The images are worked through in chunks of ``chunk``: each method explains the chunk once (one
batched call), then every metric scores those maps (batched on the subject's device). The
numbers depend on everything in the run's *fingerprint* (:func:`fingerprint`: the model's name,
weights, device type and preprocessing, the image names and the pixels of images given in
memory, the methods (a callable by its code) and their options, the metrics and their settings,
the target, the seed, the chunk size, the masks and boxes), and on nothing else: randomness comes only from
seeds derived from ``seed`` (see :func:`derived_seed`), so the same call gives the same table,
and a run resumed from its checkpoint gives bit for bit the scores of an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from convscope.attribution import baselines  # noqa: F401  (registers edge and random)
from convscope.attribution.api import check_options, get_method, options_for
from convscope.attribution.evaluation import Evaluation
from convscope.attribution.metrics import (
    METRICS,
    NEEDS_METHOD,
    NEEDS_REGIONS,
    check_metric_options,
    get_metric,
    higher_is_better,
)
from convscope.attribution.targets import Target, resolve_target
from convscope.errors import UserInputError
from convscope.subject import Subject

CHECKPOINT_KIND = "convscope.evaluate checkpoint"
# settings the evaluation gives the metrics itself; metric_options may not set them
_GIVEN = ("images", "maps", "targets", "subject", "seed", "method", "options", "masks", "boxes")


def derived_seed(seed: int, *parts) -> int:
    """A 63-bit seed from ``seed`` and ``parts`` (e.g. the metric's name and the chunk's index):
    :class:`numpy.random.SeedSequence` of ``seed`` and the CRC-32 of each part, so every metric
    and every chunk draws its own stream and the same ``seed`` gives the same streams."""
    words = [int(seed) & 0xFFFFFFFF] + [zlib.crc32(str(p).encode()) for p in parts]
    return (
        int(np.random.SeedSequence(words).generate_state(2, dtype=np.uint32).astype(np.uint64) @ [1, 1 << 32])
        >> 1
    )


# ---------------------------------------------------------------------------------------------
# the images: each item read when its chunk comes, unreadable ones skipped


class _Images:
    """The images as a list of readers, with their names; ``load(indices)`` returns the
    preprocessed tensors of the readable ones and the reasons of the others."""

    def __init__(self, subject: Subject, images, names):
        from convscope.inputs.sources import ImageSource, open_images

        self.subject = subject
        self.batch: torch.Tensor | None = None
        self.source = None
        self.items: list = []
        if isinstance(images, torch.Tensor):
            if images.dim() == 3:
                images = images[None]
            if images.dim() != 4 or images.shape[1] != 3:
                raise UserInputError(f"expected images (N, 3, H, W), got {tuple(images.shape)}")
            self.batch = images
            default = [f"image {i}" for i in range(len(images))]
            self.digest = _bytes_digest(images)
        elif isinstance(images, ImageSource) or _is_collection(images):
            self.source = images if isinstance(images, ImageSource) else open_images(images)
            default = [r.name for r in self.source.records]
            self.digest = ""  # files: identified by their names
        else:
            if isinstance(images, (str, os.PathLike, np.ndarray)) or hasattr(images, "convert"):
                images = [images]
            self.items = list(images)
            default = [
                Path(it).stem if isinstance(it, (str, os.PathLike)) else f"image {i}"
                for i, it in enumerate(self.items)
            ]
            # in-memory images (PIL, arrays) by their bytes, files by their names
            self.digest = hashlib.sha1("".join(_item_digest(it) for it in self.items).encode()).hexdigest()
        self.names = _unique(default) if names is None else [str(n) for n in names]
        if len(self.names) != len(self):
            raise UserInputError(f"got {len(self.names)} names for {len(self)} images")
        if len(set(self.names)) != len(self.names):
            raise UserInputError("names must differ from one another (they identify the images)")
        if len(self) == 0:
            raise UserInputError("no images to evaluate on")

    def __len__(self) -> int:
        if self.batch is not None:
            return len(self.batch)
        return len(self.source) if self.source is not None else len(self.items)

    def load(self, indices: Sequence[int]) -> tuple[list[int], torch.Tensor | None, dict[int, str]]:
        from convscope.inputs.images import skip_reason

        dev = self.subject.device
        if self.batch is not None:
            idx = list(indices)
            return idx, self.batch[idx].to(dev, torch.float32), {}
        good, tensors, bad = [], [], {}
        for i in indices:
            try:
                if self.source is not None:
                    from convscope.imageops import read_image

                    t = self.subject.transform(read_image(self.source.read_bytes(i)).convert("RGB"))[None]
                else:
                    t = self.subject.load_images([self.items[i]])
            except Exception as e:  # a bad file must never end a run
                bad[i] = skip_reason(e)
                continue
            good.append(i)
            tensors.append(t.to(dev, torch.float32))
        return good, (torch.cat(tensors) if tensors else None), bad


def _bytes_digest(value) -> str:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    arr = np.ascontiguousarray(value)
    return hashlib.sha1(f"{arr.shape}{arr.dtype}".encode() + arr.tobytes()).hexdigest()


def _item_digest(item) -> str:
    """An image in memory by its pixels; a file adds nothing (its name is in the fingerprint)."""
    if isinstance(item, (str, os.PathLike)):
        return "file;"
    if hasattr(item, "tobytes") and hasattr(item, "mode") and hasattr(item, "size"):  # PIL
        return hashlib.sha1(f"{item.mode}{item.size}".encode() + item.tobytes()).hexdigest() + ";"
    return _bytes_digest(item) + ";"


def _is_collection(images) -> bool:
    """A folder, an archive or the bundled samples: many images behind one name."""
    if not isinstance(images, (str, os.PathLike)):
        return False
    text = os.fspath(images)
    return text == "convscope:samples" or Path(text).is_dir() or text.lower().endswith(_ARCHIVES)


_ARCHIVES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0)
        seen[n] = k + 1
        out.append(n if k == 0 else f"{n} ({k + 1})")
    return out


# ---------------------------------------------------------------------------------------------
# validation: everything before any work


def _method_specs(methods, options) -> list[tuple[str, object, dict]]:
    """(display name, name or callable, options) per method."""
    if isinstance(methods, str) or callable(methods):
        methods = [methods]
    methods = list(methods)
    if not methods:
        raise UserInputError("give at least one method")
    keys = []
    for m in methods:
        if callable(m):
            keys.append(getattr(m, "__name__", type(m).__name__))
        elif isinstance(m, str):
            keys.append(get_method(m).name)
        else:
            raise UserInputError(f"a method is a name or a callable (subject, x, classes) -> maps, not {m!r}")
    keys = _unique(keys)
    options = dict(options or {})
    named = set(keys) | {m for m in methods if isinstance(m, str)}
    per_method = bool(options) and all(k in named and isinstance(v, Mapping) for k, v in options.items())
    specs = []
    for key, m in zip(keys, methods, strict=True):
        if per_method:
            opts = dict(options.get(key, options.get(m, {})) if isinstance(m, str) else options.get(key, {}))
            if callable(m):
                if opts:
                    raise UserInputError(f"{key} is a callable: it takes no options")
            else:
                check_options(key, opts)
        else:
            opts = {} if callable(m) else options_for(key, options)
        if not callable(m):
            get_method(m).validate(opts)  # bad values (a fill it has not) before any work
        specs.append((key, m, opts))
    if options and not per_method:
        used = {
            k for _, m, _ in specs if isinstance(m, str) for k in options_for(get_method(m).name, options)
        }
        unused = sorted(set(options) - used)
        if unused:
            raise UserInputError(
                f"no method given takes the option {unused[0]!r} "
                f"(options are shared settings, or {{method: {{...}}}} for each method)"
            )
    return specs


def _metric_specs(metrics, metric_options, masks, boxes) -> list[tuple[str, Callable, dict]]:
    import difflib

    if isinstance(metrics, str):
        metrics = [metrics]
    metrics = list(metrics)
    if not metrics:
        raise UserInputError("give at least one metric")
    fns = [get_metric(m) for m in metrics]
    if len(set(metrics)) != len(metrics):
        raise UserInputError("a metric is named twice")
    metric_options = dict(metric_options or {})
    for k in metric_options:
        if k not in metrics:
            get_metric(k)  # an unknown name: close matches
            raise UserInputError(f"metric_options names {k!r}, which is not among the metrics evaluated")
    specs = []
    for name, fn in zip(metrics, fns, strict=True):
        opts = dict(metric_options.get(name, {}))
        takes = [
            p.name
            for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _GIVEN
        ]
        for key in opts:
            if key in _GIVEN:
                raise UserInputError(
                    f"metric {name}: evaluate sets {key!r} itself (seed: derived from evaluate's seed; "
                    "method/options: the method judged; masks/boxes: evaluate's own)"
                )
            if key not in takes:
                close = difflib.get_close_matches(key, takes, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"it takes {', '.join(takes)}"
                raise UserInputError(f"metric {name} has no option {key!r}; {hint}")
        if opts.get("curve") or opts.get("reduce", "mean") not in ("mean", "last"):
            raise UserInputError(
                f"metric {name}: evaluate takes one score per image (no curve, reduce mean or last)"
            )
        check_metric_options(name, opts)  # values too, before any work
        if name in NEEDS_REGIONS and masks is None and boxes is None:
            raise UserInputError(f"metric {name} needs masks= or boxes= (the objects' regions)")
        specs.append((name, fn, opts))
    return specs


def _target_spec(subject: Subject, target) -> Target:
    t = resolve_target(subject, target)
    if t.kind not in ("class", "prob"):
        raise UserInputError(f"evaluate explains class scores (top, class:N, prob:N), not {target!r}")
    return t


def _regions(values, n: int, what: str):
    if values is None:
        return None
    arr = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if len(arr) != n:
        raise UserInputError(f"got {what} for {len(arr)} images, expected {n}")
    return arr


# ---------------------------------------------------------------------------------------------
# fingerprint


def _plain(value):
    """``value`` as JSON data (arrays and tensors by a digest of their bytes), for the
    fingerprint."""

    def default(v):
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().numpy()
        if isinstance(v, np.ndarray):
            return f"array{v.shape}:{v.dtype}:{hashlib.sha1(np.ascontiguousarray(v).tobytes()).hexdigest()}"
        if callable(v):
            return callable_id(v)
        return repr(v)

    return json.loads(json.dumps(value, default=default, sort_keys=True))


def callable_id(fn) -> str:
    """A callable's identity for the fingerprint: its module and qualified name and a digest of
    its code (bytecode, constants, names; nested functions too) and of the values it closes
    over and its defaults, so that two lambdas, or one function edited, differ."""
    import types

    name = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
    func = fn if hasattr(fn, "__code__") else type(fn).__call__  # an object: its class's method
    code = getattr(func, "__code__", None)
    if code is None:
        return f"callable:{name}:{repr(fn)}"
    h = hashlib.sha1()

    def feed(c: types.CodeType) -> None:
        h.update(c.co_code)
        h.update(repr(c.co_names).encode())
        for k in c.co_consts:
            feed(k) if isinstance(k, types.CodeType) else h.update(repr(k).encode())

    feed(code)
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            value = "<empty>"
        # a callable closed over: by its name only (a recursive function's cell holds itself)
        shown = (
            f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', '')}"
            if callable(value)
            else value
        )
        h.update(json.dumps(_plain(shown)).encode())
    h.update(json.dumps(_plain(list(getattr(fn, "__defaults__", None) or ()))).encode())
    return f"callable:{name}:{h.hexdigest()[:16]}"


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-1 of the model's state (every parameter and buffer, in order, with its name)."""
    h = hashlib.sha1()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        if isinstance(v, torch.Tensor):
            h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _prepare(
    subject, images, methods, metrics, target, names, options, metric_options, masks, boxes, seed, chunk
):
    """Everything checked, and the fingerprint: (chunk, method specs, metric specs, target,
    images, masks, boxes, fingerprint)."""
    if int(chunk) < 1:
        raise UserInputError(f"chunk must be >= 1, not {chunk}")
    chunk = int(chunk)
    specs = _method_specs(methods, options)
    mspecs = _metric_specs(metrics, metric_options, masks, boxes)
    tgt = _target_spec(subject, target)
    data = _Images(subject, images, names)
    n = len(data)
    if not tgt.top and len(tgt.classes) > 1 and len(tgt.classes) != n:
        raise UserInputError(f"the target names {len(tgt.classes)} classes, one per image, for {n} images")
    masks_a = _regions(masks, n, "masks")
    boxes_a = _regions(boxes, n, "boxes")
    transform = subject.transform
    found = _plain(
        {
            "model": subject.name,
            "weights": weights_digest(subject.model),
            "device": subject.device.type,  # CPU and GPU kernels are not bit-identical
            "preprocess": repr(subject.preprocess),
            "transform": "preprocess" if transform is subject.preprocess else transform,
            "images": hashlib.sha1((json.dumps(data.names) + data.digest).encode()).hexdigest(),
            "n_images": n,
            "methods": [[k, m if isinstance(m, str) else m] for k, m, _ in specs],
            "options": {k: o for k, _, o in specs},
            "metrics": [k for k, _, _ in mspecs],
            "metric_options": {k: o for k, _, o in mspecs},
            "target": f"{tgt.kind}:{'top' if tgt.top else ','.join(map(str, tgt.classes))}",
            "seed": int(seed),
            "chunk": chunk,
            "masks": masks_a,
            "boxes": boxes_a,
        }
    )
    return chunk, specs, mspecs, tgt, data, masks_a, boxes_a, found


def fingerprint(
    subject: Subject,
    images,
    methods,
    metrics,
    target="top",
    *,
    names: Sequence[str] | None = None,
    options: Mapping | None = None,
    metric_options: Mapping[str, Mapping] | None = None,
    masks=None,
    boxes=None,
    seed: int = 0,
    chunk: int = 8,
    **ignored,
) -> dict:
    """What :func:`evaluate` called with these arguments computes from, as JSON data: the
    model's name, weights digest, device type and preprocessing, the images (their names, and
    the pixels of images given in memory), the methods (a callable by its code) and their
    options, the metrics and theirs, the target, seed, chunk size, masks and boxes. Two calls
    with equal fingerprints give the same scores; a checkpoint resumes only with its own.
    Everything is checked as by :func:`evaluate` (``ignored``: its keywords that change
    nothing found, ``checkpoint`` and ``progress``)."""
    unknown = set(ignored) - {"checkpoint", "progress"}
    if unknown:
        raise UserInputError(f"evaluate takes no option {sorted(unknown)[0]!r}")
    return _prepare(
        subject, images, methods, metrics, target, names, options, metric_options, masks, boxes, seed, chunk
    )[-1]


# ---------------------------------------------------------------------------------------------


def evaluate(
    subject: Subject,
    images,
    methods,
    metrics,
    target="top",
    *,
    names: Sequence[str] | None = None,
    options: Mapping | None = None,
    metric_options: Mapping[str, Mapping] | None = None,
    masks=None,
    boxes=None,
    seed: int = 0,
    chunk: int = 8,
    checkpoint: str | os.PathLike | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Score every method in ``methods`` by every metric in ``metrics`` on each image.

    ``images``: paths, PIL images, uint8 arrays, a folder or an
    :class:`~convscope.inputs.sources.ImageSource`, or a preprocessed batch (N, 3, H, W);
    ``names`` one per image (default: file stems, a source's relative names, or "image i").
    Files that cannot be read are skipped and listed in ``Evaluation.skipped``.
    ``methods``: names for :func:`~convscope.explain` (aliases too; ``edge`` and ``random`` are
    baselines that ignore the model) or callables ``(subject, x, classes) -> maps (B, H, W)``.
    ``options``: shared settings, each method taking those it takes (as a command line's), or
    ``{method: {...}}``. ``metrics``: names from :data:`~convscope.attribution.metrics.METRICS`,
    with ``metric_options`` ``{metric: {...}}``; the re-explaining metrics (max-sensitivity,
    model randomisation) re-run the method being judged with its options; the localisation
    metrics need ``masks`` (N, H, W) or ``boxes`` (N, 4). ``target``: a class target ("top",
    "class:N", "prob:N"). Everything is checked before any work.

    Work goes in chunks of ``chunk`` images. ``seed`` derives each metric's seed per chunk
    (``derived_seed(seed, metric, chunk index)``: all methods meet the same perturbations) and,
    for a method that takes ``seed`` and was not given one, the method's
    (``derived_seed(seed, method, chunk index)``). A method or metric that fails on a chunk
    scores NaN there and the failure is listed in ``settings["failures"]`` (never a silent 0).
    ``seconds[m, k]`` is the time metric k took on method m's maps, plus, for k = 0, the
    time the method took to explain.

    ``checkpoint``: a file written (atomically, as :meth:`Evaluation.save`) after each chunk;
    called again with the same file and settings, the run resumes after the last finished
    chunk and gives the scores of an uninterrupted one. A checkpoint of other settings is
    refused, naming what differs, and left as it is. ``progress(done, total)`` counts
    (method, image) pairs done. Returns an :class:`Evaluation` of the readable images.
    """
    chunk, specs, mspecs, tgt, data, masks_a, boxes_a, found = _prepare(
        subject, images, methods, metrics, target, names, options, metric_options, masks, boxes, seed, chunk
    )
    n = len(data)
    method_names = [k for k, _, _ in specs]
    metric_names = [k for k, _, _ in mspecs]
    directions = {k: higher_is_better(k, o) for k, _, o in mspecs}  # order="lerf" flips some
    settings = {
        "seed": int(seed),
        "chunk": chunk,
        "target": found["target"],
        "options": {k: _plain(o) for k, _, o in specs},
        "metric_options": {k: _plain(o) for k, _, o in mspecs},
        "fingerprint": found,
        "failures": [],
    }
    m_count, k_count = len(specs), len(mspecs)
    scores = np.full((m_count, k_count, n), np.nan)
    seconds = np.zeros((m_count, k_count))
    targets = [""] * n
    skipped: dict[int, str] = {}
    done = 0  # images whose chunk is finished
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.exists():
        saved = _load_checkpoint(ckpt, found)
        scores = np.array(saved.scores, dtype=np.float64)
        seconds = np.array(saved.seconds, dtype=np.float64)
        targets = list(saved.targets)
        state = saved.settings["resume"]
        done = int(state["done"])
        skipped = {int(i): str(r) for i, r in state["skipped"]}
        settings["failures"] = list(saved.settings.get("failures", []))
    total = m_count * n
    report = progress or (lambda d, t: None)
    report(done * m_count, total)

    for start in range(done, n, chunk):
        c_idx = start // chunk
        idx = list(range(start, min(start + chunk, n)))
        good, x, bad = data.load(idx)
        skipped.update(bad)
        if x is not None:
            t = _resolved(subject, tgt, x, good)
            classes = torch.as_tensor(t.classes if len(t.classes) > 1 else t.classes * len(good))
            for j, i in enumerate(good):
                targets[i] = t.for_image(j).describe(0, subject)
        for mi, (key, method, opts) in enumerate(specs):
            if x is not None:
                _score_chunk(
                    subject, x, t, classes, good, c_idx, mi, key, method, opts, mspecs,
                    masks_a, boxes_a, seed, scores, seconds, settings["failures"],
                )  # fmt: skip
            report(start * m_count + (mi + 1) * len(idx), total)
        done = idx[-1] + 1
        if ckpt is not None:
            _save_checkpoint(
                ckpt, method_names, metric_names, directions, data.names, scores, seconds, targets,
                subject, settings, done, skipped,
            )  # fmt: skip
    keep = [i for i in range(n) if i not in skipped]
    if not keep:
        raise UserInputError(f"no readable image among the {n} given ({next(iter(skipped.values()))}, ...)")
    final = dict(settings)
    return Evaluation(
        methods=method_names,
        metrics=metric_names,
        images=[data.names[i] for i in keep],
        scores=scores[:, :, keep],
        higher_is_better=dict(directions),
        targets=[targets[i] for i in keep],
        seconds=seconds,
        model=subject.name,
        settings=final,
        skipped=[f"{data.names[i]}: {r}" for i, r in sorted(skipped.items())],
    )


def _resolved(subject: Subject, tgt: Target, x: torch.Tensor, good: list[int]) -> Target:
    """The target of the chunk's readable images ``good``: "top" decided on them, per-image
    classes taken for them."""
    if tgt.top:
        return resolve_target(subject, "top", x)
    if len(tgt.classes) > 1:
        return Target(tgt.kind, tuple(tgt.classes[i] for i in good))
    return tgt


def _score_chunk(
    subject,
    x,
    t,
    classes,
    good,
    c_idx,
    mi,
    key,
    method,
    opts,
    mspecs,
    masks,
    boxes,
    seed,
    scores,
    seconds,
    failures,
) -> None:
    """Explain the chunk ``x`` with one method and score its maps by every metric, into
    ``scores[mi, :, good]``; failures noted, their scores left NaN."""
    from convscope.attribution.api import explain

    rows = np.asarray(good)
    began = time.perf_counter()
    run_opts = dict(opts)
    if not callable(method) and "seed" in get_method(method).takes and "seed" not in run_opts:
        run_opts["seed"] = derived_seed(seed, key, c_idx)
    try:
        if callable(method):
            maps = torch.as_tensor(method(subject, x, classes.to(x.device))).detach()
        else:
            maps = torch.as_tensor(explain(subject, x, method, target=t, **run_opts).maps)
        if maps.shape != (len(x), *x.shape[2:]):
            raise UserInputError(f"gave maps of shape {tuple(maps.shape)}, expected {(len(x), *x.shape[2:])}")
    except Exception as e:  # noted per chunk: the other methods and chunks still count
        failures.append({"method": key, "metric": None, "images": [int(i) for i in good], "error": _why(e)})
        seconds[mi, 0] += time.perf_counter() - began
        return
    seconds[mi, 0] += time.perf_counter() - began
    for ki, (mname, fn, mopts) in enumerate(mspecs):
        began = time.perf_counter()
        kw = dict(mopts)
        kw["seed"] = derived_seed(seed, mname, c_idx)
        if mname in METRICS and mname in NEEDS_METHOD:
            kw["method"] = method
            kw["options"] = run_opts if not callable(method) else None  # the options the maps came from
        if mname in NEEDS_REGIONS:
            kw["masks"] = masks[rows] if masks is not None else None
            kw["boxes"] = boxes[rows] if boxes is not None else None
        try:
            v = fn(subject, x, maps, classes.to(x.device), **kw)
            scores[mi, ki, rows] = torch.as_tensor(v, dtype=torch.float64).cpu().numpy()
        except Exception as e:
            failures.append(
                {"method": key, "metric": mname, "images": [int(i) for i in good], "error": _why(e)}
            )
        seconds[mi, ki] += time.perf_counter() - began


def _why(e: Exception) -> str:
    text = str(e).splitlines()[0][:200] if str(e) else ""
    return f"{type(e).__name__}: {text}".rstrip(": ")


def _save_checkpoint(
    path, methods, metrics, directions, names, scores, seconds, targets, subject, settings, done, skipped
):
    partial = Evaluation(
        methods=methods,
        metrics=metrics,
        images=list(names),
        scores=scores,
        higher_is_better=dict(directions),
        targets=list(targets),
        seconds=seconds,
        model=subject.name,
        settings={
            **settings,
            "resume": {
                "kind": CHECKPOINT_KIND,
                "done": int(done),
                "skipped": [[i, r] for i, r in sorted(skipped.items())],
            },
        },
        skipped=[f"{names[i]}: {r}" for i, r in sorted(skipped.items())],
    )
    partial.save(path)


def _load_checkpoint(path: Path, fingerprint: dict) -> Evaluation:
    try:
        saved = Evaluation.load(path)
    except UserInputError as e:
        raise UserInputError(f"cannot resume from {path}: {e}; it is left as it is") from None
    state = saved.settings.get("resume") if isinstance(saved.settings, dict) else None
    if not isinstance(state, dict) or state.get("kind") != CHECKPOINT_KIND:
        raise UserInputError(f"{path} is not an evaluate checkpoint; it is left as it is (give another path)")
    old = saved.settings.get("fingerprint") or {}
    differ = sorted(k for k in fingerprint.keys() | old.keys() if old.get(k) != fingerprint.get(k))
    if differ:
        raise UserInputError(
            f"the checkpoint {path} belongs to an evaluation with other settings ({', '.join(differ)}); "
            "it is left as it is: give another checkpoint path or the same settings"
        )
    return saved


__all__ = ["callable_id", "derived_seed", "evaluate", "fingerprint", "weights_digest"]
