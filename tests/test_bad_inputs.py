"""Every bad input from the foundation issue: one clear sentence, exit 2, no traceback, no complete run."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CALIB, FACTORY, cli, fashion_recipe, write_recipe

pytestmark = pytest.mark.slow   # every test runs a pipeline or the CLI

GOOD_STAGES = [{"type": "quantize", "backend": "openvino"}, {"type": "compile", "target": "x86-cpu-openvino"}]


def _broken(tmp: Path, case: str) -> Path:
    recipe = fashion_recipe(copy.deepcopy(GOOD_STAGES))
    if case == "missing recipe":
        return tmp / "nope.yaml"
    if case == "yaml syntax":
        path = tmp / "recipe.yaml"
        path.write_text("name: x\nmodel: {source: python\nstages:\n  - [\n")
        return path
    if case == "unknown stage type":
        recipe["stages"][0]["type"] = "quantise"
    elif case == "unknown key":
        recipe["stages"][1]["targt"] = "x"
    elif case == "factory not found":
        recipe["model"]["factory"] = FACTORY.replace(":FashionCNN", ":NoSuchNet")
    elif case == "checkpoint not a state_dict":
        torch.save({"epoch": 3, "model": "resnet"}, tmp / "ckpt.pt")
        recipe["model"]["weights"] = str(tmp / "ckpt.pt")
    elif case == "checkpoint needs pickle":
        torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), tmp / "full.pt")   # a whole pickled module
        recipe["model"]["weights"] = str(tmp / "full.pt")
    elif case == "input shape mismatch":
        recipe["model"]["input"]["shape"] = [1, 3, 28, 28]
    elif case == "empty calibration set":
        np.savez(tmp / "empty.npz", x=np.zeros((0, 1, 28, 28), np.uint8))
        recipe["data"]["calibration"]["path"] = str(tmp / "empty.npz")
    elif case == "unreadable calibration set":
        (tmp / "garbage.npz").write_bytes(b"\x00" * 100)
        recipe["data"]["calibration"]["path"] = str(tmp / "garbage.npz")
    elif case == "eval labels out of range":
        with np.load(CALIB) as f:
            np.savez(tmp / "eval.npz", x=f["x"][:50], y=f["y"][:50] + 5)
        recipe["data"]["eval"] = {"path": str(tmp / "eval.npz")}
    elif case == "chain mismatch":
        recipe["stages"] = [{"type": "quantize", "backend": "openvino"},
                            {"type": "compile", "target": "x86-cpu-onnxruntime"}]
    elif case == "unknown target":
        recipe["stages"][1]["target"] = "jetson-orin-trt"
    elif case == "nan in calibration data":
        x = np.random.default_rng(0).random((40, 1, 28, 28)).astype(np.float32)
        x[7, 0, 0, 0] = np.inf
        np.savez(tmp / "nan.npz", x=x)
        recipe["data"]["calibration"]["path"] = str(tmp / "nan.npz")
        recipe["data"]["calibration"]["samples"] = 40
    else:
        raise AssertionError(case)
    return write_recipe(tmp, recipe)


CASES = {
    "missing recipe": "recipe file not found",
    "yaml syntax": "YAML syntax error",
    "unknown stage type": "unknown stage type 'quantise'",
    "unknown key": "stages[1].targt: unknown key",
    "factory not found": "'NoSuchNet' not found",
    "checkpoint not a state_dict": "is not a state_dict",
    "checkpoint needs pickle": "weights_only=True",
    "input shape mismatch": "does not accept the recipe's input",
    "empty calibration set": "holds no samples",
    "unreadable calibration set": "cannot read",
    "eval labels out of range": "eval labels out of range",
    "chain mismatch": "previous step produces OpenVinoModel",
    "unknown target": "unknown target 'jetson-orin-trt'",
    "nan in calibration data": "NaN or Inf",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_clear_line(tmp, case):
    recipe = _broken(tmp, case)
    runs = tmp / "runs"
    result = cli("run", recipe, "--out", runs)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and CASES[case] in result.stderr.replace("\n", " "), result.stderr
    assert not list(runs.glob("*/report.json"))   # nothing that looks complete


def test_validate_command_catches_chain_errors_without_compute(tmp):
    result = cli("validate", _broken(tmp, "chain mismatch"))
    assert result.returncode == 2 and "stages[1]" in result.stderr


def test_unwritable_output_folder(tmp):
    blocker = tmp / "file"
    blocker.write_text("not a folder")
    recipe = write_recipe(tmp, fashion_recipe(copy.deepcopy(GOOD_STAGES)))
    result = cli("run", recipe, "--out", blocker / "runs")
    assert result.returncode == 2 and "cannot create the run folder" in result.stderr


def test_debug_shows_traceback(tmp):
    result = cli("--debug", "run", tmp / "missing.yaml")
    assert result.returncode == 2 and "Traceback" in result.stderr
