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


def _shipped(path, stages: list[dict], eval_samples: int) -> dict:
    """A shipped recipe with other stages, a smaller eval set, quick timing and no gates."""
    recipe = yaml.safe_load(path.read_text())
    recipe["stages"] = stages
    recipe["data"]["eval"]["samples"] = eval_samples
    recipe["latency"] = {"warmup": 1, "runs": 4}
    recipe.pop("gates")
    return recipe


def _text_recipe(stages: list[dict]) -> dict:
    return _shipped(RECIPE, stages, 96)


@pytest.mark.slow
def test_dynamic_onnxruntime_on_a_transformer_with_int64_inputs(tmp):
    result = compress.run(_text_recipe([{"type": "export"},
                                        {"type": "quantize", "mode": "dynamic", "backend": "onnxruntime"}]),
                          out=tmp, base_dir=RECIPE.parent)
    quant = result.stages[-1]
    assert quant["artifact"]["precision"] == "int8" and quant["details"]["mode"] == "dynamic"
    assert quant["details"]["quantize_ops"] > 0 and quant["details"]["scheme_reason"]
    assert quant["primary"]["name"] == "cosine" and quant["agreement"]["embedding"]["cosine"] > 0.99
    assert result.report["model"]["inputs"][0]["dtype"] == "int64"


@pytest.mark.slow
def test_dynamic_openvino_weight_compression(tmp):
    result = compress.run(_text_recipe([{"type": "quantize", "mode": "dynamic", "backend": "openvino"}]),
                          out=tmp, base_dir=RECIPE.parent)
    quant = result.stages[-1]
    assert quant["runtime"] == "openvino" and quant["artifact"]["precision"] == "int8"
    assert quant["details"]["weight_compression"] == "INT8_ASYM" and quant["details"]["quantize_ops"] > 0
    assert quant["agreement"]["embedding"]["cosine"] > 0.99
    fp32_size = result.report["baselines"]["openvino"]["artifact"]["size_mb"]
    assert quant["artifact"]["size_mb"] < fp32_size / 3   # INT8 weights


@pytest.mark.slow
def test_weight_compression_ignoring_an_unknown_node_is_exit_2_at_the_ignore_list(tmp):
    recipe = fashion_recipe([{"type": "quantize", "mode": "dynamic", "backend": "openvino",
                              "ignore": ["no_such_node"]}])
    result = cli("run", write_recipe(tmp, recipe), "--out", tmp / "runs", "-q")
    text = " ".join(result.stderr.split())
    assert result.returncode == 2 and "Traceback" not in result.stderr, text
    assert "stages[0].ignore" in text and "NNCF rejected the settings" in text and "no_such_node" in text


@pytest.mark.slow
def test_model_with_nothing_to_quantize_fails_with_exit_3(tmp):
    (tmp / "net.py").write_text("import torch\n\n"
                                "def build():\n    return torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Flatten())\n")
    recipe = fashion_recipe([{"type": "export"}, {"type": "quantize", "mode": "dynamic", "backend": "onnxruntime"}])
    recipe["model"] = {"source": "python", "factory": "net.py:build", "input": {"shape": [1, 1, 28, 28]}}
    result = cli("run", write_recipe(tmp, recipe), "--out", tmp / "runs", "-q")
    assert result.returncode == 3, result.stderr
    assert "quantized no layer" in result.stderr


@pytest.mark.slow
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


LSTM_RECIPE = ROOT / "recipes" / "dynamic-lstm-onnxruntime.yaml"


def _lstm_recipe(stages: list[dict]) -> dict:
    return _shipped(LSTM_RECIPE, stages, 400)


@pytest.mark.slow
def test_lstm_on_image_rows_quantizes_the_recurrence_on_onnxruntime(tmp):
    import onnx

    result = compress.run(_lstm_recipe([{"type": "export"}, {"type": "quantize", "mode": "dynamic",
                                                             "backend": "onnxruntime"}]),
                          out=tmp, base_dir=LSTM_RECIPE.parent)
    quant = result.stages[-1]
    ops = {n.op_type for n in onnx.load(str(result.run_dir / quant["artifact"]["path"])).graph.node}
    assert "DynamicQuantizeLSTM" in ops                 # the LSTM itself runs with INT8 weights
    assert result.report["reference"]["primary"]["value"] > 85     # real trained weights on real images
    assert abs(quant["primary"]["delta"]) <= 1.0


@pytest.mark.slow
def test_lstm_on_openvino_says_how_little_became_int8(tmp):
    result = compress.run(_lstm_recipe([{"type": "quantize", "mode": "dynamic", "backend": "openvino"}]),
                          out=tmp, base_dir=LSTM_RECIPE.parent)
    quant = result.stages[-1]
    assert quant["details"]["int8_weight_share"] < 0.05          # only the classifier head
    assert any("LSTMSequence weights stay FP32" in n for n in quant["notes"])


@pytest.mark.slow
def test_torch_backend_keeps_a_torch_model_with_int8_linear_layers(tmp):
    recipe = _text_recipe([{"type": "quantize", "mode": "dynamic", "backend": "torch"}])
    result = compress.run(recipe, out=tmp, base_dir=RECIPE.parent)
    quant = result.stages[0]
    assert quant["runtime"] == "torch" and quant["artifact"]["precision"] == "int8"
    assert quant["details"]["quantize_ops"] == quant["details"]["linear_layers"] > 0
    assert quant["agreement"]["embedding"]["cosine"] > 0.99
    assert (result.run_dir / "stages" / "01-quantize" / "quantization.json").is_file()
    again = compress.run(recipe, out=tmp, base_dir=RECIPE.parent)      # reloaded from the state_dict
    assert again.stages[0]["cached"] == "cache"
    cosine = quant["agreement"]["embedding"]["cosine"]
    assert again.stages[0]["agreement"]["embedding"]["cosine"] == pytest.approx(cosine)


def test_torch_backend_cannot_be_exported_and_is_dynamic_only(tmp):
    from compress.errors import ChainError

    with pytest.raises(ChainError, match="torchao"):
        compress.validate(_text_recipe([{"type": "quantize", "mode": "dynamic", "backend": "torch"},
                                        {"type": "export"}]))
    with pytest.raises(RecipeError, match="mode dynamic only"):
        parse_recipe(_text_recipe([{"type": "quantize", "backend": "torch"}]))
