"""A non-classification model end to end on real data: the FashionSeg segmenter (two outputs)
quantized for OpenVINO and ONNX Runtime, with mIoU from torchmetrics after every stage; and the
bad inputs of a user metric (missing file, raising, non-dict, NaN, unknown primary)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

import compress
from compress.errors import InputError

from conftest import ROOT, cli, fashion_recipe, write_recipe

pytestmark = pytest.mark.slow   # every test runs a pipeline or the CLI

RECIPES = ROOT / "recipes"
SEG_DATA = ROOT / "calibration_data"


def _reduced(name: str) -> dict:
    """The shipped recipe, smaller: 96 calibration and 128 eval scenes, a few latency runs."""
    recipe = yaml.safe_load((RECIPES / name).read_text())
    recipe["latency"] = {"warmup": 1, "runs": 3}
    recipe["data"]["calibration"]["samples"] = 96
    recipe["data"]["eval"]["samples"] = 128
    for stage in recipe["stages"]:
        if stage["type"] == "quantize":
            stage["samples"] = 96
    return recipe


@pytest.fixture(scope="module", params=[("segmentation-openvino.yaml", "openvino", ["quantize", "compile"]),
                                        ("segmentation-onnxruntime.yaml", "onnxruntime",
                                         ["export", "quantize", "compile"])],
                ids=["openvino", "onnxruntime"])
def seg_run(request, tmp_path_factory):
    name, runtime, stages = request.param
    result = compress.run(_reduced(name), out=tmp_path_factory.mktemp("seg"), base_dir=RECIPES)
    return result, runtime, stages


def test_segmentation_recipe_passes_with_miou_after_every_stage(seg_run):
    result, runtime, stages = seg_run
    report = result.report
    assert result.passed, report["gates"]
    assert report["model"]["outputs"] == ["masks", "presence"]
    assert report["settings"]["eval_samples"] == 128
    ref = report["reference"]
    assert ref["primary"]["name"] == "miou" and ref["primary"]["value"] > 50.0   # a trained model on real scenes
    assert 90.0 < ref["metrics"]["pixel_acc"] <= 100.0
    assert [s["name"] for s in report["stages"]] == stages
    for stage in report["stages"]:
        assert set(stage["metrics"]) >= {"miou", "pixel_acc"}
        assert stage["primary"]["name"] == "miou"
        assert abs(stage["primary"]["delta"]) < 2.0, stage["name"]
        assert set(stage["agreement"]) == {"masks", "presence"}
        assert stage["agreement"]["masks"]["cosine"] > 0.98
    for baseline in report["baselines"].values():
        assert "miou" in baseline["metrics"]
    final = report["stages"][-1]
    assert final["runtime"] == runtime and final["artifact"]["precision"] == "int8"
    assert report["final_artifact"]["precision"] == "int8"
    assert report["gates"][0]["gate"] == "max_accuracy_drop" and report["gates"][0]["passed"]
    md = (result.run_dir / "report.md").read_text()
    assert md.count("miou") >= len(stages)


def test_segmentation_metric_matches_torch_reference(seg_run):
    """The torch FP32 figure equals torchmetrics run directly on the model's own predictions."""
    import torch
    from torchmetrics.classification import MulticlassJaccardIndex

    result, _, _ = seg_run
    import importlib.util

    spec = importlib.util.spec_from_file_location("fashion_seg_model", RECIPES / "models" / "fashion_seg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.FashionSeg().eval()
    model.load_state_dict(torch.load(SEG_DATA / "fashion_seg.pt", weights_only=True))
    with np.load(SEG_DATA / "fashion_seg_eval.npz") as f:
        x, masks = f["x"][:128], f["masks"][:128]
    with torch.inference_mode():
        pred = model((torch.from_numpy(x).float() / 255 - 0.2860) / 0.3530)["masks"].argmax(1)
    miou = MulticlassJaccardIndex(num_classes=11, average="macro")(pred, torch.from_numpy(masks).long())
    assert result.report["reference"]["metrics"]["miou"] == pytest.approx(100 * float(miou), abs=1e-3)


# ---------------------------------------------------------------- bad user metrics
def _metric_recipe(tmp: Path, body: str, primary: str | None = None, function: str = "metric.py:score") -> dict:
    (tmp / "metric.py").write_text(body)
    recipe = fashion_recipe([{"type": "quantize", "backend": "openvino"}])
    recipe["data"]["eval"]["samples"] = 64
    recipe["data"]["calibration"]["samples"] = 32
    recipe["metric"] = {"function": str(tmp / function.split(":")[0]) + ":" + function.split(":")[1]}
    if primary is not None:
        recipe["metric"]["primary"] = primary
    return recipe


def test_missing_metric_file_is_exit_2_before_any_run_folder(tmp):
    recipe = fashion_recipe([{"type": "quantize", "backend": "openvino"}])
    recipe["metric"] = {"function": "no_such_metric.py:MeanIoU", "primary": "miou"}
    path = write_recipe(tmp, recipe)
    result = cli("run", path, "--out", tmp / "runs")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "metric.function" in result.stderr and "no_such_metric.py" in result.stderr
    assert not (tmp / "runs").exists() or not any((tmp / "runs").iterdir())


def test_metric_that_raises_is_an_input_error_naming_it(tmp):
    recipe = _metric_recipe(tmp, "def score(outputs, targets):\n    raise ValueError('boom')\n")
    with pytest.raises(InputError) as info:
        compress.run(recipe, out=tmp / "runs")
    assert "metric.py:score" in str(info.value) and "ValueError: boom" in str(info.value)
    assert info.value.where == "metric.function"


def test_streaming_metric_that_raises_in_update_names_it(tmp):
    body = ("class Score:\n    def update(self, outputs, targets):\n        raise RuntimeError('bad batch')\n"
            "    def compute(self):\n        return {'x': 1.0}\n")
    recipe = _metric_recipe(tmp, body, function="metric.py:Score")
    with pytest.raises(InputError, match=r"metric\.py:Score raised .*RuntimeError: bad batch"):
        compress.run(recipe, out=tmp / "runs")


@pytest.mark.parametrize("returned, message", [
    ("[1.0, 2.0]", "returned list"),
    ("{'score': float('nan')}", "must be finite"),
    ("{'score': 'high'}", "must be numbers"),
    ("{}", "non-empty dict"),
])
def test_metric_returning_a_bad_value_is_an_input_error(tmp, returned, message):
    recipe = _metric_recipe(tmp, f"def score(outputs, targets):\n    return {returned}\n")
    with pytest.raises(InputError, match=message):
        compress.run(recipe, out=tmp / "runs")


def test_primary_not_among_the_metric_names(tmp):
    recipe = _metric_recipe(tmp, "def score(outputs, targets):\n    return {'score': 1.0}\n", primary="miou")
    with pytest.raises(InputError) as info:
        compress.run(recipe, out=tmp / "runs")
    assert info.value.where == "metric.primary" and "'miou'" in str(info.value) and "score" in str(info.value)


def test_segmentation_metric_rejects_a_missing_output_clearly(tmp):
    """The shipped MeanIoU names the output it needs when a model does not give it."""
    recipe = _reduced("segmentation-openvino.yaml")
    recipe["metric"]["kwargs"] = {"num_classes": 11, "output": "segmentation"}
    with pytest.raises(InputError, match=r"MeanIoU raised .*no output named 'segmentation'"):
        compress.run(recipe, out=tmp / "runs", base_dir=RECIPES)
