"""Class activation maps: Grad-CAM, Grad-CAM++, Score-CAM and Guided Grad-CAM (the rest of the
family is in :mod:`.cam_family`).

All take ``layer=`` (any layer with a spatial map; default: the last stage whose positions reach
the output, see :func:`default_cam_layer`) and
return the map upsampled bilinearly to the input size, as in the papers' code (Captum's
``LayerGradCam`` + ``interpolate`` upsamples with nearest-neighbour by default). Maps are not
normalised: ``AttributionMap.normalized`` scales them for display.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from convscope.attribution.base import Method, input_gradient, register
from convscope.attribution.targets import Target, logits
from convscope.errors import UserInputError
from convscope.layers import LayerInfo
from convscope.recorder import Recorder, select_tensor

# subject -> {target layer (None: the model output) -> default CAM layer}; weak so that a
# subject's cache goes with it.
_DEFAULTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cam_candidates(subject) -> list[LayerInfo]:
    """The layers a default CAM layer is chosen from, in forward order: the stages (see
    :meth:`LayerTable.stages`) and, for a vision transformer, every patch-token map (at the token
    grid) outside an attention module (its query/key/value projections mix roles and heads)."""
    found = {i.name: i for i in subject.layers.stages()}
    layout = subject.token_layout
    if layout is not None:
        types = {i.module: i.type for i in subject.layers}
        for info in subject.layers:
            if (
                info.is_map
                and tuple(info.shape[1:]) == (layout.height, layout.width)
                and layout.height * layout.width > 1
                and not _in_attention(info.module, types)
            ):
                found.setdefault(info.name, info)
    return sorted(found.values(), key=lambda i: i.order)


def _in_attention(module: str, types: dict[str, str]) -> bool:
    parts = module.split(".")
    return any("attention" in types.get(".".join(parts[:k]), "").lower() for k in range(1, len(parts) + 1))


def reaching_layers(subject, names: list[str], target_layer: str | None = None) -> set[str]:
    """Those of ``names`` (map layers) whose gradient, from one forward and backward pass of a
    random image, is nonzero at more than one spatial position: their positions reach the model
    output (``target_layer``: that layer's output). A class-token transformer's patch tokens after
    its last attention reach nothing (only the class token goes on)."""
    names = [n for n in names if n != target_layer]
    if not names:
        return set()
    h, w = subject.input_size
    param = next((p for p in subject.model.parameters() if p.is_floating_point()), None)
    dtype = param.dtype if param is not None else torch.float32
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, h, w, generator=gen).to(subject.device, dtype)

    def project(t):  # onto a fixed random direction: a plain sum can cancel (e.g. after a softmax)
        return (t * torch.randn(t.shape, generator=gen).to(t.device, t.dtype)).sum()

    head_in: list[torch.Tensor] = []

    def score(rec):
        if target_layer is not None:
            subject(x)
            return project(rec[target_layer])
        out = project(logits(subject, x))
        return out + sum(project(t) for t in head_in)

    head = _head(subject) if target_layer is None else None
    handle = None
    if head is not None:
        # The head's input too: a head initialised to zero (torchvision's ViT) passes no
        # gradient back, yet the positions that feed it are the ones that matter.
        module = dict(subject.model.named_modules())[head]
        handle = module.register_forward_pre_hook(
            lambda m, args: head_in.extend(a for a in args[:1] if isinstance(a, torch.Tensor))
        )
    extra = [target_layer] if target_layer else []
    try:
        found = maps_and_grads(subject, names, score, extra, stop=bool(extra))
    finally:
        if handle is not None:
            handle.remove()
    return {n for n, (_, g) in found.items() if g is not None and _positions_reached(g) > 1}


def maps_and_grads(subject, names: list[str], score, extra: list[str] = (), stop: bool = False) -> dict:
    """``{name: (map, gradient map or None)}`` for map layers ``names``: one forward pass records
    them (and ``extra``, for the score) and ``score(recorder)`` runs it and returns a scalar;
    ``stop`` ends the pass once they are recorded.

    The gradient is taken with respect to each layer's raw output and then put in map form as
    the recording is (a token map is a slice of the sequence, not a tensor the model used);
    None where the score does not depend on the layer at all."""
    raw: dict[str, torch.Tensor] = {}

    def keep(address, call, output):
        raw[address] = output

    with (
        torch.enable_grad(),
        Recorder(subject, list(names) + list(extra), detach=False, stop=stop, callback=keep) as rec,
    ):
        value = score(rec)
        if not value.requires_grad:  # a model run under no_grad or returning detached tensors
            from convscope.attribution.base import no_gradient_error

            raise no_gradient_error(subject)
        maps = {n: rec[n] for n in names}  # also checks each ran once
        outs = [select_tensor(raw[n], None, n) for n in names]
        grads = torch.autograd.grad(value, outs, allow_unused=True)
    return {
        n: (m.detach(), None if g is None else rec.extract(n, g).detach())
        for (n, m), g in zip(maps.items(), grads)
    }


def _head(subject) -> str | None:
    """The leaf module that finishes last, if its output is not a map (a classifier head)."""
    modules = {i.module for i in subject.layers}
    leaves = [
        i
        for i in subject.layers
        if i.shape is not None and i.module and not any(m.startswith(i.module + ".") for m in modules)
    ]
    if not leaves:
        return None
    last = max(leaves, key=lambda i: i.order)
    return None if last.is_map else last.module


def _positions_reached(grad: torch.Tensor) -> int:
    """How many spatial positions of a map gradient (N, C, H, W) are nonzero."""
    return int((grad.detach().abs().sum(dim=(0, 1)) > 0).sum())


def default_cam_layer(subject, target_layer: str | None = None) -> str:
    """The default CAM layer: the last of :func:`cam_candidates` whose spatial positions reach the
    model output (a CNN's last stage; a class-token ViT's last patch-token map before its last
    attention). With ``target_layer`` (a unit target), the last such layer that runs before it
    and reaches it, else that layer itself. Found once per subject by one forward and backward
    pass (:func:`reaching_layers`); where the score has no gradient, the last candidate."""
    cache = _DEFAULTS.setdefault(subject, {})
    if target_layer in cache:
        return cache[target_layer]
    candidates = cam_candidates(subject)
    if target_layer is not None:
        tinfo = subject.layer(target_layer)
        candidates = [i for i in candidates if i.order < tinfo.order]
        if not candidates:
            cache[target_layer] = tinfo.name
            return tinfo.name
    elif not candidates:
        raise UserInputError(
            "the model has no spatial layer for a CAM; name one with --layers (layer= in Python)"
        )
    from convscope.attribution.base import NoGradientError

    try:
        reached = reaching_layers(subject, [i.name for i in candidates], target_layer)
    except NoGradientError:
        # No gradient to probe the reach with (a model run under no_grad): the last candidate (a
        # CNN's last stage). The gradient-free CAMs (Score-CAM, Eigen-CAM, Ablation-CAM) run on it;
        # a gradient CAM refuses when it takes its own gradient.
        reached = {candidates[-1].name}
    chosen = [i.name for i in candidates if i.name in reached]
    if not chosen and target_layer is not None:
        chosen = [subject.layer(target_layer).name]
    if not chosen:
        raise UserInputError(
            "no spatial layer's positions reach the model output, so a CAM has nothing to weigh; "
            "name one with --layers (layer= in Python)"
        )
    cache[target_layer] = chosen[-1]
    return chosen[-1]


class CamMethod(Method):
    """A CAM: a method that weighs one map layer (``layer=``); the CAM family builds on it."""

    takes = ("layer",)

    def layer(self, target: Target | None = None) -> str:
        """The CAM layer: ``layer=`` or, by default, :func:`default_cam_layer` (the last stage
        whose positions reach the output; for a unit target, the last one before the unit's
        layer that reaches it, else that layer itself)."""
        name = self.options.get("layer")
        tlayer = target.layer if target is not None and target.layer else None
        tinfo = self.subject.layer(tlayer) if tlayer else None
        info = self.subject.layer(name or default_cam_layer(self.subject, tinfo and tinfo.name))
        if not info.is_map:
            raise UserInputError(f"{info.name} has no spatial map ({info.shape}); CAMs need one")
        if tinfo is not None and info.order > tinfo.order:
            raise UserInputError(
                f"CAM layer {info.name} runs after the target's layer {tinfo.name}; choose an earlier layer"
            )
        return info.name

    def activations_and_grads(self, x: torch.Tensor, target: Target):
        layer = self.layer(target)
        extra = [target.layer] if target.layer and target.layer != layer else []
        x = x.detach().clone().requires_grad_(True)

        def score(rec):
            out = self.subject(x)
            if target.layer is not None:
                return target.from_activation(rec[target.layer]).sum()
            return target.from_logits(out).sum()

        stop = target.layer is not None
        acts, grads = maps_and_grads(self.subject, [layer], score, extra, stop)[layer]
        if grads is None or (
            not bool((grads != 0).any()) and layer not in reaching_layers(self.subject, [layer], target.layer)
        ):
            self.unreached(layer, target)
        return acts, grads

    def unreached(self, layer: str, target: Target):
        """Refuse a CAM layer whose positions do not reach the score (a class-token transformer's
        patch tokens after its last attention): no gradient flows back to it (a zero gradient
        of this batch alone, e.g. from dead rectifiers, is a valid all-zero map)."""
        where = f"layer {target.layer}" if target.layer else "the model output"
        try:
            default = default_cam_layer(self.subject, target.layer)
            hint = f"; the default CAM layer is {default}" if default != layer else ""
        except UserInputError:
            hint = ""
        raise UserInputError(
            f"CAM layer {layer}: its positions do not reach {where} (no gradient flows back to "
            f"them), so Grad-CAM has nothing to weigh{hint}"
        )

    def upsample(self, cam: torch.Tensor, size) -> torch.Tensor:
        return F.interpolate(cam[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


@register
class GradCAM(CamMethod):
    """Grad-CAM (Selvaraju et al. 2017): ReLU(sum_k w_k A_k), w_k = spatial mean of dS/dA_k."""

    name = "gradcam"

    def attribute(self, x, target):
        acts, grads = self.activations_and_grads(x, target)
        w = grads.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((w * acts).sum(dim=1))
        return self.upsample(cam, x.shape[2:]), None


@register
class GradCAMPlusPlus(CamMethod):
    """Grad-CAM++ (Chattopadhay et al. 2018), with the closed-form alphas of the paper's
    exponential-score derivation (eq. 19): a = g^2 / (2 g^2 + sum(A) g^3), w_k = sum a ReLU(g).

    The ratio is computed as 1 / (2 + sum(A) g) where g != 0, which is exact and independent of
    the gradients' scale; pytorch-grad-cam adds eps = 1e-6 to the denominator instead, which
    dominates when gradients are small (|g| ~ 1e-3) and then changes the map."""

    name = "gradcam++"

    def attribute(self, x, target):
        acts, grads = self.activations_and_grads(x, target)
        denom = 2 + acts.sum(dim=(2, 3), keepdim=True) * grads
        ok = (grads != 0) & (denom.abs() > 1e-12)
        alpha = torch.where(ok, 1 / torch.where(ok, denom, torch.ones_like(denom)), torch.zeros_like(denom))
        w = (alpha * F.relu(grads)).sum(dim=(2, 3), keepdim=True)
        cam = F.relu((w * acts).sum(dim=1))
        return self.upsample(cam, x.shape[2:]), None


@register
class ScoreCAM(CamMethod):
    """Score-CAM (Wang et al. 2020): each channel, upsampled and scaled to [0, 1], masks the
    input; its weight is the target score of the masked input (the softmax probability for
    class targets, as the authors' code). ``batch=32`` masked inputs per forward pass."""

    name = "scorecam"
    takes = ("layer", "batch")

    def attribute(self, x, target):
        layer = self.layer(target)
        from convscope.attribution.batching import auto_batch

        batch = auto_batch(self.subject, x, self.options.get("batch"))
        with torch.no_grad(), Recorder(self.subject, [layer], stop=True) as rec:
            self.subject(x)
        acts = rec[layer].float()
        up = self.upsample(acts.flatten(0, 1), x.shape[2:]).view(*acts.shape[:2], *x.shape[2:])
        lo = up.amin(dim=(2, 3), keepdim=True)
        hi = up.amax(dim=(2, 3), keepdim=True)
        masks = torch.where(hi > lo, (up - lo) / (hi - lo), torch.zeros_like(up))
        weights = torch.zeros(acts.shape[:2], device=x.device)
        for i in range(x.shape[0]):
            t = target.for_image(i)
            for s in range(0, acts.shape[1], batch):
                m = masks[i, s : s + batch, None]  # (b, 1, H, W)
                with torch.no_grad():
                    if t.layer is None:
                        probs = logits(self.subject, x[i : i + 1] * m).softmax(-1)
                        score = Target("class", t.classes).from_logits(probs)
                    else:
                        score = t.score(self.subject, x[i : i + 1] * m)
                weights[i, s : s + batch] = score
                self.report(i + min(s + batch, acts.shape[1]) / acts.shape[1], x.shape[0])
        cam = F.relu((weights[:, :, None, None] * acts).sum(dim=1))
        return self.upsample(cam, x.shape[2:]), None


@register
class GuidedGradCAM(CamMethod):
    """Guided Grad-CAM (Selvaraju et al. 2017): guided backpropagation times the upsampled
    Grad-CAM, per channel; the map is the channel-wise max of |.|."""

    name = "guided_gradcam"

    def attribute(self, x, target):
        cam, _ = GradCAM(self.subject, **self.options).attribute(x, target)
        guided = input_gradient(self.subject, x, target, rule="guided")
        raw = guided * cam[:, None]
        return raw.abs().amax(dim=1), raw
