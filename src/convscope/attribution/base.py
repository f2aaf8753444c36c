"""The attribution method protocol and registry, and the input gradient they share."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from convscope.attribution.relu_rules import ReluRule, Rule
from convscope.attribution.targets import Target
from convscope.errors import UserInputError
from convscope.subject import Subject


class Method:
    """An attribution method: the constructor stores options, :meth:`attribute` does the work.

    ``attribute(x, target)`` takes a preprocessed batch (N, 3, H, W) and a resolved
    :class:`Target` and returns ``(maps (N, H, W), raw (N, 3, H, W) or None)`` as tensors.
    """

    name = "method"
    signed = False
    takes: tuple[str, ...] = ()  # the options the method reads; explain refuses any other
    # True where the method changes how the model's operations run (backward rules, Zennit's
    # module rules, bias capture): a TorchScript model runs them inside its graph, out of reach
    intercepts = False
    reads_model = True  # False for the baselines that ignore the model (their maps say so)
    progress: Callable[[float, int], None] | None = None  # set by ``explain(progress=...)``
    fills: tuple[str, ...] = ()  # the values of its ``fill`` option, for the method that takes one

    def __init__(self, subject: Subject, **options):
        self.validate(options)
        self.subject = subject
        self.options = options

    @classmethod
    def validate(cls, options: Mapping[str, object]) -> None:
        """Refuse a bad option value in one line, before any work (cheap: no model, no images):
        ``explain`` and ``evaluate`` call it on the options given (their names are checked by
        :func:`~convscope.attribution.api.check_options`). Here: ``fill`` among :attr:`fills`;
        methods add their own checks."""
        fill = options.get("fill")
        if cls.fills and fill is not None and fill not in cls.fills:
            from convscope.errors import UserInputError

            raise UserInputError(f"{cls.name}: fill must be one of {', '.join(cls.fills)}, not {fill!r}")

    def report(self, done: float, total: int) -> None:
        """Tell ``explain``'s ``progress`` how far :meth:`attribute` is, in images (``done`` may
        be fractional: methods that loop over positions or channels report each batch)."""
        if self.progress is not None:
            self.progress(done, total)

    def attribute(self, x: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def input_gradient(
    subject: Subject,
    x: torch.Tensor,
    target: Target,
    rule: Rule | None = None,
    on_rule: Callable[[ReluRule], None] | None = None,
) -> torch.Tensor:
    """d target / d x for a batch (N, 3, H, W); with ``rule``, rectifiers use that backward rule."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        if rule is None:
            score = target.score(subject, x)
        else:
            mode = ReluRule(rule)
            with mode:
                score = target.score(subject, x)
            if on_rule is not None:
                on_rule(mode)
        if not score.requires_grad:
            raise no_gradient_error(subject)
        (grad,) = torch.autograd.grad(score.sum(), x)
    return grad


BLACKBOX = "occlusion, rise, kernel_shap, lime"


def is_scripted(model: torch.nn.Module) -> bool:
    """Whether ``model`` (or a module in it) is TorchScript, whose operations run inside its
    graph where neither hooks nor function modes reach them."""
    return any(isinstance(m, torch.jit.ScriptModule) for m in model.modules())


def scripted_error(method: str) -> Exception:
    """The one-line error of a method that intercepts operations on a TorchScript model."""
    from convscope.errors import UserInputError

    return UserInputError(
        f"{method} changes how the model's operations run, which a TorchScript model does inside its "
        f"graph: load the model with its architecture, or use saliency, input_x_gradient, smoothgrad, "
        f"integrated_gradients or a black-box method ({BLACKBOX})"
    )


class NoGradientError(UserInputError):
    """A gradient method on a model whose score has no gradient (run under no_grad, detached)."""


# The CAMs that read activations and forward passes only: they work where hooks do.
GRADIENT_FREE_CAMS = "scorecam, eigencam, ablationcam"


def no_gradient_error(subject: Subject | None = None) -> NoGradientError:
    """The one-line error of a gradient method on a model whose score has no gradient; the
    gradient-free CAMs are suggested too where the model takes hooks (``subject`` not scripted)."""
    cams = subject is not None and not is_scripted(subject.model)
    also = f", or a CAM that needs no gradient ({GRADIENT_FREE_CAMS})" if cams else ""
    return NoGradientError(
        "the model's score has no gradient with respect to its input (a model run under no_grad "
        f"or returning detached tensors): use a black-box method ({BLACKBOX}){also}"
    )
