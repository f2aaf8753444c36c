"""Fine-tuning: a new head for N classes, the first k blocks frozen (Yosinski et al. 2014's
transferability experiment is the sweep over k), and the confusion matrix of the result."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from convscope.errors import UserInputError


def head_name(model: nn.Module) -> str:
    """Address of the classifier: the last ``nn.Linear`` in registration order."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = name
    if last is None:
        raise UserInputError("the model has no nn.Linear classifier to replace")
    return last


def replace_head(model: nn.Module, num_classes: int) -> str:
    """Put a freshly initialised ``Linear(in, num_classes)`` where the classifier was."""
    name = head_name(model)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    setattr(parent, attr, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    return name


def blocks(model: nn.Module) -> list[str]:
    """The model's trainable blocks in forward order, for freezing: its top-level children with
    parameters (the classifier excluded), a sequential container of two or more such children
    split into those children (timm's ``blocks``, a VGG's ``features``)."""
    head = head_name(model).split(".")[0]
    out = []
    for name, child in model.named_children():
        if name == head or not any(True for _ in child.parameters()):
            continue
        parts = [(f"{name}.{n}", c) for n, c in child.named_children() if any(True for _ in c.parameters())]
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(parts) >= 2:
            out += [n for n, _ in parts]
        else:
            out.append(name)
    return out


def freeze(model: nn.Module, k: int) -> list[str]:
    """Freeze the parameters of the first ``k`` blocks (their batch-norm statistics stay fixed
    too: :func:`~convscope.train.loop.train` keeps frozen batch norms in eval mode). Returns the
    frozen blocks."""
    names = blocks(model)
    if not 0 <= k <= len(names):
        raise UserInputError(f"--freeze must lie in 0..{len(names)} (blocks: {', '.join(names)})")
    for n in names[:k]:
        for p in model.get_submodule(n).parameters():
            p.requires_grad_(False)
    return names[:k]


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, n: int) -> np.ndarray:
    """(n, n) counts: row = true class, column = predicted class."""
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (np.asarray(labels), np.asarray(predictions)), 1)
    return m


def confusion_csv(matrix: np.ndarray, classes: Sequence[str]) -> str:
    rows = ["true\\predicted," + ",".join(classes)]
    rows += [c + "," + ",".join(str(v) for v in r) for c, r in zip(classes, matrix)]
    return "\n".join(rows) + "\n"
