"""Model factories for the bad-input corpus: each one is wrong in its own way (TokenNet is fine)."""
from __future__ import annotations

import sys

import torch
from torch import nn


def raises():
    raise RuntimeError("factory exploded on purpose")


def not_a_module():
    return {"layers": 3}


def exits():
    sys.exit(0)   # a factory that calls exit() must not make compress exit 0


class _NoOutputs(nn.Module):
    def forward(self, x):
        return ()


def no_outputs():
    return _NoOutputs()


class TokenNet(nn.Module):
    """int64 token ids [N, 8] -> logits [N, 4]."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(16, 4)
        self.head = nn.Linear(32, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens).flatten(1))
