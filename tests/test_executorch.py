"""ExecuTorch .pte files, FP32 and INT8 (PT2E, XNNPACK), made and run here by ExecuTorch itself."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import compress
from compress.errors import ChainError, InputError

from conftest import ROOT, fashion_recipe

pytestmark = pytest.mark.skipif(importlib.util.find_spec("executorch") is None,
                                reason="ExecuTorch is the optional extra compress[mobile] (make install adds it)")


def test_export_to_an_fp32_pte_runs_with_the_outputs_of_torch(tmp):
    from compress.inputs import open_inputs
    from compress.runtimes import open_session
    from compress.stages import Resolved, StageContext, handler_for

    parsed, base = compress.load(fashion_recipe([{"type": "export", "format": "executorch"}]))
    inputs = open_inputs(parsed, base)
    cfg = parsed.stages[0]
    ctx = StageContext(where="stages[0]", spec=inputs.spec, calibration=inputs.calibration,
                       resolved=Resolved(batch_size=64), out_dir=tmp)
    pte = handler_for(cfg).run(cfg, inputs.reference, ctx)
    assert pte.kind == "ExecuTorchModel" and pte.path.suffix == ".pte"
    assert ctx.details["parity"]["max_abs_diff"] < 1e-4
    session = open_session(pte, threads=2)
    assert session.fixed_batch == 1 and session.settings["delegate"] == "XNNPACK"
    feeds = next(inputs.eval.input_batches(8))            # batch 8 on a batch-1 program: run in chunks
    want = open_session(inputs.reference, threads=2).run(feeds)[0]
    assert np.abs(session.run(feeds)[0] - want).max() < 1e-4


@pytest.mark.slow
def test_int8_pte_keeps_accuracy_and_ignores_named_modules(tmp):
    recipe = fashion_recipe([{"type": "quantize", "backend": "executorch", "samples": 64, "ignore": ["classifier"]},
                             {"type": "compile", "target": "android-arm64-executorch"}])
    result = compress.run(recipe, out=tmp / "runs")
    quantize, final = result.stages
    assert quantize["details"]["ignored"] == ["classifier"]
    assert 0 < quantize["details"]["quantize_ops"] == quantize["details"]["weighted_layers"] - 1   # head stays FP32
    assert final["artifact"]["type"] == "ExecuTorchModel" and final["artifact"]["precision"] == "int8"
    assert "executorch" in result.report["baselines"]                               # FP32 .pte, same runtime
    assert final["agreement"]["output"]["top1_agreement"] > 97.0 and final["primary"]["delta"] > -1.5
    assert final["latency"]["threads"] == 2 and any("not on the phone" in n for n in final["notes"])


@pytest.mark.slow
def test_an_unknown_module_in_ignore_names_the_close_ones(tmp):
    recipe = fashion_recipe([{"type": "quantize", "backend": "executorch", "ignore": ["clasifier"]}])
    with pytest.raises(InputError, match="classifier"):
        compress.run(recipe, out=tmp / "runs")


@pytest.mark.slow
def test_a_model_torch_export_cannot_capture_is_exit_2_naming_line_and_module(tmp):
    (tmp / "branchy.py").write_text(
        "import torch\n"
        "class Gate(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        if x.sum() > 0:\n"
        "            return x * 2\n"
        "        return x\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(1, 4, 3)\n"
        "        self.gate = Gate()\n"
        "        self.head = torch.nn.Linear(4, 10)\n"
        "    def forward(self, x):\n"
        "        return self.head(self.gate(self.conv(x)).mean((2, 3)))\n")
    recipe = fashion_recipe([{"type": "export", "format": "executorch"}])
    recipe["model"] = {"source": "python", "factory": str(tmp / "branchy.py") + ":Net",
                       "input": {"shape": [1, 1, 28, 28]}}
    with pytest.raises(InputError) as info:
        compress.run(recipe, out=tmp / "runs")
    text = info.value.render()
    assert text.startswith("stages[0]: torch.export cannot capture the model: data-dependent control flow")
    assert "branchy.py:4 in forward()" in text and "module 'gate'" in text and info.value.exit_code == 2


def test_executorch_followed_by_an_onnx_only_stage_is_a_plan_time_chain_error():
    recipe = fashion_recipe([{"type": "export", "format": "executorch"},
                             {"type": "quantize", "backend": "onnxruntime"}])
    with pytest.raises(ChainError, match=r"stages\[1\].*takes OnnxModel.*produces ExecuTorchModel"):
        compress.validate(recipe)


@pytest.mark.slow
def test_executorch_missing_is_exit_2_naming_the_extra(tmp, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "executorch" else real(name, *a))
    with pytest.raises(InputError, match=r"stages\[0\]\.backend: ExecuTorch is not installed.*compress\[mobile\]"):
        compress.run(fashion_recipe([{"type": "quantize", "backend": "executorch"}]), out=tmp / "runs")


@pytest.mark.slow
def test_sensitivity_and_fallback_on_the_pte_keep_modules_out_of_xnnpacks_quantizer(tmp):
    """Every layer ranked by the metric with only it in float, judged on the .pte itself (ExecuTorch runtime); the
    kept layer leaves the quantizer through its filter function, so the shipped program has one INT8 layer fewer."""
    stage = {"type": "quantize", "backend": "executorch", "samples": 64,
             "accuracy_control": {"max_drop": 0.0001, "max_fallback_layers": 1, "metric": "cosine", "samples": 64}}
    result = compress.run(fashion_recipe([stage]), out=tmp)
    details = result.stages[-1]["details"]
    rows, fb = details["sensitivity"]["rows"], details["fallback"]
    spec = importlib.util.spec_from_file_location("fashion_cnn", ROOT / "recipes" / "models" / "fashion_cnn.py")
    models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models)
    weighted = {n for n, m in models.FashionCNN().named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    assert {r["node"] for r in rows} == weighted and all(r["module"] == r["node"] for r in rows)
    assert all(r["only_this_fp32"] is not None for r in rows)
    assert fb["plain_int8"] < fb["baseline"] - 0.0001 and len(fb["steps"]) <= 2 and len(fb["kept_fp32"]) <= 1
    assert fb["latency_ms"]["fp32"] > 0 and fb["latency_ms"]["plain_int8"] > 0
    assert "not on the phone" in fb["measured"]          # x86 figures, labelled as such
    assert details["quantize_ops"] == details["weighted_layers"] - len(fb["kept_fp32"])
    if fb["kept_fp32"]:
        assert fb["metric_after"] > fb["plain_int8"]
    assert [p.name for p in (result.run_dir / "stages" / "01-quantize").glob("*.pte")] == ["model.pte"]  # no variant left
    gate = next(g for g in result.report["gates"] if g["gate"] == "accuracy_control")
    assert gate["passed"] == fb["met"]
