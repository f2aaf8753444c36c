"""The Zeiler & Fergus (2014) deconvnet: project one unit's feature map back to pixel space.

Starting from the chosen layer with every other channel set to zero, each layer of the forward
chain is undone in reverse: max-pooling by max-unpooling with the forward pass's *switches*
(argmax positions; where overlapping windows share a switch their values add), ReLU by ReLU,
convolution by the transposed convolution with the same filters (biases are not used). The
result equals the input gradient of <s, f(x)> under the deconvnet rectifier rule, with s the
kept part of the unit's map (tested). It is defined for plain chains of convolutions,
rectifiers and max-pooling (AlexNet, VGG, ZFNet); other architectures get a clear error.

Strided transposed convolutions overlap unevenly and paint a checkerboard on the result (seed
003, "Checkerboard effect"). ``even_overlap=True`` divides each transposed convolution's output
by its overlap count (the transposed convolution of ones), which removes that pattern.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convscope.attribution.base import Method, register
from convscope.attribution.targets import Target
from convscope.errors import UserInputError
from convscope.layers import parse_address

_LINEAR_IDENTITY = (nn.Dropout, nn.Identity, nn.LocalResponseNorm)


def _chain(subject, layer: str) -> list[tuple[str, nn.Module]]:
    """The modules from the input to ``layer`` if they form a plain sequential chain."""
    module, call = parse_address(layer)
    parent_name, _, index = module.rpartition(".")
    modules = dict(subject.model.named_modules())
    parent = modules.get(parent_name) if parent_name else subject.model
    if not isinstance(parent, nn.Sequential) or not index.isdigit() or call is not None:
        raise UserInputError(
            f"the Zeiler-Fergus projection needs a layer inside a sequential stack of "
            f"convolutions (like AlexNet's features.N); {layer!r} in {subject.name} is not"
        )
    chain = [(f"{parent_name}.{i}" if parent_name else str(i), parent[i]) for i in range(int(index) + 1)]
    for name, m in chain:
        if not isinstance(m, (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.BatchNorm2d) + _LINEAR_IDENTITY):
            raise UserInputError(
                f"the Zeiler-Fergus projection is defined for chains of Conv2d, ReLU, MaxPool2d "
                f"(BatchNorm, dropout and LRN are passed through); {name} is a {type(m).__name__}"
            )
    # The chain must start at the model input: its first module sees the image.
    first = chain[0][1]
    if not (isinstance(first, nn.Conv2d) and first.in_channels == 3):
        raise UserInputError(
            f"{chain[0][0]} does not read the input image; the projection "
            "needs the chain that starts at the pixels"
        )
    return chain


@register
class ZeilerFergus(Method):
    """Deconvnet projection of a unit target (``"features.10:17"``; with ``@y,x`` only that
    position is kept, otherwise the whole channel map). Options: ``even_overlap=False``,
    ``keep="map"`` (the channel map) or ``"max"`` (only its strongest activation, as the paper's
    figures). Returns the reconstruction (N, 3, H, W) as ``raw``; the map is its channel max |.|."""

    name = "zeiler_fergus"
    takes = ("even_overlap", "keep")
    signed = False

    def attribute(self, x, target: Target):
        if target.unit is None:
            raise UserInputError(
                "the Zeiler-Fergus projection explains a unit: use a target like 'features.10:17'"
            )
        chain = _chain(self.subject, target.unit.layer)
        even = bool(self.options.get("even_overlap", False))
        keep = self.options.get("keep", "map")
        saved = []
        h = x.detach()
        with torch.no_grad():
            for _, m in chain:  # forward, keeping the switches and sizes
                if isinstance(m, nn.MaxPool2d):
                    out, idx = F.max_pool2d(
                        h, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True
                    )
                    saved.append((h.shape, idx))
                    h = out
                else:
                    saved.append((h.shape, None))
                    h = m(h)
            u = target.unit
            signal = torch.zeros_like(h)
            if u.y is not None:
                signal[:, u.channel, u.y, u.x] = h[:, u.channel, u.y, u.x]
            elif keep == "max":
                flat = h[:, u.channel].flatten(1)
                best = flat.argmax(dim=1)
                signal[:, u.channel].view(h.shape[0], -1).scatter_(
                    1, best[:, None], flat.gather(1, best[:, None])
                )
            else:
                signal[:, u.channel] = h[:, u.channel]
            for (_, m), (shape, idx) in zip(reversed(chain), reversed(saved)):
                signal = _undo(m, signal, shape, idx, even)
        return signal.abs().amax(dim=1), signal


def _undo(m: nn.Module, s: torch.Tensor, in_shape, idx, even: bool) -> torch.Tensor:
    if isinstance(m, nn.ReLU):
        return F.relu(s)
    if isinstance(m, nn.MaxPool2d):
        # Unpool with the switches. Overlapping windows (AlexNet's 3x3, stride 2) can share a
        # switch; their contributions add up (max_unpool2d would keep only one of them).
        out = torch.zeros(s.shape[0], s.shape[1], in_shape[2] * in_shape[3], dtype=s.dtype, device=s.device)
        out.scatter_add_(2, idx.flatten(2), s.flatten(2))
        return out.view(s.shape[0], s.shape[1], in_shape[2], in_shape[3])
    if isinstance(m, nn.BatchNorm2d):
        scale = (
            m.weight / torch.sqrt(m.running_var + m.eps)
            if m.affine
            else 1 / torch.sqrt(m.running_var + m.eps)
        )
        return s * scale.view(1, -1, 1, 1)
    if isinstance(m, nn.Conv2d):
        out = _tconv(s, m.weight, m, in_shape)
        if even and max(m.stride) > 1:
            ones = torch.ones(1, 1, *s.shape[2:], device=s.device, dtype=s.dtype)
            kernel = torch.ones(1, 1, *m.weight.shape[2:], device=s.device, dtype=s.dtype)
            count = _tconv(ones, kernel, m, (1, 1, *in_shape[2:]), groups=1)
            out = out / count.clamp_min(1) * count.max()
        return out
    return s  # dropout, identity, local response normalisation


def _tconv(s, weight, m: nn.Conv2d, in_shape, groups=None):
    groups = m.groups if groups is None else groups
    h_full = (s.shape[2] - 1) * m.stride[0] - 2 * m.padding[0] + m.dilation[0] * (weight.shape[2] - 1) + 1
    w_full = (s.shape[3] - 1) * m.stride[1] - 2 * m.padding[1] + m.dilation[1] * (weight.shape[3] - 1) + 1
    op = (in_shape[2] - h_full, in_shape[3] - w_full)
    return F.conv_transpose2d(s, weight, None, m.stride, m.padding, op, groups, m.dilation)
