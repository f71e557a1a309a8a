"""End-to-end runs on real runtimes (torch, ONNX Runtime, OpenVINO) with the shipped model and data."""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import onnx
import pytest

import compress
from compress.convert import torch_to_onnx
from compress.models import load_model
from compress.recipe import ModelConfig

from conftest import FACTORY, ROOT, WEIGHTS, cli, fashion_recipe, write_recipe

pytestmark = pytest.mark.slow   # every test runs a pipeline or the CLI


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = cli("run", "recipes/quickstart.yaml", "--out", out, "--json")
    return result, out


def test_quickstart_runs_and_passes_its_gates(quickstart):
    result, _ = quickstart
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)          # --json: stdout is the report and nothing else
    assert report["schema_version"] == 2 and report["passed"]
    assert [s["name"] for s in report["stages"]] == ["quantize", "compile"]
    ref = report["reference"]
    assert ref["primary"]["name"] == "top1" and ref["primary"]["value"] > 88.0   # a trained model on real data
    final = report["stages"][-1]
    assert final["artifact"]["precision"] == "int8" and final["runtime"] == "openvino"
    assert final["details"]["inference_precision"] == "f32"
    assert abs(final["primary"]["delta"]) < 1.0
    assert final["agreement"]["output"]["top1_agreement"] > 97.0
    assert report["baselines"]["openvino"]["settings"]["inference_precision"] == "f32"
    for key in ("p50_ms", "p90_ms", "p99_ms"):
        assert final["latency"][key] > 0
    assert final["latency"]["threads"] == 2 and final["latency"]["batch"] == 1
    assert report["machine"]["isa"] and report["versions"]["openvino"]
    assert {g["gate"] for g in report["gates"]} == {"max_accuracy_drop", "min_speedup", "max_size_mb"}


