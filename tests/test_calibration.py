"""Model families recognised from the graph, and `method: auto` (calibration chosen by the recipe's metric)."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

import compress
from compress.families import attention_matmuls_onnx, attention_matmuls_openvino, decide
from compress.models import load_model
from compress.recipe import ModelConfig, QuantizeConfig

from conftest import DATA, FACTORY, ROOT, WEIGHTS, fashion_recipe

TEXT_FACTORY = str(ROOT / "recipes/models/text_encoder.py") + ":TextEncoder"
TEXT_INPUTS = [{"name": "input_ids", "shape": [1, 64], "dtype": "int64"},
               {"name": "attention_mask", "shape": [1, 64], "dtype": "int64"}]


def _onnx(tmp_path, model: dict):
    from compress.convert import torch_to_onnx

    cfg = ModelConfig(**model)
    artifact, spec = load_model(cfg, ROOT)
    path = tmp_path / "model.onnx"
    torch_to_onnx(artifact.module, spec, path)
    return path


class _MlpWithSoftmax(torch.nn.Module):
    """MatMuls next to a Softmax, but each with a weight: not attention."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(16, 32), torch.nn.Linear(32, 8)

    def forward(self, x):
        return torch.softmax(self.b(torch.relu(self.a(x))), dim=-1)


def test_attention_is_found_in_a_transformer_and_nowhere_else(tmp_path):
    import openvino as ov

    (tmp_path / "t").mkdir()
    text = _onnx(tmp_path / "t", {"source": "python", "factory": TEXT_FACTORY, "inputs": TEXT_INPUTS,
                                  "kwargs": {"d_model": 32, "heads": 2, "layers": 3, "ff": 64}, "outputs": ["embedding"]})
    cnn = _onnx(tmp_path, {"source": "python", "factory": FACTORY, "weights": WEIGHTS, "input": {"shape": [1, 1, 28, 28]}})
    mlp = tmp_path / "mlp.onnx"
    torch.onnx.export(_MlpWithSoftmax(), (torch.randn(1, 5, 16),), str(mlp), dynamo=False)
    # two per block: Q·Kᵀ before the Softmax, P·V after it
    assert attention_matmuls_onnx(text) == 6
    assert attention_matmuls_openvino(ov.convert_model(str(text))) == 6
    for other in (cnn, mlp):
        assert attention_matmuls_onnx(other) == 0
        assert attention_matmuls_openvino(ov.convert_model(str(other))) == 0
    assert decide("auto", 6)[0] == "transformer" and decide("auto", 0)[0] == "generic"
    assert decide("generic", 6) == ("generic", "set in the recipe")


def test_model_type_and_auto_are_checked_per_backend():
    with pytest.raises(ValueError, match="'model_type' applies to backends openvino and onnxruntime"):
        QuantizeConfig(type="quantize", backend="executorch", model_type="transformer")
    with pytest.raises(ValueError, match="'model_type' applies to mode static only"):
        QuantizeConfig(type="quantize", backend="onnxruntime", mode="dynamic", model_type="generic")
    assert QuantizeConfig(type="quantize", backend="tensorrt", method="auto").method == "auto"


def _text_recipe(stages: list[dict], name: str) -> dict:
    return {"name": name, "model": {"source": "python", "factory": TEXT_FACTORY, "inputs": TEXT_INPUTS,
                                    "outputs": ["embedding"]},
            "data": {"calibration": {"path": str(DATA / "text_calib.npz"), "samples": 64},
                     "eval": {"path": str(DATA / "text_eval.npz"), "samples": 64}, "batch_size": 32},
            "metric": {"primary": "cosine"}, "stages": stages, "latency": {"warmup": 1, "runs": 3}}


@pytest.mark.slow
def test_a_transformer_gets_nncf_transformer_scheme_by_default_and_the_recipe_can_override_it(tmp):
    auto = compress.run(_text_recipe([{"type": "quantize", "backend": "openvino", "samples": 32}], "tx-auto"),
                        out=tmp / "runs")
    d = auto.stages[0]["details"]
    assert d["model_type"] == "transformer" and "attention MatMuls" in d["model_type_reason"]
    assert d["bias_correction"] == "fast" and d["preset"].startswith("mixed")     # NNCF's transformer defaults
    assert "model type transformer" in (auto.run_dir / "report.md").read_text()
    generic = compress.run(_text_recipe([{"type": "quantize", "backend": "openvino", "samples": 32,
                                          "model_type": "generic"}], "tx-generic"), out=tmp / "runs")
    d = generic.stages[0]["details"]
    assert d["model_type"] == "generic" and d["model_type_reason"] == "set in the recipe"
    assert d["bias_correction"] == "full" and d["preset"].startswith("performance")


