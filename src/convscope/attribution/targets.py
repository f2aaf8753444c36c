"""What an attribution explains: a class score, a unit, or a direction; and how to compute it.

Target specifications (strings, as on the command line, or objects):

- ``"top"``: the predicted class of each image (its logit);
- ``"class:285"`` / ``285`` / ``"class:Egyptian cat"``: a class logit (by index or by name, any
  case); ``"prob:285"`` / ``"prob:zebra"``: its softmax probability;
- ``"blocks.5:17"``: channel 17 of a layer, spatially averaged; ``"blocks.5:17@3,4"``: the single
  neuron at map position (3, 4);
- a :class:`~convscope.Unit` or :class:`~convscope.Direction`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from convscope.errors import UserInputError
from convscope.recorder import Recorder, select_tensor
from convscope.subject import Subject
from convscope.units import Direction, Unit


@dataclass(frozen=True)
class Target:
    """A resolved target. ``kind`` is ``class``, ``prob``, ``unit`` or ``direction``."""

    kind: str
    classes: tuple[int, ...] = ()  # per image (class/prob); empty until resolved for "top"
    unit: Unit | None = None
    direction: Direction | None = None
    top: bool = False

    @property
    def layer(self) -> str | None:
        if self.unit is not None:
            return self.unit.layer
        if self.direction is not None:
            return self.direction.layer
        return None

    def describe(self, i: int = 0, subject: Subject | None = None) -> str:
        if self.kind in ("class", "prob"):
            c = self.classes[i] if len(self.classes) > 1 else self.classes[0]
            name = subject.label(c) if subject is not None else str(c)
            return f"{'p' if self.kind == 'prob' else 'logit'}({name})"
        if self.unit is not None:
            return f"unit {self.unit}"
        return f"direction {self.direction}"

    def for_image(self, i: int) -> Target:
        """The target of image ``i`` alone (differs from ``self`` for per-image classes)."""
        if self.kind in ("class", "prob") and len(self.classes) > 1:
            return Target(self.kind, (self.classes[i],), top=self.top)
        return self

    def repeated(self, k: int) -> Target:
        """The target for a batch that repeats the images ``k`` times (k-major)."""
        if self.kind in ("class", "prob") and len(self.classes) > 1:
            return Target(self.kind, tuple(self.classes) * k, top=self.top)
        return self

    def from_logits(self, out: torch.Tensor) -> torch.Tensor:
        """Class score per image (N,) from the model's output (N, classes)."""
        if self.kind == "prob":
            out = out.softmax(-1)
        idx = torch.as_tensor(self.classes, device=out.device)
        if idx.numel() == 1:
            idx = idx.expand(out.shape[0])
        return out.gather(1, idx.view(-1, 1))[:, 0]

    def score(self, subject: Subject, x: torch.Tensor) -> torch.Tensor:
        """Target score per image (N,), differentiable with respect to ``x``.

        Unit and direction targets stop the forward pass after their layer."""
        if self.kind in ("class", "prob"):
            return self.from_logits(logits(subject, x))
        layer = self.layer
        with Recorder(subject, [layer], stop=True, detach=False, clone=False) as rec:
            subject(x)
        return self.from_activation(rec[layer])

    def from_activation(self, a: torch.Tensor) -> torch.Tensor:
        """Score (N,) from the target layer's activation (N, C[, H, W])."""
        if a.dim() == 2:
            a = a[:, :, None, None]
        if self.direction is not None:
            vec = self.direction.vector.to(a.device, a.dtype)
            return torch.einsum("nchw,c->n", a, vec) / (a.shape[2] * a.shape[3])
        u = self.unit
        if u.y is not None:
            return a[:, u.channel, u.y, u.x]
        return a[:, u.channel].mean(dim=(1, 2))


def logits(subject: Subject, x: torch.Tensor) -> torch.Tensor:
    """The model's class scores (N, classes), whatever container the model returns them in."""
    out = subject.model(x)
    if not isinstance(out, torch.Tensor):
        out = select_tensor(out, "logits" if isinstance(out, dict) else None, "output")
    return out


def resolve_target(subject: Subject, spec, x: torch.Tensor | None = None) -> Target:
    """Check a target specification against the subject (before any work) and resolve ``top``
    with one forward pass of ``x``."""
    if isinstance(spec, Target):
        return spec
    if isinstance(spec, Unit):
        return _unit_target(subject, spec)
    if isinstance(spec, Direction):
        info = subject.layer(spec.layer)
        if spec.vector.numel() != info.units:
            raise UserInputError(
                f"direction has {spec.vector.numel()} entries, {spec.layer} has {info.units} channels"
            )
        return Target("direction", direction=spec)
    if isinstance(spec, int):
        spec = f"class:{spec}"
    text = str(spec).strip()
    if text.isdigit():  # as the int 285: a class index
        text = f"class:{text}"
    if text == "top":
        if x is None:
            return Target("class", top=True)
        with torch.no_grad():
            pred = logits(subject, x).argmax(-1)
        return Target("class", tuple(int(c) for c in pred.tolist()), top=True)
    head, sep, rest = text.partition(":")
    if head in ("class", "prob", "logit"):
        if not rest.strip():
            raise UserInputError(f"target {text!r}: expected {head}:INDEX or {head}:NAME")
        return Target("prob" if head == "prob" else "class", (subject.class_index(rest),))
    if not sep:
        raise UserInputError(f"target {text!r} is not {TARGET_FORMS}" + _target_hint(subject, text))
    return _unit_target(subject, Unit.parse(text))


TARGET_FORMS = "top, class:N, class:NAME, prob:N, prob:NAME or LAYER:UNIT[@y,x]"


def _target_hint(subject: Subject, text: str) -> str:
    """What a target without a colon may have meant: a class, or a layer's unit."""
    from convscope.errors import close_matches

    try:
        name = subject.label(subject.class_index(text)).replace(" ", "_")  # shell-safe, accepted
        return f"; did you mean class:{name}?"
    except UserInputError:
        pass
    try:
        layers = close_matches(text, subject.layers.names(), 3)
    except Exception:  # a model without a layer table (TorchScript)
        layers = []
    if text in subject.layers:
        layers = [subject.layer(text).name]
    return f"; did you mean {', '.join(f'{n}:UNIT' for n in layers)}?" if layers else ""


def _unit_target(subject: Subject, unit: Unit) -> Target:
    info = subject.layer(unit.layer)
    if info.units is None or not 0 <= unit.channel < info.units:
        raise UserInputError(f"{unit.layer} has no unit {unit.channel} (0..{(info.units or 1) - 1})")
    if unit.y is not None:
        if not info.is_map:
            raise UserInputError(f"{unit.layer} has no spatial map; drop the @y,x position")
        _, h, w = info.shape
        if not (0 <= unit.y < h and 0 <= unit.x < w):
            raise UserInputError(f"position ({unit.y}, {unit.x}) is outside {unit.layer}'s {h}x{w} map")
    return Target("unit", unit=Unit(info.name, unit.channel, unit.y, unit.x))
