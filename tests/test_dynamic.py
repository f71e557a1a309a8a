"""Dynamic INT8 (no calibration) on a transformer encoder with two int64 inputs, on ORT and OpenVINO."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

import compress
from compress.errors import RecipeError
from compress.recipe import parse_recipe

from conftest import ROOT, cli, fashion_recipe, write_recipe

RECIPE = ROOT / "recipes" / "dynamic-transformer-onnxruntime.yaml"


def _text_recipe(stages: list[dict]) -> dict:
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["stages"] = stages
    recipe["data"]["eval"]["samples"] = 96
    recipe["latency"] = {"warmup": 1, "runs": 4}
    recipe.pop("gates")
    return recipe


def test_dynamic_onnxruntime_on_a_transformer_with_int64_inputs(tmp):
    result = compress.run(_text_recipe([{"type": "export"}, {"type": "quantize", "mode": "dynamic", "backend": "onnxruntime"}]),
                          out=tmp, base_dir=RECIPE.parent)
    quant = result.stages[-1]
    assert quant["artifact"]["precision"] == "int8" and quant["details"]["mode"] == "dynamic"
    assert quant["details"]["quantize_ops"] > 0 and quant["details"]["scheme_reason"]
    assert quant["primary"]["name"] == "cosine" and quant["agreement"]["embedding"]["cosine"] > 0.99
    assert result.report["model"]["inputs"][0]["dtype"] == "int64"


def test_dynamic_openvino_weight_compression(tmp):
    result = compress.run(_text_recipe([{"type": "quantize", "mode": "dynamic", "backend": "openvino"}]),
                          out=tmp, base_dir=RECIPE.parent)
    quant = result.stages[-1]
    assert quant["runtime"] == "openvino" and quant["artifact"]["precision"] == "int8"
    assert quant["details"]["weight_compression"] == "INT8_ASYM" and quant["details"]["quantize_ops"] > 0
    assert quant["agreement"]["embedding"]["cosine"] > 0.99
    fp32_size = result.report["baselines"]["openvino"]["artifact"]["size_mb"]
    assert quant["artifact"]["size_mb"] < fp32_size / 3   # INT8 weights


def test_model_with_nothing_to_quantize_fails_with_exit_3(tmp):
    (tmp / "net.py").write_text("import torch\n\ndef build():\n    return torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Flatten())\n")
    recipe = fashion_recipe([{"type": "export"}, {"type": "quantize", "mode": "dynamic", "backend": "onnxruntime"}])
    recipe["model"] = {"source": "python", "factory": "net.py:build", "input": {"shape": [1, 1, 28, 28]}}
    result = cli("run", write_recipe(tmp, recipe), "--out", tmp / "runs", "-q")
    assert result.returncode == 3, result.stderr
    assert "quantized no layer" in result.stderr


def test_dtype_mismatch_between_recipe_and_data_is_exit_2(tmp):
    with np.load(ROOT / "calibration_data" / "text_eval.npz") as f:
        np.savez(tmp / "floats.npz", input_ids=f["input_ids"].astype(np.float32), attention_mask=f["attention_mask"])
    recipe = _text_recipe([{"type": "export"}])
    recipe["model"]["factory"] = str(ROOT / "recipes" / "models" / "text_encoder.py") + ":TextEncoder"
    recipe["data"]["calibration"]["path"] = str(tmp / "floats.npz")
    recipe["data"]["eval"]["path"] = str(ROOT / "calibration_data" / "text_eval.npz")
    result = cli("run", write_recipe(tmp, recipe), "--out", tmp / "runs")
    assert result.returncode == 2 and "input_ids" in result.stderr and "float32" in result.stderr


@pytest.mark.parametrize("extra", [{"method": "minmax"}, {"samples": 10}, {"scheme": "s8s8"}])
def test_dynamic_refuses_calibration_options(extra):
    with pytest.raises(RecipeError, match="dynamic"):
        parse_recipe(fashion_recipe([{"type": "export"}, {"type": "quantize", "mode": "dynamic",
                                                          "backend": "onnxruntime", **extra}]))
