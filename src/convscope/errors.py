"""The errors convscope raises. Each one is a mistake a user can fix, said in one line."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConvscopeError(Exception):
    """Base class of convscope's user-facing errors; the CLI prints these in one line."""

    exit_code = 1


class UserInputError(ConvscopeError, ValueError):
    """A name, path or option the user gave is not valid."""

    exit_code = 2


class NameNotFoundError(UserInputError, KeyError):
    """A name (a model, a method, a class, a stored layer) is not one of those accepted; the
    message suggests the close matches."""

    def __init__(self, name: str, candidates: Iterable[str], what: str = "name"):
        """``candidates``: every name that would have been accepted (close matches come from them)."""
        self.name = name
        self.what = what
        candidates = list(candidates)
        self.close = close_matches(name, candidates)
        super().__init__(f"unknown {what} {name!r}{self._hint(candidates)}")

    def _hint(self, candidates: list[str]) -> str:
        return f"; did you mean {', '.join(self.close)}?" if self.close else ""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class LayerNotFoundError(NameNotFoundError):
    """A layer address matches no layer of the model."""

    def __init__(
        self, name: str, candidates: Iterable[str], what: str = "layer", layers: Iterable[str] | None = None
    ):
        """``candidates``: every name that would have been accepted (close matches come from
        them); ``layers``: the model's own layer names, without aliases (default: candidates),
        listed by their top level when nothing is close."""
        self._layers = None if layers is None else list(layers)
        super().__init__(name, candidates, what)

    def _hint(self, candidates: list[str]) -> str:
        if self.close or not (self.what.endswith("layer") and candidates):
            return super()._hint(candidates)
        # nothing alike (`layer4` on an EfficientNet): say what the model is made of
        own = candidates if self._layers is None else self._layers
        tops = list(dict.fromkeys(c.split(".")[0].split("#")[0] for c in own))
        more = ", ..." if len(tops) > 8 else ""
        return f"; its top-level layers are {', '.join(tops[:8])}{more} (all: convscope layers MODEL)"


class AmbiguousLayerError(UserInputError, KeyError):
    """A module ran several times in one forward pass and the address did not say which call."""

    def __str__(self) -> str:
        return self.args[0]


class WeightsUnavailableError(ConvscopeError):
    """Pretrained weights could not be found or downloaded."""


class ModelLoadError(ConvscopeError):
    """A model, checkpoint or architecture could not be built or loaded."""


class RecordingError(ConvscopeError):
    """A layer's output cannot be recorded as asked (tuple outputs, scripted modules...)."""

    exit_code = 2  # an unsupported combination the user chose (a hook method on TorchScript...)


class DataError(UserInputError):
    """An image source cannot be opened at all (individual bad files are skipped instead)."""


def close_matches(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The candidates closest to ``name``: difflib matches first, then names sharing its prefix."""
    candidates = list(candidates)
    found = difflib.get_close_matches(name, candidates, n=n, cutoff=0.6)
    if len(found) < n:
        stem = name.rsplit(".", 1)[0]
        for c in candidates:
            if len(found) >= n:
                break
            if stem and c.startswith(stem) and c not in found:
                found.append(c)
    return found


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, at most ``limit`` characters: what a one-line
    error quotes of the library error behind it."""
    return (str(e).strip().splitlines() or [""])[0][:limit]
