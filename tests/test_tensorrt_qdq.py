"""The TensorRT path that runs here: ModelOpt's ONNX PTQ on the CPU writes TensorRT-style QDQ, our rules
check accepts it, ONNX Runtime CPU emulates it (labelled so), `compile` for a TensorRT target checks it
and derives the engine profile, and `compress build` without TensorRT says where to run."""
from __future__ import annotations

import json
from importlib import metadata

import numpy as np
import onnx
import pytest

import compress
from compress.errors import InputError
from compress.tensorrt.rules import check_qdq

from conftest import ROOT, cli, fashion_recipe

pytestmark = pytest.mark.slow


def test_our_pins_survive_the_tensorrt_extra():
    """nvidia-modelopt without its [onnx] extra: onnx, onnxruntime (CPU) and torch stay ours."""
    assert metadata.version("nvidia-modelopt").startswith("0.47")
    assert metadata.version("onnx") == "1.23.2" and metadata.version("onnxruntime") == "1.32.0"
    assert metadata.version("torch").startswith("2.14.1")
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version("onnxruntime-gpu")


def _qdq_facts(path) -> tuple[int, set]:
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    zero_points = set()
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zp = onnx.numpy_helper.to_array(inits[node.input[2]])
            zero_points |= {(zp.dtype.name, int(v)) for v in np.atleast_1d(zp)}
    return sum(n.op_type == "QuantizeLinear" for n in model.graph.node), zero_points


@pytest.fixture(scope="module")
def fashion_trt(tmp_path_factory):
    """The residual-free Fashion CNN through export -> ModelOpt QDQ -> compile for a Jetson Orin Nano."""
    recipe = fashion_recipe([{"type": "export"}, {"type": "quantize", "backend": "tensorrt", "samples": 64},
                             {"type": "compile", "target": "jetson-orin-nano"}])
    recipe["data"]["eval"]["samples"] = 200
    return compress.run(recipe, out=tmp_path_factory.mktemp("runs"))


def test_modelopt_qdq_follows_tensorrt_rules_and_is_emulated_as_such(fashion_trt):
    final = fashion_trt.stages[-1]
    quantize = fashion_trt.stages[1]
    assert quantize["details"]["backend"] == "modelopt" and quantize["details"]["high_precision"] == "fp16"
    path = fashion_trt.run_dir / final["artifact"]["path"]
    count, zero_points = _qdq_facts(path)
    assert count > 5 and zero_points == {("int8", 0)}              # every Q/DQ int8 with zero-point 0
    assert check_qdq(onnx.load(str(path)), tensorrt=">=10.3,<10.4") == []
    checks = {row["check"].split(" (")[0]: row for row in final["details"]["tensorrt_checks"]}
    assert checks["onnx.checker"]["passed"] and checks["TensorRT QDQ rules"]["passed"]
    assert checks["polygraphy lint"]["passed"] is True
    assert final["runtime"] == "tensorrt-emulated" and final["artifact"]["type"] == "TensorRTQDQModel"
    assert final["agreement"]["output"]["top1_agreement"] >= 97.0    # emulated, on real images
    assert any("emulated (ONNX Runtime CPU), not the engine" in n for n in final["notes"])
    build = json.loads((path.parent / "build.json").read_text())
    assert build["profile"]["input"] == [[1, 1, 28, 28], [1, 1, 28, 28], [4, 1, 28, 28]]
    assert "--stronglyTyped" in build["trtexec"] and "--int8" not in build["trtexec"]
    report_md = (fashion_trt.run_dir / "report.md").read_text()
    assert "TRT~" not in report_md or "not the engine" in report_md


