"""NNCF's C++ fake-quant kernels for QAT: `make install` builds them ahead (python -m compress.nncf_kernels);
on a machine without a C++ compiler the qat stage trains with NNCF's pure-torch reference instead, with no
build attempt and no compiler output, and says so in the stage details."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compress import nncf_kernels

from conftest import DATA, ROOT, cli, fashion_recipe, write_recipe

SMALL_CNN = {"source": "python", "factory": str(ROOT / "recipes/models/fashion_cnn.py") + ":FashionCNN",
             "kwargs": {"width": 4}, "weights": str(DATA / "fashion_cnn_w4.pt"), "input": {"shape": [1, 1, 28, 28]}}
COMPILER_NOISE = ("Traceback", "FAILED", "ninja", "Could not compile", "torch.compile", "InvalidCxxCompiler")


@pytest.fixture
def no_compiler(tmp, monkeypatch) -> Path:
    """No C++ compiler (CXX names a missing file) and an empty extensions cache: a fresh machine without g++."""
    monkeypatch.setenv("CXX", str(tmp / "no-such-c++"))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp / "torch_extensions"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp / "inductor"))
    return tmp / "torch_extensions"


@pytest.mark.slow
def test_qat_without_a_cpp_compiler_trains_with_pure_torch_fake_quant_and_says_so(tmp, no_compiler):
    recipe = fashion_recipe([{"type": "qat", "backend": "openvino", "finetune": {"epochs": 1}}], model=dict(SMALL_CNN))
    recipe["data"]["calibration"]["samples"] = 64
    recipe["data"]["eval"]["samples"] = 200
    recipe["data"]["train"] = {"path": str(DATA / "fashion_mnist_train.npz"), "samples": 256}
    proc = cli("run", write_recipe(tmp, recipe), "--out", tmp / "runs", "--no-cache", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(next((tmp / "runs").glob("*/report.json")).read_text())
    stage = report["stages"][0]
    assert stage["details"]["fake_quant_kernels"].startswith("pure torch: no C++ compiler"), stage["details"]
    assert stage["artifact"]["precision"] == "int8" and stage["details"]["quantize_ops"] > 0
    assert len(stage["details"]["finetune"]) == 1 and stage["primary"]["value"] > 50
    err = " ".join(proc.stderr.split())
    assert "no C++ compiler" in err and "pure-torch" in err       # one line in the progress log
    assert not [word for word in COMPILER_NOISE if word in proc.stderr + proc.stdout], proc.stderr[-3000:]
    assert not list(no_compiler.rglob("build.ninja")), "a build was attempted"


@pytest.mark.slow
def test_install_step_without_a_compiler_exits_0_and_says_what_qat_uses(no_compiler):
    proc = subprocess.run([sys.executable, "-m", "compress.nncf_kernels"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)), check=False)
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())
    assert "no C++ compiler" in out and "pure-torch" in out and "make kernels" in out and "g++" in out
    assert not [word for word in COMPILER_NOISE if word in proc.stderr + proc.stdout], proc.stderr
    assert not list(no_compiler.rglob("build.ninja"))


def test_ninja_from_the_virtualenv_is_used_when_the_venv_is_not_activated(tmp, monkeypatch):
    if not (Path(sys.executable).parent / "ninja").is_file():
        pytest.skip("this interpreter's bin/ has no ninja")
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "c++").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "c++").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))      # a compiler, but no ninja on PATH
    monkeypatch.delenv("CXX", raising=False)
    assert nncf_kernels.missing_tool() is None
    assert os.environ["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("CXX", str(tmp / "missing"))
    assert "no C++ compiler" in nncf_kernels.missing_tool()


def test_pure_torch_fallback_matches_the_cpp_kernels_up_to_float_rounding():
    if nncf_kernels.missing_tool() and not nncf_kernels.is_built():
        pytest.skip("no C++ compiler to build NNCF's kernels with")
    cpp = nncf_kernels._loader().load()     # builds once (~40 s) if `make install` has not
    if not getattr(cpp, "__file__", None):
        pytest.skip("NNCF could not build its C++ kernels here")
    ref = nncf_kernels._EagerReference
    torch.manual_seed(0)
    for shape, range_shape, level_low, level_high, asymmetric in [
            ((8, 4, 28, 28), (1,), 0, 255, False),            # activations, per tensor, unsigned
            ((16, 8, 3, 3), (16, 1, 1, 1), -128, 127, False),  # weights, per channel, signed
            ((8, 8, 7, 7), (1, 8, 1, 1), -128, 127, True)]:
        x, grad = torch.randn(shape) * 2, torch.randn(shape)
        input_range = torch.rand(range_shape) * 3 + 0.5
        input_low = -input_range * 128 / 127 if level_low < 0 else torch.zeros(range_shape)
        args = (input_low, input_range, 256)
        torch.testing.assert_close(ref.Quantize_forward(x, *args), cpp.Quantize_forward(x, *args), rtol=0, atol=1e-6)
        backward = (grad, x, *args, level_low, level_high, asymmetric)
        for i, (a, b) in enumerate(zip(ref.Quantize_backward(*backward), cpp.Quantize_backward(*backward))):
            if i != 1 or asymmetric:      # [grad_input, grad_low (asymmetric only), grad_range]
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
