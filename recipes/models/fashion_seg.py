"""FashionSeg: a tiny encoder-decoder segmenter for 1x56x56 scenes of Fashion-MNIST items.

Two outputs (a dict, so compress names them `masks` and `presence`):

    masks     logits [N, 11, 56, 56]: per pixel, 0 = background, 1 + class for the 10 classes
    presence  logits [N, 10]: which classes appear in the scene (multi-label, sigmoid)

Architecture (static shapes, no data-dependent control flow; exports to ONNX opset 17 with
`torch.onnx.export(dynamo=False)` and converts with `openvino.convert_model`):

    56x56  [Conv3x3-BN-ReLU] x2 @ w     ---------------------------- skip1
    28x28  MaxPool2, [Conv3x3-BN-ReLU] x2 @ 2w  --------------- skip2
    14x14  MaxPool2, [Conv3x3-BN-ReLU] x3 @ 4w  -> global avg + max pool -> Linear -> presence
    28x28  ConvTranspose2x2/2 @ 2w, concat skip2, [Conv3x3-BN-ReLU] @ 2w
    56x56  ConvTranspose2x2/2 @ w,  concat skip1, [Conv3x3-BN-ReLU] @ w, Conv1x1 -> masks

Upsampling is a learned ConvTranspose2d rather than nn.Upsample: ONNX Resize with a dynamic
batch followed by a Concat defeats ONNX Runtime's symbolic shape inference, which its
quantization pre-processing needs (nn.Upsample + skip concat fails there).

Input: float32 [N, 1, 56, 56] normalised as x = (uint8 / 255 - 0.2860) / 0.3530.
Weights trained by scripts/make_fashion_seg.py: calibration_data/fashion_seg.pt.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MEAN", "NUM_CLASSES", "STD", "FashionSeg"]

MEAN = 0.2860
STD = 0.3530
NUM_CLASSES = 10  # Fashion-MNIST classes; the masks add background as class 0


def _conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class FashionSeg(nn.Module):
    def __init__(self, *, num_classes: int = NUM_CLASSES, in_channels: int = 1, width: int = 12) -> None:
        super().__init__()
        c1, c2, c3 = width, width * 2, width * 4
        self.enc1 = nn.Sequential(_conv_bn_relu(in_channels, c1), _conv_bn_relu(c1, c1))
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), _conv_bn_relu(c1, c2), _conv_bn_relu(c2, c2))
        self.enc3 = nn.Sequential(nn.MaxPool2d(2), _conv_bn_relu(c2, c3), _conv_bn_relu(c3, c3),
                                  _conv_bn_relu(c3, c3))
        self.up2 = nn.ConvTranspose2d(c3, c2, kernel_size=2, stride=2)
        self.dec2 = _conv_bn_relu(c2 + c2, c2)
        self.up1 = nn.ConvTranspose2d(c2, c1, kernel_size=2, stride=2)
        self.dec1 = _conv_bn_relu(c1 + c1, c1)
        self.mask_head = nn.Conv2d(c1, num_classes + 1, kernel_size=1)
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.max = nn.AdaptiveMaxPool2d(1)
        self.presence_head = nn.Linear(2 * c3, num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        s1 = self.enc1(x)                      # 56x56
        s2 = self.enc2(s1)                     # 28x28
        z = self.enc3(s2)                      # 14x14
        pooled = torch.cat([self.avg(z), self.max(z)], dim=1).flatten(1)
        d2 = self.dec2(torch.cat([self.up2(z), s2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), s1], dim=1))
        return {"masks": self.mask_head(d1), "presence": self.presence_head(pooled)}
