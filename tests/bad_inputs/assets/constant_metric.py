"""A metric that ignores the model's outputs (a bug in a user's metric): it cannot rank layers."""
from __future__ import annotations


def always_one(outputs, targets) -> dict:
    return {"score": 1.0}
