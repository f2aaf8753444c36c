"""Dictionaries of concepts learned from a layer's activations: NMF (CRAFT, Fel et al. 2023), PCA
and ICA through scikit-learn, TopK / BatchTopK sparse autoencoders (:mod:`convscope.concepts.sae`).

NMF needs non-negative activations. A layer whose sampled activations go below zero (a conv
before its ReLU, a transformer block) is a one-line error suggesting a post-activation layer;
``clip=True`` instead clips the activations at 0 before fitting and encoding (the rule: NMF then
factorises ``max(x, 0)``, and says so in ``settings["clip"]``).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from convscope.concepts.activations import Progress, collect_activations
from convscope.concepts.result import NMF_ENCODE, ConceptSet
from convscope.errors import UserInputError
from convscope.subject import Subject

METHODS = ("nmf", "pca", "ica", "sae-topk", "sae-batchtopk")
# NMF's settings (scikit-learn's names) and their defaults here
NMF_SETTINGS = {
    "init": None, "solver": "cd", "beta_loss": "frobenius", "max_iter": 400, "tol": 1e-4,
    "alpha_W": 0.0, "alpha_H": "same", "l1_ratio": 0.0,
}  # fmt: skip


def fit_concepts(
    subject: Subject,
    data,
    layer: str,
    method: str = "nmf",
    n: int = 32,
    *,
    per_image: int | None = 16,
    max_samples: int = 100_000,
    seed: int = 0,
    device=None,
    progress: Progress | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    accel=None,
    checkpoint=None,
    checkpoint_every: float = 30.0,
    resume: bool = False,
    fit_progress: Progress | None = None,
    **options,
) -> ConceptSet:
    """Learn ``n`` concepts of ``layer`` from the images of ``data``: activations sampled by
    :func:`~convscope.concepts.activations.collect_activations` (``per_image`` positions per
    image, a uniform reservoir of at most ``max_samples``, seeded), then factorised by ``method``
    (see :func:`fit_dictionary` for ``options``). ``device``: where the images run and the SAE
    trains (None: the subject's device; the model is moved there for the call and back after).
    ``progress(done, total)`` counts images, ``fit_progress(done, total)`` the fit's steps (the
    SAE's training steps; one step for the scikit-learn methods). ``checkpoint``,
    ``checkpoint_every``, ``resume``: the collection's checkpoint (see
    :func:`~convscope.concepts.activations.collect_activations`; the fit itself is not
    checkpointed). Returns a :class:`ConceptSet`."""
    check_method(method, n)
    old = subject.device
    if device is not None:
        subject.to(device)
    try:
        acts = collect_activations(
            subject,
            data,
            layer,
            per_image=per_image,
            max_samples=max_samples,
            seed=seed,
            batch_size=batch_size,
            workers=workers,
            accel=accel,
            progress=progress,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            resume=resume,
        )
        run_on = subject.device
    finally:
        subject.to(old)
    tick = fit_progress or (lambda done, total: None)
    if method.startswith("sae-"):
        options["progress"] = tick
    else:
        tick(0, 1)
    out = fit_dictionary(
        acts.x, method, n, layer=acts.layer, seed=seed, device=run_on, model=subject.name, **options
    )
    if not method.startswith("sae-"):
        tick(1, 1)
    out.images, out.skipped = acts.images, list(acts.skipped)
    return out


def check_method(method: str, n: int) -> None:
    if method not in METHODS:
        from difflib import get_close_matches

        close = get_close_matches(method, METHODS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserInputError(f"unknown concept method {method!r}{hint}; choose one of {', '.join(METHODS)}")
    if n < 1:
        raise UserInputError(f"n (the number of concepts) must be >= 1, not {n}")


def method_options(method: str) -> set[str]:
    """The option names :func:`fit_dictionary` takes for ``method`` (its ``options``): NMF's
    settings and ``clip``, scikit-learn's PCA / FastICA keywords, the SAE trainer's (also
    spelled ``sae_k``, ``sae_steps``, ``sae_batch_size``)."""
    import inspect

    def keywords(fn, *drop) -> set[str]:
        return set(inspect.signature(fn).parameters) - {"self", *drop}

    check_method(method, 1)
    if method == "nmf":
        return {*NMF_SETTINGS, "clip"}
    if method in ("pca", "ica"):
        from sklearn.decomposition import PCA, FastICA

        return keywords(PCA if method == "pca" else FastICA, "n_components", "random_state")
    from convscope.concepts.sae import train_sae

    own = keywords(train_sae, "x", "n_atoms", "method", "seed", "device", "progress")
    return own | {f"sae_{key}" for key in ("batch_size", "k", "steps")}


def fit_dictionary(
    x: torch.Tensor,
    method: str = "nmf",
    n: int = 32,
    *,
    layer: str = "layer",
    seed: int = 0,
    device=None,
    model: str = "model",
    **options,
) -> ConceptSet:
    """Factorise activations ``x`` (N, C) into ``n`` concepts by ``method``.

    ``options`` per method: nmf: ``init`` (scikit-learn's; None: its default), ``solver``
    ("cd"), ``beta_loss``, ``max_iter`` (400), ``tol`` (1e-4), ``alpha_W``, ``alpha_H``,
    ``l1_ratio``, ``clip`` (False: see the module docs); pca: ``whiten``; ica: ``max_iter``,
    ``tol``; sae-*: ``k`` (default max(1, n // 8)), ``steps`` (2000), ``lr`` (1e-3),
    ``batch_size`` (1024 rows; also spelled ``sae_batch_size``, ``sae_k``, ``sae_steps``, as
    through :func:`fit_concepts`, whose ``batch_size`` is the image batch), trained on ``device``."""
    check_method(method, n)
    x = torch.as_tensor(x).detach().float().cpu()
    if x.dim() != 2 or len(x) < 2:
        raise UserInputError(f"need (N, C) activations with N >= 2, not {tuple(x.shape)}")
    if method == "nmf":
        if n > x.shape[1]:
            # more atoms than channels: the codes are not unique and the encoder never settles
            raise UserInputError(
                f"NMF finds at most {x.shape[1]} concepts of the {x.shape[1]} channels of {layer}, not {n}; "
                "an overcomplete dictionary is the sparse autoencoders' (sae-topk, sae-batchtopk)"
            )
        return _nmf(x, n, layer, seed, model, **options)
    if method in ("pca", "ica"):
        return _linear(x, method, n, layer, seed, model, **options)
    return _sae(x, method, n, layer, seed, device, model, **options)


def _nmf(x, n, layer, seed, model, *, clip: bool = False, **options) -> ConceptSet:
    from sklearn.decomposition import NMF

    low = float(x.min())
    if low < 0 and not clip:
        raise UserInputError(
            f"NMF needs non-negative activations, {layer} goes down to {low:.3g}: choose a post-activation "
            "layer (after a ReLU) or pass clip=True (convscope concepts: --clip) to factorise max(x, 0)"
        )
    settings = dict(NMF_SETTINGS)
    unknown = set(options) - set(settings)
    if unknown:
        raise UserInputError(f"unknown NMF options {sorted(unknown)}; have {', '.join(settings)}, clip")
    settings.update(options)
    if settings["beta_loss"] not in ("frobenius", 2, 2.0):
        # the encoder (concepts/basis.py) solves the Frobenius problem: refused before the fit
        raise UserInputError(
            f"NMF concepts use the Frobenius loss (their codes are least squares), not beta_loss="
            f"{settings['beta_loss']!r}"
        )
    data = (x.clamp_min(0) if clip else x).double().numpy()
    nmf = NMF(n_components=n, random_state=seed, **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: max_iter is the user's budget
        w = nmf.fit_transform(data)
    h = nmf.components_
    settings["clip"] = bool(clip)
    settings["n_iter"] = int(nmf.n_iter_)
    codes = torch.from_numpy(np.asarray(w, np.float32))
    rebuilt = w @ h
    return _result(
        x if not clip else x.clamp_min(0),
        layer,
        "nmf",
        n,
        torch.from_numpy(np.asarray(h, np.float32)),
        codes,
        rebuilt,
        {},
        {k: v for k, v in settings.items() if k in NMF_ENCODE or k in ("init", "clip", "n_iter")},
        [],
        seed,
        model,
    )


def _linear(x, method, n, layer, seed, model, **options) -> ConceptSet:
    from sklearn.decomposition import PCA, FastICA

    data = x.double().numpy()
    if n > min(data.shape):
        raise UserInputError(f"{method} finds at most {min(data.shape)} components here, not {n}")
    if method == "pca":
        fit = PCA(n_components=n, random_state=seed, **options).fit(data)
        if fit.whiten:
            unmixing = fit.components_ / np.sqrt(fit.explained_variance_)[:, None]
            dictionary = fit.components_ * np.sqrt(fit.explained_variance_)[:, None]
        else:
            unmixing = dictionary = fit.components_
    else:
        settings = {"max_iter": 400, "tol": 1e-4, "whiten": "unit-variance"} | options
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = FastICA(n_components=n, random_state=seed, **settings).fit(data)
        unmixing, dictionary = fit.components_, fit.mixing_.T
    mean = fit.mean_
    codes = (data - mean) @ unmixing.T
    rebuilt = codes @ dictionary + mean
    state = {
        "mean": torch.from_numpy(np.asarray(mean, np.float32)),
        "unmixing": torch.from_numpy(np.asarray(unmixing, np.float32)),
    }
    return _result(
        x,
        layer,
        method,
        n,
        torch.from_numpy(np.asarray(dictionary, np.float32)),
        torch.from_numpy(np.asarray(codes, np.float32)),
        rebuilt,
        state,
        {k: v for k, v in options.items() if isinstance(v, bool | int | float | str)},
        [],
        seed,
        model,
    )


def _sae(x, method, n, layer, seed, device, model, *, progress=None, **options) -> ConceptSet:
    from convscope.concepts.sae import train_sae

    # fit_concepts' batch_size is the image batch, and an atlas build's k its top-K: the SAE's
    # own may be spelled sae_batch_size, sae_k, sae_steps
    for key in ("batch_size", "k", "steps"):
        if f"sae_{key}" in options:
            options[key] = options.pop(f"sae_{key}")
    settings = {"k": max(1, n // 8), "steps": 2000, "lr": 1e-3, "batch_size": 1024} | options
    fit = train_sae(
        x, n, method=method.removeprefix("sae-"), seed=seed, device=device, progress=progress, **settings
    )
    with torch.no_grad():
        codes = torch.cat([fit.encode(x[i : i + 8192]).cpu() for i in range(0, len(x), 8192)])
        rebuilt = fit.decode(codes.to(fit.dictionary.device)).cpu().double().numpy()
    state = {
        "pre_bias": fit.pre_bias.detach().float().cpu(),
        "encoder_weight": fit.encoder_weight.detach().float().cpu(),
        "encoder_bias": fit.encoder_bias.detach().float().cpu(),
    }
    settings = {**settings, "threshold": fit.threshold}
    out = _result(
        x,
        layer,
        method,
        n,
        fit.dictionary.detach().float().cpu(),
        codes.float(),
        rebuilt,
        state,
        settings,
        [float(v) for v in fit.curve],
        seed,
        model,
    )
    out.dead = int(fit.dead)
    return out


def _result(x, layer, method, n, dictionary, codes, rebuilt, state, settings, curve, seed, model):
    data = x.double().numpy()
    norm = float(np.linalg.norm(data)) or 1.0
    error = float(np.linalg.norm(data - rebuilt)) / norm
    nonzero = codes != 0
    active = nonzero.float().mean(dim=0)
    return ConceptSet(
        layer=str(layer),  # a plain name (an Address is a str subclass that would not round-trip)
        method=method,
        n=n,
        dictionary=dictionary,
        state=state,
        settings=settings,
        curve=curve,
        error=error,
        sparsity=float(nonzero.float().mean()),
        dead=int((active == 0).sum()),
        usage=codes.mean(dim=0),
        active=active,
        samples=len(x),
        seed=seed,
        model=model,
    )
