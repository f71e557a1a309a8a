from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "calibration_data"
FACTORY = str(ROOT / "recipes" / "models" / "fashion_cnn.py") + ":FashionCNN"
WEIGHTS = str(DATA / "fashion_cnn.pt")
CALIB = str(DATA / "fashion_mnist_calib.npz")
EVAL = str(DATA / "fashion_mnist_eval.npz")
TRANSFORM = {"mean": [0.2860], "std": [0.3530]}
FAST_LATENCY = {"warmup": 2, "runs": 5}


def fashion_recipe(stages: list[dict], **overrides) -> dict:
    """A small, fast recipe on the shipped Fashion-MNIST model and data (absolute paths)."""
    recipe = {
        "name": "test-fashion",
        "model": {"source": "python", "factory": FACTORY, "weights": WEIGHTS, "input": {"shape": [1, 1, 28, 28]}},
        "data": {"calibration": {"path": CALIB, "samples": 128}, "eval": {"path": EVAL, "samples": 300},
                 "transform": dict(TRANSFORM), "batch_size": 64},
        "stages": stages,
        "latency": dict(FAST_LATENCY),
    }
    recipe.update(overrides)
    return recipe


def write_recipe(folder: Path, recipe: dict, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "compress.cli", *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def fashion_eval() -> tuple[np.ndarray, np.ndarray]:
    with np.load(EVAL) as f:
        return f["x"], f["y"]


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path