def _check_search(result, at_least: int) -> list[dict]:
    index = len(result.stages) - 1                      # the quantize stage is the last
    stage = result.stages[index]
    tried = stage["details"]["calibration_candidates"]
    assert len(tried) >= at_least and sum(t["chosen"] for t in tried) == 1
    values = [next(iter(t["metric"].values())) for t in tried]
    chosen = next(i for i, t in enumerate(tried) if t["chosen"])
    assert chosen == values.index(max(values))          # the best, and the first of equals
    # the stage ships the chosen candidate: its full validation on the same eval samples gives the same figure
    assert stage["primary"]["value"] == pytest.approx(values[chosen], abs=1e-6)
    folder = result.run_dir / "stages" / f"{index + 1:02d}-quantize"
    assert not (folder / "candidates").exists() and not (folder / "work").exists()
    assert all(t["latency_ms"] > 0 and t["size_mb"] > 0 for t in tried)
    assert "method auto" in (result.run_dir / "report.md").read_text()
    return tried


@pytest.mark.slow
@pytest.mark.parametrize("backend, at_least", [("openvino", 6), ("onnxruntime", 6)])
def test_method_auto_keeps_the_best_candidate_by_the_recipe_metric(tmp, backend, at_least):
    recipe = fashion_recipe([{"type": "quantize", "backend": backend, "method": "auto", "samples": 64}])
    recipe["model"] = {"source": "python", "factory": FACTORY, "kwargs": {"width": 4},
                       "weights": str(DATA / "fashion_cnn_w4.pt"), "input": {"shape": [1, 1, 28, 28]}}
    recipe["data"]["eval"]["samples"] = 200
    if backend == "onnxruntime":
        recipe["stages"].insert(0, {"type": "export"})
    result = compress.run(recipe, out=tmp / "runs")
    tried = _check_search(result, at_least)
    names = [t["name"] for t in tried]
    if backend == "openvino":
        assert {"nncf default", "minmax", "percentile", "histogram", "channel alignment"} <= set(names)
    else:
        assert {"minmax", "percentile", "entropy", "distribution", "symmetric activations"} <= set(names)
    json.dumps(result.report)   # the candidates are plain data


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("modelopt") is None, reason="needs compress[tensorrt]")
def test_method_auto_on_tensorrt_tries_modelopts_calibrators(tmp):
    recipe = fashion_recipe([{"type": "quantize", "backend": "tensorrt", "method": "auto", "samples": 64}])
    result = compress.run(recipe, out=tmp / "runs")
    tried = _check_search(result, 2)
    assert [t["name"] for t in tried] == ["max", "entropy"]


def test_auto_skips_a_candidate_the_library_fails_on_and_fails_only_when_all_do(tmp_path):
    """NNCF 3.4's channel alignment raises on depthwise networks (KeyError in its numpy tensor backend): `auto`
    records that candidate with the library's error and chooses among the others."""
    from types import SimpleNamespace

    from compress.artifacts import OnnxModel
    from compress.errors import StageError
    from compress.stages.calibration import search

    scores = {}

    def build(settings, folder):
        if settings["broken"]:
            raise StageError("NNCF quantization failed: KeyError: <class 'numpy.float32'>", where="stages[0]")
        path = folder / "model.onnx"
        path.write_bytes(b"x" * settings["value"])
        scores[path.stat().st_size] = settings["value"]
        return OnnxModel(path=path)

    ctx = SimpleNamespace(score=lambda art, n: ("top1", float(scores[art.path.stat().st_size])),
                          quick_latency=lambda art: 1.0, eval=None, log=lambda *_: None, details={}, where="stages[0]",
                          resolved=SimpleNamespace(batch_size=8, higher_is_better=True))
    first = [("minmax", {"broken": False, "value": 90}), ("percentile", {"broken": False, "value": 92})]
    variants = lambda best: [("channel alignment", {**best, "broken": True}),      # noqa: E731
                             ("fast bias correction", {**best, "value": 91})]
    out = tmp_path / "out"
    out.mkdir()
    artifact, settings = search(ctx, first, variants, build, out)
    tried = ctx.details["calibration_candidates"]
    assert [t["name"] for t in tried] == ["minmax", "percentile", "channel alignment", "fast bias correction"]
    assert settings["value"] == 92 and [t["chosen"] for t in tried] == [False, True, False, False]
    assert "KeyError" in tried[2]["error"] and tried[2]["metric"] == {}
    assert artifact.path == out / "model.onnx" and artifact.path.stat().st_size == 92
    with pytest.raises(StageError, match="every calibration candidate failed"):
        search(ctx, [("minmax", {"broken": True, "value": 1})], lambda best: [], build, tmp_path / "none")
