"""qat: NNCF fake-quant + fine-tuning on data.train, exported to OpenVINO IR or ONNX QDQ; the PTQ
starting point is validated too, so the report shows FP32 -> PTQ -> QAT. Real training, real runtimes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import compress
from compress.errors import ChainError, RecipeError
from compress.recipe import parse_recipe

from conftest import DATA, ROOT, cli, fashion_recipe, write_recipe

SMALL_CNN = {"source": "python", "factory": str(ROOT / "recipes/models/fashion_cnn.py") + ":FashionCNN",
             "kwargs": {"width": 4}, "weights": str(DATA / "fashion_cnn_w4.pt"), "input": {"shape": [1, 1, 28, 28]}}
TRAIN = str(DATA / "fashion_mnist_train.npz")
FRAGILE = """
import torch


class Fragile(torch.nn.Module):
    # trains normally for 10 steps, then its training-mode forward overflows, as a diverging run would
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, stride=2)
        self.fc = torch.nn.Linear(8, 10)
        self.steps = 0

    def forward(self, x):
        y = self.conv(x).relu().mean((2, 3))
        if self.training:
            self.steps += 1
            if self.steps > 10:
                y = y * float("inf")
        return self.fc(y)
"""


def _recipe(stages, train_samples=4000, **kw) -> dict:
    recipe = fashion_recipe(stages, model=dict(SMALL_CNN), **kw)
    recipe["data"]["calibration"]["samples"] = 300
    recipe["data"]["eval"]["samples"] = 1000
    recipe["data"]["train"] = {"path": TRAIN, "samples": train_samples}
    recipe["latency"] = {"warmup": 1, "runs": 3}
    return recipe


@pytest.mark.slow
def test_qat_recovers_at_least_half_of_what_ptq_loses_on_openvino(tmp):
    result = compress.run(_recipe([{"type": "qat", "backend": "openvino", "finetune": {"epochs": 1}}]), out=tmp)
    stage = result.stages[0]
    fp32 = result.report["reference"]["primary"]["value"]
    ptq = stage["details"]["checkpoints"]["PTQ start"]
    assert stage["runtime"] == ptq["runtime"] == "openvino"
    assert stage["artifact"]["precision"] == "int8" and stage["details"]["quantize_ops"] > 0
    assert stage["details"]["folded_batchnorm"] == 5
    from compress import nncf_kernels  # a compiler here (or kernels built by `make install`): NNCF's C++ kernels
    cpp = nncf_kernels.missing_tool() is None or nncf_kernels.is_built()
    assert stage["details"]["fake_quant_kernels"].startswith("nncf C++" if cpp else "pure torch")
    ptq_loss = fp32 - ptq["primary"]["value"]
    qat_loss = fp32 - stage["primary"]["value"]
    assert ptq_loss > 1.0, "the small CNN is the case where PTQ loses more than a point"
    assert qat_loss <= ptq_loss / 2, (fp32, ptq["primary"]["value"], stage["primary"]["value"])
    folder = result.run_dir / "stages" / "01-qat"
    assert (folder / "model.xml").is_file() and (folder / "ptq" / "model.xml").is_file()
    md = (result.run_dir / "report.md").read_text()
    assert "| qat: PTQ start | OpenVinoModel | openvino | int8 |" in md
    assert len(stage["details"]["finetune"]) == 1


@pytest.mark.slow
def test_qat_for_onnxruntime_writes_qdq_that_runs_as_int8(tmp):
    import onnx
    import onnxruntime as ort

    recipe = _recipe([{"type": "qat", "backend": "onnxruntime", "freeze_quantizers_after": 10,
                       "finetune": {"epochs": 1, "distill": {"temperature": 2, "alpha": 0.5}}},
                      {"type": "compile", "target": "x86-cpu-onnxruntime"}], train_samples=1000)
    result = compress.run(recipe, out=tmp)
    qat, compiled = result.stages
    path = result.run_dir / qat["artifact"]["path"]
    graph = onnx.load(str(path)).graph
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= {n.op_type for n in graph.node}
    producers = {o: n.op_type for n in graph.node for o in n.output}
    first = next(n for n in graph.node if n.op_type == "Conv")
    assert producers.get(first.input[0]) == "DequantizeLinear"     # the model input is quantized too
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    fused = {n.op_type for n in onnx.load(str(tmp / "optimized.onnx")).graph.node}
    assert "QLinearConv" in fused                  # ORT runs the QDQ convolutions as INT8 kernels
    assert compiled["artifact"]["precision"] == "int8"
    ptq = qat["details"]["checkpoints"]["PTQ start"]["primary"]["value"]
    assert compiled["primary"]["value"] > ptq + 1.0, (ptq, compiled["primary"]["value"])   # training paid off


@pytest.mark.slow
def test_qat_without_train_data_fails_before_any_compute(tmp):
    recipe = _recipe([{"type": "qat", "backend": "openvino"}])
    del recipe["data"]["train"]
    with pytest.raises(ChainError, match=r"data\.train"):
        compress.validate(recipe)
    proc = cli("validate", write_recipe(tmp, recipe))
    assert proc.returncode == 2 and "stages[0]" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_model_with_nothing_to_quantize_exits_3_with_the_reason(tmp, backend):
    (tmp / "plain.py").write_text(
        "import torch\n"
        "def make():\n"
        "    return torch.nn.Sequential(torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Softmax(dim=1))\n")
    recipe = _recipe([{"type": "qat", "backend": backend}], train_samples=200)
    recipe["model"] = {"source": "python", "factory": str(tmp / "plain.py") + ":make",
                       "input": {"shape": [1, 1, 28, 28]}}
    recipe["metric"] = {"primary": "cosine"}
    proc = cli("run", write_recipe(tmp, recipe), "--out", tmp / "runs")
    assert proc.returncode == 3, proc.stderr
    assert "gate quantized" in proc.stdout and "no layer to quantize" in " ".join(proc.stdout.split())


@pytest.mark.slow
def test_nan_loss_stops_keeps_the_last_good_checkpoint_and_says_where(tmp):
    (tmp / "fragile.py").write_text(FRAGILE)
    recipe = _recipe([{"type": "qat", "backend": "openvino", "finetune": {"epochs": 3, "batch_size": 64}}],
                     train_samples=512)          # 8 steps per epoch: epoch 1 is good, epoch 2 diverges
    recipe["model"] = {"source": "python", "factory": str(tmp / "fragile.py") + ":Fragile",
                       "input": {"shape": [1, 1, 28, 28]}}
    proc = cli("run", write_recipe(tmp, recipe), "--out", tmp / "runs")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "stages[0].finetune.lr" in proc.stderr
    assert "training loss became nan at epoch 2, step 3" in proc.stderr and "after epoch 1" in proc.stderr
    run_dir = next((tmp / "runs").iterdir())
    kept = run_dir / "checkpoints" / "01-qat-epoch1" / "model.xml"
    assert kept.is_file() and str(kept) in " ".join(proc.stderr.split())
    assert not (run_dir / "stages" / "01-qat").exists() and not (run_dir / "report.json").exists()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    from compress.artifacts import OpenVinoModel
    from compress.runtimes import open_session

    out = open_session(OpenVinoModel(path=kept), threads=1).run({"input": np.zeros((1, 1, 28, 28), np.float32)})
    assert out[0].shape == (1, 10)                     # the kept checkpoint is a working model


def test_fold_batchnorm_keeps_outputs_and_skips_shared_convs():
    from compress.stages.qat import fold_batchnorm
    from recipes.models.fashion_cnn import FashionCNN

    model = FashionCNN(width=4)
    model.load_state_dict(torch.load(DATA / "fashion_cnn_w4.pt", weights_only=True))
    model.eval()
    x = torch.randn(4, 1, 28, 28)
    before = model(x)
    assert len(fold_batchnorm(model)) == 5
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(model(x), before, atol=1e-4, rtol=1e-4)

    class Shared(torch.nn.Module):   # the conv output feeds the BN and a skip: folding would change the skip
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    assert fold_batchnorm(Shared().eval()) == []


@pytest.mark.parametrize("stage, fragment", [
    ({"type": "qat", "backend": "openvino", "freeze_bn_after": 10}, "fold_bn: false"),
    ({"type": "qat", "backend": "onnxruntime", "preset": "mixed"}, "preset"),
    ({"type": "qat", "backend": "executorch"}, "backend"),
    ({"type": "qat", "backend": "tensorrt", "preset": "mixed"}, "preset"),
    ({"type": "qat", "backend": "openvino", "finetune": {"lr": 0}}, "finetune.lr"),
])
def test_bad_qat_configs(stage, fragment):
    with pytest.raises(RecipeError, match=fragment):
        parse_recipe(_recipe([stage]))


@pytest.mark.parametrize("stages, fragment", [
    ([{"type": "export"}, {"type": "qat", "backend": "onnxruntime"}], "takes TorchModel"),
    ([{"type": "quantize", "backend": "openvino"}, {"type": "qat", "backend": "openvino"}], "already quantized"),
])
def test_qat_chain_errors(stages, fragment):
    with pytest.raises(ChainError, match=fragment):
        compress.validate(_recipe(stages))


def test_freezing_schedules_stop_bn_statistics_and_quantizer_ranges():
    import nncf
    from nncf.torch.quantization.layers import BaseQuantizer

    from compress.recipe import QatConfig
    from compress.stages.qat import _wrapped, freezer

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 26 * 26, 10)).eval()
    qmodel = nncf.quantize(_wrapped(model), nncf.Dataset([torch.randn(1, 1, 28, 28) for _ in range(4)]), subset_size=4)
    cfg = QatConfig(type="qat", backend="openvino", fold_bn=False, freeze_bn_after=3, freeze_quantizers_after=5)
    on_step, logged = freezer(cfg, qmodel, print), []
    quant_params = [p for m in qmodel.modules() if isinstance(m, BaseQuantizer)
                    for p in m.parameters() if p.requires_grad]
    bn = next(m for m in qmodel.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert quant_params
    qmodel.train()
    for step in range(7):
        on_step(step)
        logged.append((bn.training, any(p.requires_grad for p in quant_params)))
    assert logged == [(True, True)] * 3 + [(False, True)] * 2 + [(False, False)] * 2


@pytest.mark.slow
def test_qat_on_a_plain_sequential_with_unfolded_bn_and_an_ignored_head(tmp):
    (tmp / "seq.py").write_text(
        "import torch\n"
        "def make():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, stride=2), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),\n"
        "                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))\n")
    recipe = _recipe([{"type": "qat", "backend": "onnxruntime", "fold_bn": False, "freeze_bn_after": 2,
                       "ignore": ["5"], "finetune": {"epochs": 1, "distill": {"alpha": 1.0}}}], train_samples=256)
    recipe["model"] = {"source": "python", "factory": str(tmp / "seq.py") + ":make", "input": {"shape": [1, 1, 28, 28]}}
    result = compress.run(recipe, out=tmp)
    stage = result.stages[0]
    assert stage["details"]["folded_batchnorm"] == 0 and stage["artifact"]["precision"] == "int8"
    import onnx

    graph = onnx.load(str(result.run_dir / stage["artifact"]["path"])).graph
    gemm = next(n for n in graph.node if n.op_type == "Gemm")
    producers = {o: n.op_type for n in graph.node for o in n.output}
    assert producers.get(gemm.input[1]) != "DequantizeLinear"     # the ignored head keeps float weights
    conv = next(n for n in graph.node if n.op_type == "Conv")
    assert producers.get(conv.input[0]) == producers.get(conv.input[1]) == "DequantizeLinear"   # input and weight INT8


@pytest.mark.slow
def test_other_training_data_is_not_served_from_the_stage_cache(tmp):
    recipe = _recipe([{"type": "qat", "backend": "onnxruntime"}], train_samples=128)
    first = compress.run(recipe, out=tmp)
    recipe["data"]["train"]["samples"] = 192
    second = compress.run(recipe, out=tmp)
    assert first.stages[0]["cached"] is None and second.stages[0]["cached"] is None
    third = compress.run(recipe, out=tmp).stages[0]
    assert third["cached"] == "cache"
    ptq_first = second.stages[0]["details"]["checkpoints"]["PTQ start"]
    ptq_again = third["details"]["checkpoints"]["PTQ start"]
    assert ptq_again["latency"]["p50_ms"] != ptq_first["latency"]["p50_ms"]           # measured again, not copied
    assert ptq_again["primary"]["value"] == ptq_first["primary"]["value"]             # same artifact, same metric


@pytest.mark.slow
def test_a_pruned_model_goes_through_qat_and_keeps_its_smaller_layers(tmp):
    import onnx
    from onnx import numpy_helper

    recipe = fashion_recipe([{"type": "prune", "ratio": 0.5},
                             {"type": "qat", "backend": "onnxruntime",
                              "finetune": {"epochs": 1, "lr": 0.001,
                                           "distill": {"temperature": 4, "alpha": 1.0}}}])
    recipe["data"]["train"] = {"path": TRAIN, "samples": 2048}
    recipe["latency"] = {"warmup": 1, "runs": 3}
    result = compress.run(recipe, out=tmp)
    prune, qat = result.stages
    assert qat["artifact"]["precision"] == "int8" and qat["macs"] == prune["macs"]
    graph = onnx.load(str(result.run_dir / qat["artifact"]["path"])).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    quantized = [weights[n.input[0]] for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in weights]
    out_channels = sorted({w.shape[0] for w in quantized if w.ndim == 4})
    assert out_channels == [16, 32, 64]               # 32/64/128 channels pruned by half, BN folded
    ptq = qat["details"]["checkpoints"]["PTQ start"]["primary"]["value"]
    assert qat["primary"]["value"] > ptq + 5, (prune["primary"]["value"], ptq, qat["primary"]["value"])


@pytest.mark.slow
def test_qat_for_tensorrt_writes_int8_qdq_with_zero_points_tensorrt_accepts(tmp):
    """NNCF makes post-ReLU activations uint8 by default; TensorRT takes int8 only, so backend tensorrt
    forces signed activations and the file passes TensorRT's rules before a Jetson target takes it."""
    import onnx

    from compress.tensorrt.rules import check_qdq

    recipe = _recipe([{"type": "qat", "backend": "tensorrt", "finetune": {"epochs": 1}},
                      {"type": "compile", "target": "jetson-orin-nano"}], train_samples=1000)
    result = compress.run(recipe, out=tmp)
    qat, compiled = result.stages
    assert qat["artifact"]["type"] == compiled["artifact"]["type"] == "TensorRTQDQModel"
    model = onnx.load(str(result.run_dir / compiled["artifact"]["path"]))
    inits = {i.name: i for i in model.graph.initializer}
    zero_points = {onnx.numpy_helper.to_array(inits[n.input[2]]).dtype.name for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits}
    assert zero_points == {"int8"} and check_qdq(model, tensorrt=">=10.3,<10.4") == []
    assert all(row["passed"] for row in qat["details"]["tensorrt_checks"])
    ptq = qat["details"]["checkpoints"]["PTQ start"]["primary"]["value"]
    assert qat["details"]["signed_activations"] > 0 and compiled["runtime"] == "tensorrt-emulated"
    # int8-only activations halve the levels of the post-ReLU ranges; one short epoch buys part of it back
    assert compiled["primary"]["value"] >= ptq and compiled["primary"]["delta"] > -5.0, (ptq, compiled["primary"])
