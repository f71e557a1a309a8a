"""FashionCNN: a small, quantization-friendly CNN for 1x28x28 grayscale images.

Architecture (all static shapes, no data-dependent control flow, so it exports
cleanly to ONNX and converts to OpenVINO):

    [Conv3x3-BN-ReLU] x2 @ 32ch  -> MaxPool2  (28 -> 14)
    [Conv3x3-BN-ReLU] x2 @ 64ch  -> MaxPool2  (14 -> 7)
    [Conv3x3-BN-ReLU] x1 @ 128ch
    GlobalAvgPool -> Dropout -> Linear(128, num_classes)

Expected input: float32 [N, 1, 28, 28], normalised as
    x = (uint8 / 255 - 0.2860) / 0.3530
Output: logits [N, num_classes].
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MEAN", "STD", "FashionCNN"]

MEAN = 0.2860
STD = 0.3530


def _conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class FashionCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32, dropout: float = 0.1) -> None:
        super().__init__()
        c1, c2, c3 = width, width * 2, width * 4
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, c1),
            _conv_bn_relu(c1, c1),
            nn.MaxPool2d(2),
            _conv_bn_relu(c1, c2),
            _conv_bn_relu(c2, c2),
            nn.MaxPool2d(2),
            _conv_bn_relu(c2, c3),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(c3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.pool(x)
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        return self.classifier(x)
