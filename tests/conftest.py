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
    _refuse_in_fast_test("the CLI")
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


# ---------------------------------------------------------------- test tiers
# A test that runs a pipeline (compress.run / compress.resume) or the CLI (a subprocess that loads
# the backends), itself or through a fixture, is marked `slow`; `make test-fast` runs the others
# (pytest -m "not slow"), `make test` runs both. Mark a module with `pytestmark = pytest.mark.slow`
# when all its tests are slow, else each slow test with @pytest.mark.slow. An unmarked test that
# runs a pipeline or the CLI fails, so the fast tier stays fast.
SLOW_MODULES = {"test_reliability.py"}   # its owner is changing it: marked here until it has a pytestmark
_FAST_TEST: dict[str, str | None] = {"nodeid": None}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


def _refuse_in_fast_test(what: str) -> None:
    if _FAST_TEST["nodeid"] is not None:
        raise AssertionError(f"{_FAST_TEST['nodeid']} runs {what} but is not marked slow: "
                             "add @pytest.mark.slow (tests/conftest.py, test tiers)")


@pytest.fixture(autouse=True)
def _fast_tests_run_no_pipeline(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    if request.node.get_closest_marker("slow") is not None:
        yield
        return
    import compress

    for name in ("run", "resume"):
        def refuse(*args, _name=name, **kwargs):
            _refuse_in_fast_test(f"a pipeline (compress.{_name})")

        monkeypatch.setattr(compress, name, refuse)
    _FAST_TEST["nodeid"] = request.node.nodeid
    yield
    _FAST_TEST["nodeid"] = None


@pytest.fixture(scope="session")
def fashion_fp32_onnx(tmp_path_factory):
    """The shipped Fashion CNN exported once: (parsed recipe, opened inputs, path of its FP32 .onnx)."""
    import compress
    from compress.convert import torch_to_onnx
    from compress.inputs import open_inputs

    parsed, base = compress.load(fashion_recipe([{"type": "export"}]))
    inputs = open_inputs(parsed, base)
    path = tmp_path_factory.mktemp("fashion-onnx") / "fp32.onnx"
    torch_to_onnx(inputs.reference.module, inputs.spec, path)
    return parsed, inputs, path

