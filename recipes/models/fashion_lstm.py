"""FashionLSTM: a recurrent classifier for 1x28x28 grayscale images, read as a 28-step sequence.

The "models beyond CNNs" example: each image row (28 pixels) is one time step, so the model
sees 28 steps of 28 features:

    [N, 1, 28, 28] -> reshape [N, 28, 28] (batch, rows = steps, columns = features)
    LSTM(28 -> hidden, num_layers, batch_first) -> last layer's final hidden state h_n[-1]
    Dropout -> Linear(hidden, num_classes)

It takes the same input as FashionCNN (recipes/models/fashion_cnn.py), so the shipped
Fashion-MNIST .npz files and the recipe transform work unchanged. With torch.onnx.export
(dynamo=False) the recurrence becomes one ONNX ``LSTM`` op (which ORT's quantize_dynamic
turns into ``DynamicQuantizeLSTM``), and OpenVINO converts it to ``LSTMSequence``. The
initial states are zeros, so there is no data-dependent control flow.

Expected input: float32 [N, 1, 28, 28], normalised as
    x = (uint8 / 255 - 0.2860) / 0.3530
Output: logits [N, num_classes].

Trained weights: calibration_data/fashion_lstm.pt (scripts/train_fashion_lstm.py).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MEAN", "STD", "FashionLSTM"]

MEAN = 0.2860
STD = 0.3530


class FashionLSTM(nn.Module):
    def __init__(self, num_classes: int = 10, input_size: int = 28, hidden_size: int = 128,
                 num_layers: int = 1, dropout: float = 0.1) -> None:
        super().__init__()
        self.input_size = input_size
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers=num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [N, 1, 28, 28] -> [N, 28 steps, 28 features]; reshape keeps the batch dimension dynamic on export.
        x = x.reshape(x.shape[0], -1, self.input_size)
        _, (h_n, _) = self.lstm(x)
        return self.classifier(self.dropout(h_n[-1]))