def test_quickstart_run_folder_is_complete_and_hashed(quickstart):
    _, out = quickstart
    (run_dir,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "done" and all(s["status"] == "done" for s in status["stages"])
    report = json.loads((run_dir / "report.json").read_text())
    for stage in report["stages"]:
        path = run_dir / stage["artifact"]["path"]
        assert path.suffix == ".xml" and path.with_suffix(".bin").is_file()
        digest = hashlib.sha256(path.read_bytes() + path.with_suffix(".bin").read_bytes()).hexdigest()
        assert digest == stage["artifact"]["sha256"]
    assert (run_dir / "recipe.yaml").is_file()
    md = (run_dir / "report.md").read_text()
    assert "| stage | artifact |" in md and "| compile | OpenVinoModel | openvino | int8 |" in md
    assert not list(run_dir.rglob(".*tmp*"))    # no temp leftovers


def test_inspect_prints_a_finished_run(quickstart):
    _, out = quickstart
    (run_dir,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    result = cli("inspect", run_dir, "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["name"] == "fashion-cnn-openvino-int8"
    assert "PASSED" in cli("inspect", run_dir).stdout


def test_bench_times_an_artifact(quickstart):
    _, out = quickstart
    (xml,) = list(out.glob("*/stages/02-compile/model.xml"))
    result = cli("bench", xml, "--runs", "5", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["runtime"] == "openvino" and data["latency"]["runs"] == 5 and data["settings"]["threads"] == 2


def test_gate_failure_exits_3_and_names_the_gate(tmp):
    recipe = fashion_recipe([{"type": "quantize", "backend": "openvino"}], gates={"min_speedup": 1000.0})
    result = cli("run", write_recipe(tmp, recipe), "--out", tmp / "runs", "--quiet")
    assert result.returncode == 3
    assert "min_speedup" in result.stderr and "required 1000.0x" in result.stderr
    (run_dir,) = [p for p in (tmp / "runs").iterdir() if not p.name.startswith(".")]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["passed"] is False and json.loads((run_dir / "run.json").read_text())["status"] == "done"


def test_onnxruntime_chain_through_the_python_api(tmp):
    recipe = fashion_recipe([{"type": "export"}, {"type": "quantize", "backend": "onnxruntime", "method": "entropy"},
                             {"type": "compile", "target": "x86-cpu-onnxruntime"}], gates={"max_accuracy_drop": 2.0})
    result = compress.run(recipe, out=tmp / "runs")
    assert result.passed, result.gates
    export, quant, comp = result.stages
    assert export["details"]["parity"]["max_abs_diff"] <= export["details"]["parity"]["allowed"]
    assert export["artifact"]["precision"] == "fp32" and export["agreement"]["output"]["top1_agreement"] == 100.0
    assert quant["details"]["format"] == "QDQ" and quant["details"]["quantize_ops"] > 0
    assert quant["details"]["scheme"] in ("u8s8", "u8s8_reduce_range", "s8s8") and quant["details"]["scheme_reason"]
    model = onnx.load(str(result.run_dir / quant["artifact"]["path"]))
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    assert comp["details"]["graph_optimization"] == "extended"
    meta = {p.key: p.value for p in onnx.load(str(result.run_dir / comp["artifact"]["path"])).metadata_props}
    assert json.loads(meta["compress"])["stage"] == "compile"   # provenance travels with the file
    assert "onnxruntime" in result.report["baselines"] and "torch" in result.report["baselines"]


def test_ort_scheme_is_chosen_by_measured_agreement_without_vnni(tmp, monkeypatch):
    import compress.pipeline as pipeline

    real = pipeline.machine_info
    monkeypatch.setattr(pipeline, "machine_info", lambda: {**real(), "vnni": False})
    recipe = fashion_recipe([{"type": "export"}, {"type": "quantize", "backend": "onnxruntime"}])
    result = compress.run(recipe, out=tmp / "runs")
    details = result.stages[-1]["details"]
    assert set(details["scheme_candidates"]) == {"u8s8", "u8s8_reduce_range", "s8s8"}
    best = max(details["scheme_candidates"].values(),
               key=lambda r: (round(r["top1_agreement"], 1), round(r["cosine"], 4)))
    assert details["scheme_candidates"][details["scheme"]] == best
    assert "lacks VNNI" in details["scheme_reason"]
    assert "ORT scheme" in (result.run_dir / "report.md").read_text()


def test_full_bias_correction_is_the_default_and_wins_back_what_int8_shifts_on_a_small_model(tmp):
    # The width-4 FashionCNN has 4-16 channels per layer: INT8 rounding shifts each layer's output
    # mean, and NNCF's fast per-layer estimate of the correction misses most of it.
    recipe = fashion_recipe([{"type": "quantize", "backend": "openvino"}])
    recipe["model"] = {"source": "python", "factory": FACTORY, "kwargs": {"width": 4},
                       "weights": str(ROOT / "calibration_data/fashion_cnn_w4.pt"), "input": {"shape": [1, 1, 28, 28]}}
    recipe["data"]["calibration"]["samples"] = 300
    recipe["data"]["eval"]["samples"] = 1000
    loss = {}
    for mode in ("full", "fast"):
        stages = [{"type": "quantize", "backend": "openvino"} | ({"bias_correction": mode} if mode == "fast" else {})]
        result = compress.run({**recipe, "name": f"bc-{mode}", "stages": stages}, out=tmp / "runs")
        assert result.stages[0]["details"]["bias_correction"] == mode
        loss[mode] = result.report["reference"]["primary"]["value"] - result.stages[0]["primary"]["value"]
    assert loss["full"] <= 1.0 and loss["fast"] >= loss["full"] + 3.0, loss


TINY_VIT = """
import torch
from torchvision.models.vision_transformer import VisionTransformer


def tiny_vit():
    torch.manual_seed(0)
    model = VisionTransformer(image_size=28, patch_size=7, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32)
    model.conv_proj = torch.nn.Conv2d(1, 16, kernel_size=7, stride=7)   # grayscale patches
    torch.nn.init.normal_(model.heads.head.weight, std=0.5)             # torchvision starts the head at zero
    return model
"""


def test_vision_transformer_converts_to_openvino_although_tracing_sanity_checks_reject_it(tmp):
    # torch.jit's trace check sees two traces of torchvision's ViT differ in value names only, which
    # made ov.convert_model fail; compress traces without that check instead.
    (tmp / "vit.py").write_text(TINY_VIT)
    recipe = fashion_recipe([{"type": "quantize", "backend": "openvino"}], metric={"primary": "top1_agreement"})
    recipe["model"] = {"source": "python", "factory": str(tmp / "vit.py") + ":tiny_vit",
                       "input": {"shape": [1, 1, 28, 28]}}
    result = compress.run(recipe, out=tmp / "runs")
    stage = result.stages[0]
    assert stage["runtime"] == "openvino" and stage["artifact"]["precision"] == "int8"
    assert stage["agreement"]["output"]["cosine"] > 0.9


@pytest.fixture(scope="module")
def fashion_onnx(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("onnx")
    artifact, spec = load_model(ModelConfig(source="python", factory=FACTORY, weights=WEIGHTS,
                                            input={"shape": [1, 1, 28, 28]}), ROOT)
    torch_to_onnx(artifact.module, spec, folder / "fashion.onnx")
    return folder / "fashion.onnx"


@pytest.mark.parametrize("stages, runtime", [
    ([{"type": "quantize", "backend": "onnxruntime"}, {"type": "compile", "target": "x86-cpu-onnxruntime"}],
     "onnxruntime"),
    ([{"type": "quantize", "backend": "openvino"}, {"type": "compile", "target": "x86-cpu-openvino"}], "openvino"),
])
def test_ptq_directly_on_an_onnx_file(tmp, fashion_onnx, stages, runtime):
    recipe = fashion_recipe(copy.deepcopy(stages), gates={"max_accuracy_drop": 2.0})
    recipe["model"] = {"source": "onnx", "path": str(fashion_onnx), "input": {"shape": [1, 1, 28, 28]}}
    result = compress.run(recipe, out=tmp / "runs")
    assert result.passed
    assert result.report["reference"]["runtime"] == "onnxruntime"
    assert result.stages[-1]["runtime"] == runtime and result.stages[-1]["artifact"]["precision"] == "int8"


def test_image_folder_eval_with_labels_from_subfolders(tmp):
    recipe = fashion_recipe([{"type": "quantize", "backend": "openvino"}])
    recipe["data"]["eval"] = {"path": str(ROOT / "calibration_data" / "fashion_png")}
    result = compress.run(recipe, out=tmp / "runs")
    ref = result.report["reference"]
    assert ref["samples"] == 300 and ref["primary"]["name"] == "top1" and ref["primary"]["value"] > 85.0


def test_label_free_agreement_mode(tmp):
    recipe = fashion_recipe([{"type": "export"}])
    recipe["data"]["eval"] = {"path": str(ROOT / "calibration_data" / "fashion_png"), "samples": 64}
    recipe["metric"] = {"primary": "cosine"}
    result = compress.run(recipe, out=tmp / "runs")
    stage = result.stages[0]
    assert stage["primary"]["name"] == "cosine" and stage["primary"]["value"] > 99.99
    assert set(stage["agreement"]["output"]) >= {"top1_agreement", "cosine", "max_abs_error"}


def test_validate_and_targets_commands():
    result = cli("validate", "recipes/fashion-onnxruntime-int8.yaml", "--json")
    assert result.returncode == 0 and [s["gives"] for s in json.loads(result.stdout)["stages"]] == [
        "OnnxModel", "OnnxModel", "OnnxModel"]
    targets = {t["name"]: t for t in json.loads(cli("targets", "--json").stdout)}
    assert {"x86-cpu-openvino", "x86-cpu-onnxruntime"} <= set(targets)
    assert targets["x86-cpu-openvino"]["missing"] == []


def test_ort_quantization_of_upsample_concat_model_leaves_cwd_clean(tmp, monkeypatch):
    """U-Net pattern (upsample, then concat with a skip) needs ORT's symbolic shape inference to
    merge dims; its temp files must not land in the user's working directory."""
    (tmp / "unet.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.down = torch.nn.Conv2d(1, 8, 3, stride=2, padding=1)\n"
        "        self.up = torch.nn.Upsample(scale_factor=2, mode='nearest')\n"
        "        self.skip = torch.nn.Conv2d(1, 8, 3, padding=1)\n"
        "        self.head = torch.nn.Conv2d(16, 4, 1)\n"
        "    def forward(self, x):\n"
        "        return self.head(torch.cat([self.up(torch.relu(self.down(x))), self.skip(x)], 1))\n")
    work = tmp / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    recipe = fashion_recipe([{"type": "export"}, {"type": "quantize", "backend": "onnxruntime", "samples": 32}])
    recipe["model"] = {"source": "python", "factory": str(tmp / "unet.py") + ":Net", "input": {"shape": [1, 1, 28, 28]}}
    import numpy as np

    with np.load(recipe["data"]["calibration"]["path"]) as f:
        np.savez(tmp / "images.npz", x=f["x"][:64])             # no labels: agreement only
    recipe["data"]["calibration"] = {"path": str(tmp / "images.npz")}
    recipe["data"]["eval"] = {"path": str(tmp / "images.npz")}
    result = compress.run(recipe, out=tmp / "runs")
    quant = result.stages[-1]
    assert quant["artifact"]["precision"] == "int8" and quant["details"]["quantize_ops"] > 0
    assert "top1_agreement" not in quant["agreement"]["output"]   # a [N, 4, 28, 28] map is not class scores
    assert list(work.iterdir()) == []


def test_relative_out_folder_with_ort_quantization(tmp):
    """The default `--out runs` is relative; stages that change directory must still find their files."""
    recipe = fashion_recipe([{"type": "export"}, {"type": "quantize", "backend": "onnxruntime", "samples": 32}])
    result = cli("run", write_recipe(tmp, recipe), "--out", "runs", "-q", cwd=tmp)
    assert result.returncode == 0, result.stderr
    assert list((tmp / "runs").glob("*/stages/02-quantize/model.onnx"))
