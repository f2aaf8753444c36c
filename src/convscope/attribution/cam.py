"""Class activation maps: Grad-CAM, Grad-CAM++, Score-CAM and Guided Grad-CAM.

All take ``layer=`` (any layer with a spatial map; default: the last stage of the model) and
return the map upsampled bilinearly to the input size, as in the papers' code (Captum's
``LayerGradCam`` + ``interpolate`` upsamples with nearest-neighbour by default). Maps are not
normalised: ``AttributionMap.normalized`` scales them for display.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from convscope.attribution.base import Method, input_gradient, register
from convscope.attribution.targets import Target, logits
from convscope.errors import UserInputError
from convscope.recorder import Recorder


def default_cam_layer(subject) -> str:
    """The last resolution stage with a map larger than 1 x 1."""
    stages = subject.layers.stages()
    if not stages:
        raise UserInputError(
            "the model has no spatial layer for a CAM; name one with --layers (layer= in Python)"
        )
    return stages[-1].name


class _CamMethod(Method):
    takes = ("layer",)

    def layer(self, target: Target | None = None) -> str:
        """The CAM layer: ``layer=`` or, by default, the last stage (for a unit target, the last
        stage that runs before the unit's layer, else that layer itself)."""
        name = self.options.get("layer")
        tinfo = self.subject.layer(target.layer) if target is not None and target.layer else None
        if name is None and tinfo is not None:
            before = [i for i in self.subject.layers.stages() if i.order < tinfo.order]
            name = before[-1].name if before else tinfo.name
        info = self.subject.layer(name or default_cam_layer(self.subject))
        if not info.is_map:
            raise UserInputError(f"{info.name} has no spatial map ({info.shape}); CAMs need one")
        if tinfo is not None and info.order > tinfo.order:
            raise UserInputError(
                f"CAM layer {info.name} runs after the target's layer {tinfo.name}; choose an earlier layer"
            )
        return info.name

    def activations_and_grads(self, x: torch.Tensor, target: Target):
        layer = self.layer(target)
        names = [layer] + ([target.layer] if target.layer and target.layer != layer else [])
        x = x.detach().clone().requires_grad_(True)
        with (
            torch.enable_grad(),
            Recorder(self.subject, names, detach=False, stop=target.layer is not None) as rec,
        ):
            out = self.subject(x)
            if target.layer is not None:
                score = target.from_activation(rec[target.layer])
            else:
                score = target.from_logits(out)
            acts = rec[layer]
            (grads,) = torch.autograd.grad(score.sum(), acts)
        return acts.detach(), grads.detach()

    def upsample(self, cam: torch.Tensor, size) -> torch.Tensor:
        return F.interpolate(cam[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


@register
class GradCAM(_CamMethod):
    """Grad-CAM (Selvaraju et al. 2017): ReLU(sum_k w_k A_k), w_k = spatial mean of dS/dA_k."""

    name = "gradcam"

    def attribute(self, x, target):
        acts, grads = self.activations_and_grads(x, target)
        w = grads.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((w * acts).sum(dim=1))
        return self.upsample(cam, x.shape[2:]), None


@register
class GradCAMPlusPlus(_CamMethod):
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
class ScoreCAM(_CamMethod):
    """Score-CAM (Wang et al. 2020): each channel, upsampled and scaled to [0, 1], masks the
    input; its weight is the target score of the masked input (the softmax probability for
    class targets, as the authors' code). ``batch=32`` masked inputs per forward pass."""

    name = "scorecam"
    takes = ("layer", "batch")

    def attribute(self, x, target):
        layer = self.layer(target)
        batch = int(self.options.get("batch", 32))
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
class GuidedGradCAM(_CamMethod):
    """Guided Grad-CAM (Selvaraju et al. 2017): guided backpropagation times the upsampled
    Grad-CAM, per channel; the map is the channel-wise max of |.|."""

    name = "guided_gradcam"

    def attribute(self, x, target):
        cam, _ = GradCAM(self.subject, **self.options).attribute(x, target)
        guided = input_gradient(self.subject, x, target, rule="guided")
        raw = guided * cam[:, None]
        return raw.abs().amax(dim=1), raw
