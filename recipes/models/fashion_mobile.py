"""Small MobileNet-style classifiers for 1x28x28 grayscale images (the accuracy-recovery example).

Two families whose INT8 post-training quantization is known to be fragile:

- `FashionMobileV2`: MobileNetV2 inverted residuals (1x1 expand, 3x3 depthwise, 1x1 linear
  projection), ReLU6. Depthwise convolutions carry one filter per channel, so per-channel ranges
  differ a lot once BatchNorm is folded into them.
- `FashionMobileV3`: MobileNetV3 blocks with HardSwish, squeeze-and-excitation (HardSigmoid gate)
  and 5x5 depthwise kernels; HardSwish activations are unbounded above and below -3..0, giving wide,
  skewed ranges for a per-tensor INT8 scale.

Both are plain torch modules with static shapes (export to ONNX and conversion to OpenVINO keep
the module names as node scopes). Expected input: float32 [N, 1, 28, 28],
x = (uint8 / 255 - 0.2860) / 0.3530. Output: logits [N, num_classes].
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["FashionMobileV2", "FashionMobileV3"]


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: type | None = nn.ReLU6) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: expand (1x1) -> depthwise (k x k) -> optional SE -> project (1x1, linear)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, k: int = 3, act: type = nn.ReLU6,
                 se: bool = False):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.expand = _conv_bn(cin, hidden, 1, act=act)
        self.depthwise = _conv_bn(hidden, hidden, k, stride, groups=hidden, act=act)
        self.se = SqueezeExcite(hidden) if se else nn.Identity()
        self.project = _conv_bn(hidden, cout, 1, act=None)

    def forward(self, x):
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.use_res else y


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduce: int = 4):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduce, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(channels // reduce, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class _Mobile(nn.Module):
    # (out channels, stride, expand, kernel, squeeze-excite)
    BLOCKS: tuple[tuple[int, int, int, int, bool], ...] = ()
    ACT: type = nn.ReLU6

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16, head: int = 256,
                 hidden: int = 0):
        super().__init__()
        act = self.ACT
        self.stem = _conv_bn(in_channels, width, 3, stride=2, act=act)
        blocks, cin = [], width
        for cout, stride, expand, k, se in self.BLOCKS:
            cout = cout * width // 16
            blocks.append(InvertedResidual(cin, cout, stride, expand, k, act, se))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = _conv_bn(cin, head, 1, act=act)
        self.pool = nn.AdaptiveAvgPool2d(1)
        if hidden:   # torchvision's MobileNetV3 classifier: Linear -> activation -> Dropout -> Linear
            self.classifier = nn.Sequential(nn.Linear(head, hidden), act(), nn.Dropout(0.2),
                                            nn.Linear(hidden, num_classes))
        else:
            self.classifier = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


class FashionMobileV2(_Mobile):
    """MobileNetV2-style: stem stride 2, 14 -> 7, inverted residuals with ReLU6 (about 105k parameters)."""
    BLOCKS = ((16, 1, 1, 3, False), (24, 1, 4, 3, False), (24, 1, 4, 3, False), (32, 2, 4, 3, False),
              (32, 1, 4, 3, False), (48, 1, 4, 3, False), (48, 1, 4, 3, False))
    ACT = nn.ReLU6


class FashionMobileV3(_Mobile):
    """MobileNetV3-style: HardSwish, squeeze-and-excitation, 5x5 depthwise kernels."""
    BLOCKS = ((16, 1, 1, 3, True), (24, 1, 4, 3, False), (24, 1, 3, 3, False), (40, 2, 3, 5, True),
              (40, 1, 3, 5, True), (48, 1, 3, 5, True), (48, 1, 3, 5, True))
    ACT = nn.Hardswish


class FashionTorchvision(nn.Module):
    """torchvision's own MobileNetV2 / MobileNetV3-Small (unchanged blocks, classifier to `num_classes`) for
    1x28x28 images: the image is resized to `size` x `size` inside the model (bilinear) and the stem reads one
    channel. The real architectures at a size their stride-32 feature maps can use, trainable on two cores."""

    def __init__(self, arch: str = "mobilenet_v3_small", num_classes: int = 10, size: int = 64,
                 width_mult: float = 1.0):
        super().__init__()
        import torchvision

        self.size = size
        self.net = getattr(torchvision.models, arch)(num_classes=num_classes, width_mult=width_mult)
        stem = self.net.features[0][0]
        self.net.features[0][0] = nn.Conv2d(1, stem.out_channels, stem.kernel_size, stem.stride, stem.padding,
                                            bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.net(x)
