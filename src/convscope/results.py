"""The result protocol: every result of a convscope computation draws itself, saves itself and
loads back, and shows itself in a notebook.

A result class derives from :class:`Result` and implements :meth:`Result.to_image` (a PIL image,
drawn by ``convscope.render`` from the result's own arrays) and, optionally, :meth:`headline`
(one line: what it is). The mixin then gives

- ``to_png(path, **options)``: ``to_image(**options)`` written atomically;
- ``save(path)`` and ``Cls.load(path)``: one ``.npz`` file. Every array (NumPy or torch) is stored
  as an array, exactly (a top-level array field under its own name, so ``np.load(path)["maps"]``
  reads it); everything else (numbers, strings, lists, dicts, nested dataclasses, ``None``) as
  JSON in the key ``__meta__``. It loads with ``allow_pickle=False``: no code runs on load, and
  only dataclasses of the ``convscope`` package are rebuilt. ``load(save(r))`` equals ``r`` in
  every field (tensors come back as CPU tensors of the same dtype);
- ``_repr_png_()`` and ``_repr_html_()``: Jupyter shows the headline and the picture.

This module writes files through :mod:`convscope.inputs.fileio`, so it sits beside ``inputs/``
(one rank above the kernel), below ``render/`` and the capability folders that use it.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import importlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from convscope.errors import UserInputError
from convscope.inputs.fileio import atomic_path, save_image

META = "__meta__"


class Result:
    """Mixin of the result protocol (see the module docstring). Subclasses are dataclasses that
    implement :meth:`to_image`; those with fields the generic format cannot hold override
    :meth:`save` and :meth:`load` together."""

    def to_image(self, **options) -> Image.Image:
        """The result's picture (each result type draws its own)."""
        raise NotImplementedError(f"{type(self).__name__} has no picture")

    def headline(self) -> str:
        """One line saying what the result is (shown above the picture in a notebook)."""
        return type(self).__name__

    def to_png(self, path: str | os.PathLike, *args, **options) -> Path:
        """Write :meth:`to_image` (with ``args`` and ``options``) to ``path``, atomically."""
        return save_image(self.to_image(*args, **options), path)

    def save(self, path: str | os.PathLike) -> Path:
        """Write every field to one ``.npz`` file at ``path``, atomically (see the module docs)."""
        return save_fields(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike):
        """The result written by :meth:`save` at ``path``."""
        return load_fields(cls, path)

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.to_image().convert("RGB").save(buf, format="PNG")
        return buf.getvalue()

    def _repr_html_(self) -> str:
        data = base64.b64encode(self._repr_png_()).decode("ascii")
        return (
            f"<div><p><b>{html.escape(type(self).__name__)}</b> {html.escape(self.headline())}</p>"
            f'<img src="data:image/png;base64,{data}" alt="{html.escape(self.headline())}"/></div>'
        )


# -- the generic format -----------------------------------------------------------------------
def _encode(value: Any, arrays: dict[str, np.ndarray], key: str) -> Any:
    """``value`` as JSON, its arrays moved into ``arrays`` under names derived from ``key``."""
    while key in arrays:  # {"a": {"b": x}} and {"a.b": y} would both name "a.b"
        key += "+"
    if isinstance(value, torch.Tensor):
        arrays[key] = value.detach().cpu().numpy()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        arrays[key] = value
        return {"__array__": key}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Path):
        return {"__path__": str(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        if not cls.__module__.startswith("convscope."):
            raise TypeError(f"cannot save a {cls.__module__}.{cls.__qualname__}")
        fields = {f.name: _encode(getattr(value, f.name), arrays, f"{key}.{f.name}") for f in _fields(value)}
        return {"__dataclass__": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, arrays, f"{key}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, arrays, f"{key}.{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {"__dict__": {k: _encode(v, arrays, f"{key}.{k}") for k, v in value.items()}}
        items = [
            [_encode(k, arrays, f"{key}.k{i}"), _encode(v, arrays, f"{key}.{i}")]
            for i, (k, v) in enumerate(value.items())
        ]
        return {"__items__": items}
    raise TypeError(f"cannot save a {type(value).__name__}")


def _decode(value: Any, arrays) -> Any:
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    if not isinstance(value, dict):
        return value
    if "__array__" in value:
        return arrays[value["__array__"]]
    if "__tensor__" in value:
        return torch.from_numpy(np.array(arrays[value["__tensor__"]]))
    if "__path__" in value:
        return Path(value["__path__"])
    if "__tuple__" in value:
        return tuple(_decode(v, arrays) for v in value["__tuple__"])
    if "__dict__" in value:
        return {k: _decode(v, arrays) for k, v in value["__dict__"].items()}
    if "__items__" in value:
        return {_decode(k, arrays): _decode(v, arrays) for k, v in value["__items__"]}
    if "__dataclass__" in value:
        cls = _dataclass(value["__dataclass__"])
        return cls(**{k: _decode(v, arrays) for k, v in value["fields"].items()})
    raise ValueError("unknown entry in a saved result")


def _fields(obj) -> list[dataclasses.Field]:
    """The fields saved: those the constructor takes, less those marked
    ``field(metadata={"save": False})`` (live objects such as an image source)."""
    return [f for f in dataclasses.fields(obj) if f.init and f.metadata.get("save", True)]


def _dataclass(name: str) -> type:
    """The convscope dataclass named ``module:qualname`` (nothing else is ever imported)."""
    module, _, qualname = name.partition(":")
    if not module.startswith("convscope."):
        raise ValueError(f"a saved result names {name!r}, not a convscope class")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and dataclasses.is_dataclass(obj)):
        raise ValueError(f"{name!r} is not a result class")
    return obj


def save_fields(obj, path: str | os.PathLike) -> Path:
    """Write the dataclass ``obj`` to ``path`` as one ``.npz`` (its top-level array fields under
    their own names, the rest as JSON in ``__meta__``), atomically."""
    arrays: dict[str, np.ndarray] = {}
    fields = {f.name: _encode(getattr(obj, f.name), arrays, f.name) for f in _fields(obj)}
    cls = type(obj)
    meta = {"class": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays, **{META: np.array(json.dumps(meta))})
    return path


def load_fields(cls: type, path: str | os.PathLike):
    """The ``cls`` written by :func:`save_fields` at ``path``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise UserInputError(f"{path}: not a saved result ({e})") from None
    if META not in arrays:
        raise UserInputError(f"{path}: not a saved convscope result (no {META})")
    try:
        meta = json.loads(str(arrays.pop(META)))
        saved = meta["class"].rpartition(":")[2]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserInputError(f"{path}: not a saved convscope result ({type(e).__name__}: {e})") from None
    if saved != cls.__qualname__:
        raise UserInputError(f"{path} holds a {saved}, not a {cls.__qualname__}")
    try:
        return cls(**{k: _decode(v, arrays) for k, v in meta["fields"].items()})
    except (ValueError, KeyError, TypeError, AttributeError, ImportError) as e:
        # a damaged or hand-made file: one line, not a traceback from deep in the decoder
        raise UserInputError(f"{path}: a damaged saved {saved} ({type(e).__name__}: {e})") from None
