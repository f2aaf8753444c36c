"""Tiny models for tests and examples: every hooking hazard a real model has, in a few KB."""

from __future__ import annotations

import torch
from torch import nn

from convscope.preprocess import Preprocess
from convscope.subject import Subject


class TinyBlock(nn.Module):
    """Residual block that reuses one in-place ReLU twice, like torchvision's BasicBlock."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.conv1(x))
        out = self.conv2(out)
        out += x
        return self.relu(out)


class TinyCNN(nn.Module):
    """conv(stride 2) -> ReLU(inplace) -> maxpool -> residual block -> conv -> global pool -> fc."""

    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 5, stride=2, padding=2)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.block = TinyBlock(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))
        x = self.block(x)
        x = torch.relu(self.conv2(x))
        return self.fc(self.gap(x).flatten(1))


def tiny_subject(num_classes: int = 10, size: int = 32, seed: int = 0) -> Subject:
    """A seeded :class:`TinyCNN` wrapped as a Subject with ``size x size`` inputs."""
    torch.manual_seed(seed)
    model = TinyCNN(num_classes)
    pre = Preprocess(size=(size, size), resize=None, mode="squash")
    return Subject(model, pre, [f"class{i}" for i in range(num_classes)], name="tiny")
