"""A tiny CNN for the OpenVINO layer trace: bias-free convolutions straight into ReLU (OpenVINO's CPU
plugin fuses each with its ReLU and the next FakeQuantize), and one batch norm that OpenVINO folds
into its convolution, renaming it."""
from torch import nn


class ConvReluNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(16, 24, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(24)
        self.conv3 = nn.Conv2d(24, 32, 3, padding=1, stride=2, bias=False)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.relu(self.conv1(x))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.relu(self.conv3(x))
        return self.fc(self.pool(x).flatten(1))
