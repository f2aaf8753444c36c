"""Small CNNs for training from scratch: a configurable plain ConvNet (batch norm on/off,
``same``/``valid`` padding) and the ResNet-9 of Page's fast CIFAR-10 training (with a width
factor), the reference recipe."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from convscope.errors import UserInputError


def _conv(cin: int, cout: int, batchnorm: bool, padding: str) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, padding=1 if padding == "same" else 0, bias=not batchnorm)
    ]
    if batchnorm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    return layers


class SmallCNN(nn.Module):
    """Stages of two 3 x 3 convolutions (+ batch norm) + ReLU, each followed by 2 x 2 max
    pooling; global average pooling and a linear classifier. ``padding="valid"`` shrinks maps
    by 2 px per convolution (pooling is skipped once a map is below 2 px)."""

    def __init__(
        self,
        num_classes: int = 10,
        widths: Sequence[int] = (32, 64, 128),
        batchnorm: bool = True,
        padding: str = "same",
        input_size: int = 32,
    ):
        super().__init__()
        if padding not in ("same", "valid"):
            raise UserInputError("padding must be 'same' or 'valid'")
        stages, cin, size = [], 3, input_size
        for w in widths:
            layers = _conv(cin, w, batchnorm, padding) + _conv(w, w, batchnorm, padding)
            size -= 0 if padding == "same" else 4
            if size < 1:
                raise UserInputError(
                    f"input of {input_size} px is too small for {len(widths)} valid-padded stages"
                )
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            stages.append(nn.Sequential(*layers))
            cin = w
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


class _Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(*_conv(c, c, True, "same"), *_conv(c, c, True, "same"))

    def forward(self, x):
        return x + self.body(x)


class ResNet9(nn.Module):
    """prep(64w) -> layer1(128w, pool, residual) -> layer2(256w, pool) -> layer3(512w, pool,
    residual) -> global max pool -> linear (scaled by 1/8), as in Page (2018)."""

    def __init__(self, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        c = [int(round(v * width)) for v in (64, 128, 256, 512)]
        self.prep = nn.Sequential(*_conv(3, c[0], True, "same"))
        self.layer1 = nn.Sequential(*_conv(c[0], c[1], True, "same"), nn.MaxPool2d(2), _Residual(c[1]))
        self.layer2 = nn.Sequential(*_conv(c[1], c[2], True, "same"), nn.MaxPool2d(2))
        self.layer3 = nn.Sequential(*_conv(c[2], c[3], True, "same"), nn.MaxPool2d(2), _Residual(c[3]))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(c[3], num_classes, bias=False)
        self.scale = 0.125

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.fc(self.pool(x).flatten(1)) * self.scale


ARCHITECTURES = ("small", "resnet9")


def build(arch: str = "small", num_classes: int = 10, **options) -> nn.Module:
    """``small`` (:class:`SmallCNN`: widths, batchnorm, padding) or ``resnet9`` (width)."""
    if arch == "small":
        return SmallCNN(num_classes, **options)
    if arch == "resnet9":
        return ResNet9(num_classes, **options)
    raise UserInputError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
