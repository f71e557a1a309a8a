"""Mobile targets that run for real here: ONNX Runtime Mobile (.ort) files are made by ONNX Runtime's
own converter and run by the onnxruntime package on this CPU."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import compress
from compress.artifacts import OnnxModel, OrtFormatModel
from compress.errors import InputError
from compress.runtimes import open_session

from conftest import ROOT, cli, fashion_recipe


@pytest.mark.parametrize("platform", ["amd64", "arm"])
def test_ort_file_gives_the_outputs_of_the_onnx_it_came_from(fashion_fp32_onnx, tmp, platform):
    from compress.runtimes.ort_mobile_runtime import convert

    _, inputs, path = fashion_fp32_onnx
    ort_model = convert(path, tmp, platform=platform, type_reduction=True)
    assert isinstance(ort_model, OrtFormatModel) and ort_model.path.suffix == ".ort"
    config = [p.name for p in ort_model.files()[1:]]
    assert config == ["model.required_operators_and_types.config"]     # the reduced build's input, beside it
    assert "ai.onnx;" in (tmp / config[0]).read_text() and "Conv" in (tmp / config[0]).read_text()
    feeds = next(inputs.eval.input_batches(64))
    got = open_session(ort_model, threads=2).run(feeds)[0]
    want = open_session(OnnxModel(path=path), threads=2).run(feeds)[0]
    assert float(np.abs(got - want).max()) < 1e-5


def test_an_op_the_converter_rejects_is_exit_2_naming_it(tmp):
    from compress.runtimes.ort_mobile_runtime import convert

    node = helper.make_node("MysteryOp", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(model, tmp / "custom.onnx")
    (tmp / "out").mkdir()
    with pytest.raises(InputError) as info:
        convert(tmp / "custom.onnx", tmp / "out", platform="arm", type_reduction=False, where="stages[2]")
    text = info.value.render()
    assert text.startswith("stages[2]: ONNX Runtime Mobile cannot convert the model") and "MysteryOp" in text
    assert not list((tmp / "out").glob("*.ort"))          # nothing half-written


@pytest.mark.slow
def test_int8_chain_to_an_android_ort_target(tmp):
    recipe = fashion_recipe([{"type": "export"}, {"type": "quantize", "backend": "onnxruntime", "scheme": "s8s8"},
                             {"type": "compile", "target": "android-arm64-ort"}])
    recipe["data"]["eval"]["samples"] = 200
    result = compress.run(recipe, out=tmp / "runs")
    final = result.stages[-1]
    assert final["artifact"]["type"] == "OrtFormatModel" and final["runtime"] == "onnxruntime-mobile"
    assert final["artifact"]["files"] == ["model.ort", "model.required_operators_and_types.config"]
    assert final["details"]["ort_format"]["platform"] == "arm"
    assert final["details"]["ort_format"]["ops"]["QLinearConv"] >= 3              # INT8 kernels in the .ort
    assert final["artifact"]["precision"] == "int8"
    assert final["agreement"]["output"]["top1_agreement"] > 97.0
    assert "onnxruntime-mobile" in result.report["baselines"]                       # FP32 .ort on the same runtime
    assert any("not on the phone" in n for n in final["notes"])
    report_md = (result.run_dir / "report.md").read_text()
    assert "not on the phone" in report_md and "required_operators" in report_md


@pytest.mark.slow
def test_targets_lists_the_mobile_target_as_ready_here():
    targets = {t["name"]: t for t in json.loads(cli("targets", "--json").stdout)}
    assert targets["android-arm64-ort"]["artifact"] == "OrtFormatModel" and targets["android-arm64-ort"]["missing"] == []
    assert (ROOT / "recipes" / "mobile-android-ort.yaml").is_file()
