"""The rest of the CAM family: LayerCAM, HiResCAM, XGrad-CAM, EigenCAM, EigenGrad-CAM,
Ablation-CAM and FullGrad, beside Grad-CAM, Grad-CAM++ and Score-CAM in :mod:`.cam`.

They share :mod:`.cam`'s conventions: ``layer=`` (default :func:`~.cam.default_cam_layer`, token
layers of a vision transformer laid out as maps), ReLU of the channel sum, bilinear upsampling
to the input size, no normalisation (``AttributionMap.normalized`` scales for display). Where
pytorch-grad-cam differs, docs/attribution.md says how and why.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from convscope.attribution.base import Method, no_gradient_error, register
from convscope.attribution.cam import CamMethod
from convscope.attribution.targets import Target, logits
from convscope.errors import UserInputError
from convscope.recorder import Recorder


class _GradientCam(CamMethod):
    """A CAM computed from the CAM layer's activations and the score's gradient there."""

    def cam(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """(N, h, w) map before the final ReLU, from activations and gradients (N, C, h, w)."""
        raise NotImplementedError

    def attribute(self, x, target):
        acts, grads = self.activations_and_grads(x, target)
        cam = F.relu(self.cam(acts.float(), grads.float()))
        return self.upsample(cam, x.shape[2:]), None


@register
class LayerCAM(_GradientCam):
    """LayerCAM (Jiang et al. 2021): ReLU(sum_k ReLU(dS/dA_k) A_k), position by position."""

    name = "layercam"

    def cam(self, acts, grads):
        return (F.relu(grads) * acts).sum(dim=1)


@register
class HiResCAM(_GradientCam):
    """HiResCAM (Draelos & Carin 2020): ReLU(sum_k dS/dA_k * A_k), elementwise (no spatial
    averaging of the gradient, unlike Grad-CAM)."""

    name = "hirescam"

    def cam(self, acts, grads):
        return (grads * acts).sum(dim=1)


@register
class XGradCAM(_GradientCam):
    """XGrad-CAM (Fu et al. 2020): w_k = sum_ij (A_k,ij / sum A_k) dS/dA_k,ij, map
    ReLU(sum_k w_k A_k). A channel whose activations sum to zero gets weight 0 (pytorch-grad-cam
    divides by sum + 1e-7, which blows up exactly there)."""

    name = "xgradcam"

    def cam(self, acts, grads):
        total = acts.sum(dim=(2, 3), keepdim=True)
        ok = total != 0
        w = torch.where(ok, grads * acts / torch.where(ok, total, torch.ones_like(total)), 0.0)
        return (w.sum(dim=(2, 3), keepdim=True) * acts).sum(dim=1)


def first_component(m: torch.Tensor) -> torch.Tensor:
    """Projection of each position's channel vector of ``m`` (N, C, h, w), centred over
    positions, on its first principal direction: (N, h, w). The sign is chosen so that the
    projection correlates positively with the centred channel sum (an SVD's sign is arbitrary;
    this makes it the direction in which the layer is more active). Computed in float64."""
    flat = torch.nan_to_num(m.flatten(2).transpose(1, 2).double())  # (N, hw, C)
    centred = flat - flat.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    proj = (centred @ vh[:, 0, :, None])[..., 0]  # (N, hw)
    agree = (proj * centred.sum(dim=2)).sum(dim=1, keepdim=True)
    proj = torch.where(agree < 0, -proj, proj)
    return proj.view(m.shape[0], *m.shape[2:]).float()


@register
class EigenCAM(CamMethod):
    """EigenCAM (Muhammad & Yeasin 2020): the CAM layer's activations projected on their first
    principal component (see :func:`first_component` for the sign), ReLU. Class-agnostic: the
    target is not used, no gradient is taken, and any map layer will do."""

    name = "eigencam"

    def attribute(self, x, target):
        layer = self.layer(target)
        with torch.no_grad(), Recorder(self.subject, [layer], stop=True) as rec:
            self.subject(x)
        cam = F.relu(first_component(rec[layer].float()))
        return self.upsample(cam, x.shape[2:]), None


@register
class EigenGradCAM(_GradientCam):
    """EigenGrad-CAM (pytorch-grad-cam's variant of EigenCAM): the first principal component of
    gradient x activation (see :func:`first_component`), ReLU."""

    name = "eigengradcam"

    def cam(self, acts, grads):
        return first_component(grads * acts)


class _Expand:
    """A forward hook that repeats a layer's batch-1 output ``n`` times (call ``call`` of the
    module, or every call): the layers before it then run once per batch of ablations."""

    def __init__(self, n: int, call: int | None):
        self.n, self.call, self.seen = n, call, 0

    def __call__(self, module, args, output):
        seen, self.seen = self.seen, self.seen + 1
        if self.call is not None and seen != self.call:
            return None
        if not isinstance(output, torch.Tensor) or output.shape[0] != 1:
            raise _CannotExpand
        return output.expand(self.n, *output.shape[1:])


class _CannotExpand(Exception):
    pass


@register
class AblationCAM(CamMethod):
    """Ablation-CAM (Desai & Ramaswamy 2020): w_k = (S - S_k) / S, S_k the score with channel k
    of the CAM layer set to zero; map ReLU(sum_k w_k A_k). ``batch=32`` ablated channels per
    forward pass.

    Batched so that the layers before the CAM layer run once per batch at batch size 1 and only
    the rest of the network runs on the ``batch`` ablated copies (its output is repeated by a
    hook; skip connections from before the layer broadcast). Where that cannot work (the layer
    returns no single tensor, or the output is not one score per copy) the image itself is
    repeated, as pytorch-grad-cam always does."""

    name = "ablationcam"
    takes = ("layer", "batch")

    def attribute(self, x, target):
        layer = self.layer(target)
        batch = int(self.options.get("batch", 32))
        if batch < 1:
            raise UserInputError(f"batch must be at least 1, got {batch}")
        with torch.no_grad():
            acts, base = self._scores(x, target, layer, None, None)
        n, c = acts.shape[:2]
        ablated = torch.empty(n, c, device=x.device)
        for i in range(n):
            t = target.for_image(i)
            for s in range(0, c, batch):
                ks = torch.arange(s, min(s + batch, c), device=x.device)
                with torch.no_grad():
                    ablated[i, ks] = self._ablated(x[i : i + 1], t, layer, ks)
                self.report(i + min(s + batch, c) / c, n)
        y = base[:, None].float()
        drop = y - ablated
        w = torch.where(y != 0, drop / torch.where(y != 0, y, torch.ones_like(y)), drop)
        cam = F.relu((w[:, :, None, None] * acts.float()).sum(dim=1))
        return self.upsample(cam, x.shape[2:]), None

    def _scores(self, x: torch.Tensor, target: Target, layer: str, edit, expand: _Expand | None):
        """(CAM-layer map, target score per row) of one forward pass, ``edit`` applied to the map."""
        names = [layer] + ([target.layer] if target.layer and target.layer != layer else [])
        edits = {layer: edit} if edit is not None else None
        handle = None
        if expand is not None:
            module = dict(self.subject.model.named_modules())[self.subject.layer(layer).module]
            handle = module.register_forward_hook(expand)  # before the recorder's: it sees n copies
        try:
            with Recorder(self.subject, names, edits=edits, stop=target.layer is not None) as rec:
                if target.layer is None:
                    score = target.from_logits(logits(self.subject, x))
                else:
                    self.subject(x)
                    score = target.from_activation(rec[target.layer])
            return rec[layer], score
        finally:
            if handle is not None:
                handle.remove()

    def _ablated(self, xi: torch.Tensor, target: Target, layer: str, ks: torch.Tensor) -> torch.Tensor:
        """Scores of image ``xi`` (1, 3, H, W) with channel ``ks[j]`` zeroed in copy j."""
        rows = torch.arange(len(ks), device=ks.device)

        def edit(m):
            m = m.clone()
            m[rows, ks] = 0
            return m

        t = target.repeated(len(ks)) if target.kind in ("class", "prob") else target
        try:
            _, score = self._scores(xi, t, layer, edit, _Expand(len(ks), self.subject.layer(layer).call))
            if score.shape == (len(ks),):
                return score
        except (_CannotExpand, RuntimeError):
            pass
        _, score = self._scores(xi.expand(len(ks), *xi.shape[1:]), t, layer, edit, None)
        return score


class BiasOutputs(TorchFunctionMode):
    """Records, during a forward pass, the output of every 2-d convolution with a bias and every
    batch norm on a 4-d input, with its bias as the layer adds it (batch norm, with running
    statistics: beta - mean * gamma / sqrt(var + eps)). Intercepting the operations (not
    ``nn.Conv2d``/``nn.BatchNorm2d`` modules) also finds batch norms inside fused modules such as
    timm's ``BatchNormAct2d``, where the output of the normalisation is not a module output. A
    copy flows onward, so that a later in-place activation leaves the recorded tensor (and its
    gradient) that of the layer."""

    _BN = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")

    def __init__(self):
        super().__init__()
        self.found: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        bias = None
        if func is F.conv2d:
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
        elif func is F.batch_norm:
            a = dict(zip(self._BN, args)) | kwargs
            mean, var = a.get("running_mean"), a.get("running_var")
            if mean is not None and var is not None and not a.get("training", False):
                gamma = a.get("weight")
                beta = a.get("bias")
                scale = torch.rsqrt(var + a.get("eps", 1e-5))
                scale = scale * gamma if gamma is not None else scale
                bias = (beta if beta is not None else 0) - mean * scale
        if bias is None or not isinstance(out, torch.Tensor) or out.dim() != 4 or not out.requires_grad:
            return out
        self.found.append((out, bias.detach()))
        return out.clone()


def _rescale(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """``t`` shifted and scaled to [0, 1] over ``dims`` (all-constant: 0)."""
    lo = t.amin(dim=dims, keepdim=True)
    t = t - lo
    hi = t.amax(dim=dims, keepdim=True)
    return torch.where(hi > 0, t / torch.where(hi > 0, hi, torch.ones_like(hi)), torch.zeros_like(t))


@register
class FullGrad(Method):
    """FullGrad (Srinivas & Fleuret 2019): psi(|x * dS/dx|) + sum over layers of
    psi(|b * dS/dz|), z the output of each 2-d convolution with a bias and each batch norm
    (its bias from the running statistics), psi = rescale to [0, 1], sum over channels, upsample
    bilinearly. ``normalize="layer"`` (default, the authors' code) rescales each layer's tensor
    per image as a whole; ``"channel"`` rescales each channel alone (pytorch-grad-cam). Takes no
    layer: it uses every bias the forward pass adds."""

    name = "fullgrad"
    takes = ("normalize",)
    intercepts = True

    def attribute(self, x, target):
        normalize = self.options.get("normalize", "layer")
        if normalize not in ("layer", "channel"):
            raise UserInputError(f"normalize must be 'layer' or 'channel', got {normalize!r}")
        dims = (1, 2, 3) if normalize == "layer" else (2, 3)
        x = x.detach().clone().requires_grad_(True)
        mode = BiasOutputs()
        with torch.enable_grad():
            with mode:
                score = target.score(self.subject, x)
            if not score.requires_grad:  # a model run under no_grad or returning detached tensors
                raise no_gradient_error(self.subject)
            outs = [o for o, _ in mode.found]
            grads = torch.autograd.grad(score.sum(), [x, *outs], allow_unused=True)
        size = tuple(x.shape[2:])
        by_size: dict[tuple[int, int], torch.Tensor] = {}  # upsampling is linear: once per map size
        by_size[size] = _rescale((x * grads[0]).abs().float(), dims).sum(dim=1)
        for (_, bias), g in zip(mode.found, grads[1:]):
            if g is None:  # after a unit target's layer: the pass stopped before it mattered
                continue
            term = _rescale((bias.view(1, -1, 1, 1) * g).abs().float(), dims).sum(dim=1)
            key = tuple(term.shape[1:])
            by_size[key] = by_size[key] + term if key in by_size else term
        total = by_size.pop(size)
        for term in by_size.values():
            up = F.interpolate(term[:, None], size=size, mode="bilinear", align_corners=False)
            total = total + up[:, 0]
        return total.detach(), None
