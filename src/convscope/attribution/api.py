"""``convscope.explain``: one function in front of every attribution method."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from convscope.attribution.base import METHODS, is_scripted, scripted_error
from convscope.attribution.result import AttributionMap
from convscope.attribution.targets import Target, resolve_target
from convscope.errors import UserInputError
from convscope.subject import ImageLike, Subject

ALIASES = {
    "gradient": "saliency",
    "guided_backprop": "guided",
    "deconv": "deconvnet",
    "ig": "integrated_gradients",
    "gradcampp": "gradcam++",
    "zf": "zeiler_fergus",
    "inputxgradient": "input_x_gradient",
}


def method_names() -> list[str]:
    """Every method ``explain`` accepts."""
    return sorted(METHODS)


def get_method(name: str):
    key = ALIASES.get(name.lower(), name.lower())
    if key not in METHODS:
        from convscope.errors import NameNotFoundError

        raise NameNotFoundError(name, list(METHODS) + list(ALIASES), what="attribution method")
    return METHODS[key]


def method_options(method: str) -> tuple[str, ...]:
    """The keyword options that ``method`` (a name or alias) takes, e.g. ``("layer",)`` for
    the CAMs and ``("window", "stride", "batch", "fill", "seed")`` for occlusion."""
    return get_method(method).takes


def options_for(method: str, options: Mapping[str, object]) -> dict:
    """The entries of ``options`` that ``method`` takes: one set of settings (a command line's)
    for several methods at once."""
    takes = method_options(method)
    return {k: v for k, v in options.items() if k in takes}


def check_options(method: str, options: Mapping[str, object]) -> None:
    """Raise a one-line :class:`UserInputError` for an option ``method`` does not take (with the
    closest option it does take, or the ones it takes)."""
    import difflib

    cls = get_method(method)
    for key in options:
        if key not in cls.takes:
            close = difflib.get_close_matches(key, cls.takes, n=1)
            hint = (
                f"did you mean {close[0]!r}?"
                if close
                else f"it takes {', '.join(cls.takes)}"
                if cls.takes
                else "it takes no options"
            )
            raise UserInputError(f"{cls.name} has no option {key!r}; {hint}")


def explain(
    subject: Subject,
    images: ImageLike | Sequence[ImageLike] | torch.Tensor,
    method: str = "saliency",
    target="top",
    progress: Callable[[float, int], None] | None = None,
    **options,
) -> AttributionMap:
    """Attribution maps of ``target`` for each image.

    ``images`` are paths, PIL images, uint8 arrays or a preprocessed batch (N, 3, H, W);
    ``target`` is ``"top"``, ``"class:285"``, ``"prob:285"``, ``"layer:channel[@y,x]"``, an int,
    a :class:`~convscope.Unit` or a :class:`~convscope.Direction`; ``options`` go to the method
    (see each method's docstring and :func:`method_options`; CAMs take ``layer=``); an option
    the method does not take is refused. The target and options are checked before any work.
    ``progress(done, total)`` is told how many of the ``total`` images are done: when each
    image is, for occlusion and Score-CAM after each batch of positions or channels (fractional),
    and for the methods that take the batch at once when it is.
    """
    cls = get_method(method)
    check_options(cls.name, options)
    cls.validate(options)  # bad values (a fill it has not, an unknown composite) before any work
    if cls.intercepts and is_scripted(subject.model):
        raise scripted_error(cls.name)
    x = images if isinstance(images, torch.Tensor) else subject.load_images(images)
    x = x.to(subject.device)
    if x.dim() != 4 or x.shape[1] != 3:
        raise UserInputError(f"expected images (N, 3, H, W), got {tuple(x.shape)}")
    tgt = resolve_target(subject, target, x)
    impl = cls(subject, **options)
    impl.progress = progress
    n = x.shape[0]
    impl.report(0, n)
    maps, raw = impl.attribute(x, tgt)  # a model without gradients: refused where the score is taken
    impl.report(n, n)
    seen = subject.preprocess.denormalize(x.detach()).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return AttributionMap(
        method=cls.name,
        maps=maps.detach().float().cpu().numpy(),
        images=seen,
        # a baseline that ignores the model explains no score: its maps are not titled by one
        targets=[tgt.describe(i, subject) if cls.reads_model else "ignores the model" for i in range(n)],
        raw=raw.detach().float().cpu().numpy() if raw is not None else None,
        signed=cls.signed,
        options=dict(options),
    )


def target_of(subject: Subject, target, x: torch.Tensor) -> Target:
    """The resolved target (``top`` decided by the model) for a batch."""
    return resolve_target(subject, target, x)


__all__ = [
    "check_options",
    "explain",
    "get_method",
    "method_names",
    "method_options",
    "options_for",
    "target_of",
]
