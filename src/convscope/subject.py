"""Subject: a model in eval mode with its exact preprocessing, class names and layer table."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from convscope.layers import LayerInfo, LayerSpec, LayerTable
from convscope.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from convscope.recorder import Recorder, StopForward
from convscope.tokens import TokenLayout

ImageLike = str | os.PathLike | Image.Image | np.ndarray


class Subject:
    """What convscope studies: ``model`` (eval mode), ``preprocess``, ``labels``, ``layers``.

    Build one with :func:`convscope.load` or :meth:`Subject.wrap`. Calling a subject runs the
    model on an already preprocessed batch (N, 3, H, W) and returns its output.
    """

    def __init__(
        self,
        model: nn.Module,
        preprocess: Preprocess,
        labels: Sequence[str] | None = None,
        name: str = "model",
        token_layout: TokenLayout | None = None,
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        fixed_input_size: bool | None = None,
        layouts: dict[str, object] | None = None,
    ):
        """``fixed_input_size``: whether the model runs only at its input size (None: detect it,
        see :attr:`fixed_input_size`). ``layouts``: ``{module glob: layout}`` overriding the
        detected layouts (``"NHWC"``, ``"NCHW"``, ``"tokens"``, ``"tokens+N"``, a
        :class:`~convscope.layout.Layout`, or None to record a layer's output as it is)."""
        self.model = model.eval()
        self.preprocess = preprocess
        self.transform = transform or preprocess
        self.labels = list(labels) if labels is not None else None
        self.name = name
        self.token_layout = (
            token_layout if token_layout is not None else detect_token_layout(model, preprocess.size)
        )
        self.layouts = dict(layouts or {})
        if fixed_input_size is not None:
            self.__dict__["fixed_input_size"] = bool(fixed_input_size)
        # How to load this subject again (set by convscope.load; None for wrapped modules).
        self.spec: dict | None = None

    @classmethod
    def wrap(
        cls,
        model: nn.Module,
        transform: Preprocess | Callable[[Image.Image], torch.Tensor] | None = None,
        labels: Sequence[str] | None = None,
        *,
        input_size: int | tuple[int, int] = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        name: str | None = None,
        layouts: dict[str, object] | None = None,
        fixed_input_size: bool | None = None,
    ) -> Subject:
        """Wrap any ``nn.Module``. ``transform`` is a :class:`Preprocess` or any PIL -> tensor
        callable; with a plain callable, ``input_size``, ``mean`` and ``std`` describe what it
        does (synthesis methods need them to map images in and out of model space)."""
        size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        if isinstance(transform, Preprocess):
            preprocess, custom = transform, None
        else:
            preprocess = Preprocess(size=size, resize=None, mode="squash", mean=tuple(mean), std=tuple(std))
            custom = transform
        return cls(
            model,
            preprocess,
            labels,
            name or type(model).__name__,
            transform=custom,
            fixed_input_size=fixed_input_size,
            layouts=layouts,
        )

    # -- running ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        for b in self.model.buffers():
            return b.device
        return torch.device("cpu")

    def to(self, device: str | torch.device) -> Subject:
        """Move the model to ``device`` (in place) and return the subject."""
        self.model.to(check_device(device))
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor | None:
        """Model output for a preprocessed batch; None if a ``stop=True`` recorder ended it early."""
        try:
            return self.model(x)
        except StopForward:
            return None

    def record(self, layers: LayerSpec, **options) -> Recorder:
        """A :class:`Recorder` on this subject (see its options)."""
        return Recorder(self, layers, **options)

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) in pixels of the model input."""
        return self.preprocess.size

    @cached_property
    def fixed_input_size(self) -> bool:
        """Whether the model runs only at :attr:`input_size`: vision transformers with fixed
        position embeddings, windowed attention (Swin, MaxViT), a Linear layer after a flatten.
        Detected once by one forward pass of a zero image 1/8 larger per side: if it raises,
        the size is fixed. Synthesis then keeps every augmented image at the input size.
        Pass ``fixed_input_size=`` to :class:`Subject` to say it instead."""
        h, w = self.input_size
        dh, dw = max(8, h // 8), max(8, w // 8)
        param = next((p for p in self.model.parameters() if p.is_floating_point()), None)
        dtype = param.dtype if param is not None else torch.float32
        x = torch.zeros(1, 3, h + dh, w + dw, device=self.device, dtype=dtype)
        # The probe must not run the hooks of a recording in progress (they would stop it early
        # or overwrite what was recorded): they are set aside for this one pass.
        hooked = [
            (m, dict(m._forward_hooks), dict(m._forward_pre_hooks))
            for m in self.model.modules()
            if m._forward_hooks or m._forward_pre_hooks
        ]
        for m, _, _ in hooked:
            m._forward_hooks.clear()
            m._forward_pre_hooks.clear()
        try:
            with torch.no_grad():
                self.model(x)
        except Exception:  # any failure at another size: the model takes its own size only
            return True
        finally:
            for m, post, pre in hooked:
                m._forward_hooks.update(post)
                m._forward_pre_hooks.update(pre)
        return False

    # -- layers -------------------------------------------------------------------------------
    @cached_property
    def layers(self) -> LayerTable:
        """Every addressable layer, from one probe forward pass (computed once, on first use):
        shapes, receptive fields, layouts (see :mod:`convscope.layout`)."""
        from convscope.trace import trace_layers

        return trace_layers(self.model, self.input_size, self.device, self.token_layout, self.layouts)

    @property
    def num_outputs(self) -> int:
        """Size of the model's output (the number of classes for a classifier)."""
        from convscope.errors import ConvscopeError

        # Where the layer table cannot say (TorchScript takes no hooks; a module with no child
        # modules has no layers; no layer has a shape): the output of one forward pass.
        try:
            infos = [i for i in self.layers if i.shape is not None]
        except ConvscopeError:
            return self._probed_outputs
        if not infos:
            return self._probed_outputs
        last = max(infos, key=lambda i: i.order)
        return last.units or self._probed_outputs

    @cached_property
    def _probed_outputs(self) -> int:
        from convscope.recorder import select_tensor

        h, w = self.input_size
        with torch.no_grad():
            out = self.model(torch.zeros(1, 3, h, w, device=self.device))
        if not isinstance(out, torch.Tensor):
            out = select_tensor(out, "logits" if isinstance(out, dict) else None, "output")
        return int(out.shape[-1])

    def layer(self, name: str) -> LayerInfo:
        """The layer at address or alias ``name``; unknown names list the closest ones."""
        return self.layers.get(name)

    # -- images -------------------------------------------------------------------------------
    def load_images(self, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        """Preprocess paths, PIL images or uint8 arrays (H, W, 3) into a batch (N, 3, H, W)."""
        from convscope.imageops import read_image

        if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
            images = [images]
        tensors = []
        for img in images:
            if isinstance(img, (str, os.PathLike)):
                img = read_image(Path(img))
            elif isinstance(img, np.ndarray):
                img = Image.fromarray(img)
            tensors.append(self.transform(img.convert("RGB")))
        return torch.stack(tensors).to(self.device)

    def load_pixels(self, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        """Like :meth:`load_images`, but in [0, 1] pixel space (before normalisation)."""
        return self.preprocess.denormalize(self.load_images(images)).clamp(0, 1)

    def predict(self, images: ImageLike | Sequence[ImageLike] | torch.Tensor, k: int = 5) -> Predictions:
        """Top-``k`` classes with softmax probabilities for each image."""
        x = images if isinstance(images, torch.Tensor) else self.load_images(images)
        with torch.no_grad():
            logits = self.model(x.to(self.device))
        if not isinstance(logits, torch.Tensor):
            from convscope.recorder import select_tensor

            logits = select_tensor(logits, "logits" if isinstance(logits, dict) else None, "output")
        probs = logits.float().softmax(-1)
        top = probs.topk(min(k, probs.shape[-1]), dim=-1)
        return Predictions(top.indices.cpu().numpy(), top.values.cpu().numpy(), self.labels)

    def label(self, index: int) -> str:
        """Class name of output ``index`` (the index itself as text when names are unknown)."""
        if self.labels is not None and 0 <= index < len(self.labels):
            return self.labels[index]
        return str(index)

    def class_index(self, name: str | int) -> int:
        """The output index of a class: an index (``285``, ``"285"``) or a class name
        (``"Egyptian cat"``; exact, else ignoring case, with ``_`` for spaces). Out-of-range
        indices and unknown names are a one-line error, with the closest names."""
        from convscope.errors import UserInputError

        text = str(name).strip()
        try:
            index = name.__index__() if hasattr(name, "__index__") else int(text)
        except (ValueError, TypeError):
            index = None
        if index is not None:
            n = len(self.labels) if self.labels else self.num_outputs
            if not 0 <= index < n:
                raise UserInputError(f"class {index} is out of range: the model has {n} classes (0..{n - 1})")
            return index
        if not self.labels:
            raise UserInputError(f"class {text!r}: {self.name} has no class names; give a class index")
        key = _fold_class_name(text)
        hits = self._class_indices[0].get(text) or self._class_indices[1].get(key)
        if not hits:
            raise UserInputError(f"unknown class {text!r}" + _class_hint(key, self.labels))
        if len(hits) > 1:  # ImageNet has two "crane"s (134 the bird, 517 the machine)
            raise UserInputError(
                f"class {text!r} names {len(hits)} classes ({', '.join(map(str, hits))}): give "
                f"its index, e.g. class:{hits[0]}"
            )
        return hits[0]

    @cached_property
    def _class_indices(self) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
        # class names exactly, and folded as a query is (case, "_" for spaces, runs of spaces)
        exact: dict[str, list[int]] = {}
        folded: dict[str, list[int]] = {}
        for i, c in enumerate(self.labels or ()):
            exact.setdefault(c, []).append(i)
            folded.setdefault(_fold_class_name(c), []).append(i)
        return exact, folded

    def unit_name(self, layer: str, unit: int) -> str | None:
        """The class name of ``unit`` when ``layer`` gives the model's class scores (its unit
        count is the number of class names and nothing else runs after it), else None: the
        units of ``classifier`` are ``"tench"``, ``"goldfish"``, ..., those of other layers
        have no names."""
        names = self._class_layers
        if layer not in names:
            from convscope.errors import ConvscopeError

            try:
                layer = self.layer(layer).name  # an alias (``fc8``)
            except (ConvscopeError, KeyError):
                return None
        if layer in names and 0 <= unit < len(self.labels):
            return self.labels[unit]
        return None

    @cached_property
    def _class_layers(self) -> frozenset[str]:
        """Layers whose outputs are the class scores: one score per class name, shape (N,) or
        (N, 1, 1), finished after every layer of another shape (the classifier and the
        containers that return its output)."""
        from convscope.errors import ConvscopeError

        n = len(self.labels) if self.labels else 0
        if not n:
            return frozenset()
        try:
            infos = [i for i in self.layers if i.shape is not None]
        except ConvscopeError:  # a TorchScript model: no layer table
            return frozenset()

        def scores(i: LayerInfo) -> bool:
            return i.units == n and (len(i.shape) == 1 or tuple(i.shape) == (n, 1, 1))

        last_other = max((i.order for i in infos if not scores(i)), default=-1)
        return frozenset(i.name for i in infos if scores(i) and i.order > last_other)

    def __repr__(self) -> str:
        h, w = self.input_size
        n = len(self.labels) if self.labels else "?"
        return f"Subject({self.name!r}, input {h}x{w}, {n} classes, device={self.device})"


@dataclass(frozen=True)
class Predictions:
    """Top-k predictions: ``indices`` and ``probs`` are (N, k); ``labels`` names the classes."""

    indices: np.ndarray
    probs: np.ndarray
    labels: list[str] | None = None

    def names(self, i: int) -> list[str]:
        """Class names of image ``i``'s top-k."""
        return [self.labels[j] if self.labels else str(j) for j in self.indices[i]]

    def to_records(self, image_names: Sequence[str] | None = None) -> list[dict]:
        """JSON-ready list: one dict per image with its top-k (index, label, prob)."""
        out = []
        for i in range(len(self.indices)):
            top = [
                {"index": int(j), "label": name, "prob": float(p)}
                for j, name, p in zip(self.indices[i], self.names(i), self.probs[i])
            ]
            out.append({"image": image_names[i] if image_names else i, "top": top})
        return out


def _fold_class_name(name: str) -> str:
    """A class name as lookups compare it: case-folded, ``_`` as a space, runs of spaces as one."""
    return " ".join(name.replace("_", " ").split()).casefold()


def _class_hint(key: str, labels: Sequence[str]) -> str:
    """ "; did you mean ...?" with the class names closest to ``key`` (case-folded): names that
    contain it as whole words first (``cat``: ``tiger cat``), then difflib's close matches."""
    import difflib

    folded = [_fold_class_name(c) for c in labels]
    found = [c for c in folded if f" {key} " in f" {c} "][:5]
    for c in difflib.get_close_matches(key, folded, n=5, cutoff=0.6):
        if len(found) < 5 and c not in found:
            found.append(c)
    if not found:
        return ""
    first = {c: labels[i] for i, c in reversed(list(enumerate(folded)))}
    return f"; did you mean {', '.join(repr(first[c]) for c in found)}?"


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device, or a one-line error if this machine does not have it."""
    from convscope.errors import UserInputError

    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UserInputError(f"unknown device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"device {device!r}: CUDA is not available on this machine; use cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserInputError(f"device {device!r}: this machine has {torch.cuda.device_count()} GPUs")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserInputError(f"device {device!r}: MPS is not available on this machine; use cpu")
    return dev


def detect_token_layout(model: nn.Module, input_size: tuple[int, int]) -> TokenLayout | None:
    """Token layout of timm and torchvision vision transformers (None for other models)."""
    patch = getattr(model, "patch_embed", None)
    if patch is not None and hasattr(model, "num_prefix_tokens"):
        grid = getattr(patch, "grid_size", None)
        if grid is None and hasattr(patch, "patch_size"):
            ps = patch.patch_size if isinstance(patch.patch_size, tuple) else (patch.patch_size,) * 2
            grid = (input_size[0] // ps[0], input_size[1] // ps[1])
        if grid is not None:
            return TokenLayout(int(model.num_prefix_tokens), int(grid[0]), int(grid[1]))
    if hasattr(model, "class_token") and hasattr(model, "patch_size"):  # torchvision ViT
        ps = model.patch_size
        return TokenLayout(1, input_size[0] // ps, input_size[1] // ps)
    return None