def test_residual_cnn_gets_one_dq_at_each_residual_add(tmp):
    """ModelOpt puts a DQ on one branch of a residual Add (so Conv+Add fuse in TensorRT); ours checks it."""
    (tmp / "res.py").write_text(
        "import torch\n"
        "class Res(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        torch.manual_seed(0)\n"
        "        self.stem = torch.nn.Conv2d(1, 8, 3, padding=1)\n"
        "        self.a = torch.nn.Conv2d(8, 8, 3, padding=1)\n"
        "        self.b = torch.nn.Conv2d(8, 8, 3, padding=1)\n"
        "        self.head = torch.nn.Linear(8, 10)\n"
        "    def forward(self, x):\n"
        "        x = torch.relu(self.stem(x))\n"
        "        x = torch.relu(x + self.b(torch.relu(self.a(x))))\n"
        "        return self.head(x.mean((2, 3)))\n")
    recipe = fashion_recipe([{"type": "export"}, {"type": "quantize", "backend": "tensorrt", "samples": 32}])
    recipe["model"] = {"source": "python", "factory": str(tmp / "res.py") + ":Res", "input": {"shape": [1, 1, 28, 28]}}
    recipe["data"]["eval"]["samples"] = 100
    result = compress.run(recipe, out=tmp / "runs")
    path = result.run_dir / result.stages[-1]["artifact"]["path"]
    model = onnx.load(str(path))
    producers = {o: n for n in model.graph.node for o in n.output}
    adds = [n for n in model.graph.node if n.op_type == "Add" and all(i in producers for i in n.input)]
    assert adds, "the residual Add is in the graph"
    for add in adds:
        kinds = sorted(producers[i].op_type for i in add.input)
        assert kinds.count("DequantizeLinear") <= 1, kinds
    assert check_qdq(model, tensorrt=">=10.3,<10.4") == []
    assert result.stages[-1]["agreement"]["output"]["cosine"] > 0.99


def test_an_ort_u8_qdq_onnx_given_to_a_tensorrt_target_is_exit_2_naming_the_node(tmp, fashion_onnx_u8):
    recipe = fashion_recipe([{"type": "compile", "target": "jetson-orin-nano"}])
    recipe["model"] = {"source": "onnx", "path": str(fashion_onnx_u8), "input": {"shape": [1, 1, 28, 28]}}
    with pytest.raises(InputError) as info:
        compress.run(recipe, out=tmp / "runs")
    text = info.value.render()
    assert "breaks TensorRT's rules" in text and "zero-point" in text and "node " in text
    assert not list((tmp / "runs").glob("*/stages/01-compile"))     # nothing half-written


@pytest.fixture(scope="module")
def fashion_onnx_u8(tmp_path_factory, fashion_fp32_onnx):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    _, inputs, fp32 = fashion_fp32_onnx
    folder = tmp_path_factory.mktemp("u8")

    class Reader:
        def __init__(self):
            self.batches = inputs.calibration.input_batches(32)

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(fp32), str(folder / "u8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return folder / "u8.onnx"


def test_backend_tensorrt_without_modelopt_is_exit_2_naming_the_extra(tmp, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "modelopt" else real(name, *a))
    recipe = fashion_recipe([{"type": "quantize", "backend": "tensorrt"}])
    with pytest.raises(InputError, match=r"compress\[tensorrt\]"):
        compress.run(recipe, out=tmp / "runs")


def test_build_without_tensorrt_says_what_to_install_and_where(fashion_trt):
    result = cli("build", fashion_trt.run_dir)
    assert result.returncode == 2, result.stderr
    text = " ".join(result.stderr.split())
    assert "TensorRT is not installed here" in text and "pip install tensorrt" in text
    assert "Traceback" not in result.stderr and not (fashion_trt.run_dir / "engines").exists()


def test_build_refuses_a_run_that_did_not_compile_for_tensorrt(tmp):
    result = compress.run(fashion_recipe([{"type": "export"}]), out=tmp / "runs")
    out = cli("build", result.run_dir)
    assert out.returncode == 2 and "takes a run that compiled for a TensorRT target" in " ".join(out.stderr.split())


def test_device_check_and_fp16_twin(tmp):
    """The device must match the target; the FP16 engine's source is the FP32 graph cast to FP16."""
    from compress.build import check_device, fp16_onnx
    from compress.targets import resolve_target

    nano = resolve_target("jetson-orin-nano", base_dir=ROOT, where="t")
    check_device(nano, {"tensorrt": "10.3.0", "compute_capability": "8.7"})
    with pytest.raises(InputError, match=r"needs TensorRT >=10\.3,<10\.4, this device has 10\.13\.2"):
        check_device(nano, {"tensorrt": "10.13.2", "compute_capability": "8.7"})
    with pytest.raises(InputError, match=r"compute capability 8\.7, this device.s is 9\.0"):
        check_device(nano, {"tensorrt": "10.3.0", "compute_capability": "9.0", "gpu_name": "H200"})
    helper = onnx.helper
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])],
                              [onnx.numpy_helper.from_array(np.ones((4, 2), np.float32), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp / "fp32.onnx")
    half = onnx.load(str(fp16_onnx(tmp / "fp32.onnx", tmp / "fp16.onnx")))
    assert half.graph.initializer[0].data_type == onnx.TensorProto.FLOAT16
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT     # I/O stay FP32
