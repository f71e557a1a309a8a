"""prune: structured channels (Torch-Pruning), unstructured and 2:4 sparsity, budgets, fine-tuning,
sensitivity scan; pruned models chain into quantize/export/compile and survive the stage cache."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import compress
from compress.errors import ChainError, RecipeError
from compress.recipe import parse_recipe

from conftest import ROOT, cli, fashion_recipe, write_recipe


def _recipe(stages, **kw) -> dict:
    recipe = fashion_recipe(stages, **kw)
    recipe["data"]["eval"]["samples"] = 200
    recipe["latency"] = {"warmup": 1, "runs": 3}
    return recipe


@pytest.mark.slow
def test_channel_pruning_shrinks_the_model_and_chains_into_int8(tmp):
    recipe = _recipe([{"type": "prune", "ratio": 0.5, "ignore": ["classifier"]},
                      {"type": "quantize", "backend": "openvino", "samples": 64}])
    result = compress.run(recipe, out=tmp)
    prune, quant = result.stages
    d = prune["details"]
    assert d["macs"] < 0.35 * d["macs_before"] and d["params"] < 0.35 * d["params_before"]
    assert prune["macs"] == d["macs"] and prune["params"] == d["params"] and d["ignored"] == ["classifier"]
    folder = result.run_dir / "stages" / "01-prune"
    assert (folder / "model.pt").is_file() and (folder / "structure.json").is_file()
    state = torch.load(folder / "model.pt", weights_only=True)     # no pickled module
    assert state["features.0.0.weight"].shape[0] == 16                # 32 channels -> 16 (round_to 8)
    assert quant["artifact"]["precision"] == "int8" and quant["macs"] == d["macs"]
    again = compress.run(recipe, out=tmp)                             # the pruned torch model comes back from the cache
    assert again.stages[0]["cached"] == "cache"
    assert again.stages[0]["primary"]["value"] == pytest.approx(prune["primary"]["value"])


@pytest.mark.slow
def test_unstructured_and_2_4_sparsity_say_they_do_not_speed_up_dense_runtimes(tmp):
    result = compress.run(_recipe([{"type": "prune", "method": "unstructured", "ratio": 0.6, "scope": "global",
                                    "name": "sparse"}]), out=tmp)
    stage = result.stages[0]
    assert stage["details"]["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert any("no speed-up" in n for n in stage["notes"])
    result = compress.run(_recipe([{"type": "prune", "method": "2:4"}]), out=tmp)
    folder = result.run_dir / "stages" / "01-prune"
    state = torch.load(folder / "model.pt", weights_only=True)
    w = state["features.1.0.weight"].reshape(state["features.1.0.weight"].shape[0], -1).reshape(-1, 4)
    assert ((w == 0).sum(1) >= 2).all()
    assert "features.0.0" in result.stages[0]["details"]["skipped_not_multiple_of_4"]   # 1x3x3 = 9 inputs


@pytest.mark.slow
def test_macs_budget_is_met_iteratively(tmp):
    result = compress.run(_recipe([{"type": "prune", "target": {"macs": 0.5}, "steps": 8}]), out=tmp)
    budget = result.stages[0]["details"]["budget"]
    assert budget["met"] and budget["reached"]["macs_fraction"] <= 0.5
    assert result.passed


@pytest.mark.slow
def test_budget_that_cannot_be_met_exits_3_with_the_best_result(tmp):
    recipe = _recipe([{"type": "prune", "target": {"speedup": 500}, "steps": 2, "max_ratio": 0.5},
                      {"type": "export"}])
    result = cli("run", write_recipe(tmp, recipe), "--out", tmp / "runs", "-q")
    assert result.returncode == 3, result.stderr
    assert "prune_budget" in result.stderr and "best reached" in result.stderr
    (report,) = (tmp / "runs").glob("*/report.json")
    assert json.loads(report.read_text())["stages"][0]["details"]["budget"]["runtime"] == "onnxruntime"


@pytest.mark.slow
def test_finetune_with_distillation_and_sensitivity_scan(tmp):
    recipe = _recipe([{"type": "prune", "ratio": 0.5, "ignore": ["classifier"],
                       "sensitivity": {"ratios": [0.5], "samples": 64},
                       "finetune": {"epochs": 1, "lr": 0.002, "distill": {"temperature": 4, "alpha": 0.5},
                                    "eval_samples": 100}}])
    recipe["data"]["train"] = {"path": str(ROOT / "calibration_data" / "fashion_mnist_train.npz"), "samples": 512}
    result = compress.run(recipe, out=tmp)
    d = result.stages[0]["details"]
    assert len(d["finetune"]) == 1 and d["finetune"][0]["loss"] > 0
    layers = {row["layer"] for row in d["sensitivity"]["layers"]}
    assert "features.0.0" in layers and "classifier" not in layers
    assert d["finetune"][0]["metric"].startswith("top1 ") and d["sensitivity"]["metric"] == "top1"
    md = (result.run_dir / "report.md").read_text()
    assert "## Pruning sensitivity" in md and "fine-tuning epoch 1" in md
    assert (result.run_dir / "sensitivity-prune.svg").read_text().startswith("<svg")


@pytest.mark.slow
def test_segmentation_model_keeps_its_output_heads_and_the_scan_uses_the_recipe_metric(tmp):
    import yaml

    recipe = yaml.safe_load((ROOT / "recipes" / "segmentation-openvino.yaml").read_text())
    recipe["stages"] = [{"type": "prune", "ratio": 0.5, "sensitivity": {"ratios": [0.5], "samples": 64}},
                        {"type": "compile", "target": "x86-cpu-openvino"}]
    recipe["gates"] = {}
    recipe["data"]["calibration"]["samples"] = 32
    recipe["data"]["eval"]["samples"] = 64
    recipe["latency"] = {"warmup": 1, "runs": 3}
    result = compress.run(recipe, out=tmp, base_dir=ROOT / "recipes")
    prune = result.stages[0]
    # both heads (mask logits per class, class presence) keep their channels: the outputs keep their shapes
    assert prune["details"]["ignored"] == ["mask_head", "presence_head"]
    assert prune["details"]["params"] < 0.5 * prune["details"]["params_before"]
    assert result.stages[1]["runtime"] == "openvino" and "miou" in result.stages[1]["metrics"]
    sens = prune["details"]["sensitivity"]
    assert sens["metric"] == "miou"   # the recipe's own metric, on the same 64 scenes as the reference
    assert sens["baseline"] == pytest.approx(result.report["reference"]["primary"]["value"])
    assert {row["layer"] for row in sens["layers"]}.isdisjoint({"mask_head", "presence_head"})
    assert max(d for row in sens["layers"] for d in row["drops"].values() if d is not None) > 1.0


@pytest.mark.parametrize("stage, fragment", [
    ({"type": "prune", "ratio": 1.0}, "ratio"),
    ({"type": "prune", "ratio": -0.1}, "ratio"),
    ({"type": "prune"}, "exactly one of 'ratio' or 'target'"),
    ({"type": "prune", "method": "unstructured", "target": {"macs": 0.5}}, "apply to method 'channel'"),
])
def test_bad_prune_configs(stage, fragment):
    with pytest.raises(RecipeError, match=fragment):
        parse_recipe(_recipe([stage]))


def test_finetune_without_train_data_fails_before_compute():
    with pytest.raises(ChainError, match="training data"):
        compress.validate(_recipe([{"type": "prune", "ratio": 0.3, "finetune": {"epochs": 1}}]))


@pytest.mark.slow
def test_ignore_naming_a_missing_module_is_exit_2(tmp):
    recipe = _recipe([{"type": "prune", "ratio": 0.3, "ignore": ["clasifier"]}])
    result = cli("run", write_recipe(tmp, recipe), "--out", tmp / "runs")
    assert result.returncode == 2 and "clasifier" in result.stderr and "classifier" in result.stderr


RAW_PARAMETER_MODEL = """
import torch
import torch.nn.functional as F


class RawConv(torch.nn.Module):   # a custom layer with a raw weight, applied with F.conv2d
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(16, 16, 3, 3) * 0.1)

    def forward(self, x):
        return F.conv2d(x, self.weight, padding=1)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.custom = RawConv()
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.custom(self.stem(x).relu()).relu().mean((2, 3)))


class HardCoded(torch.nn.Module):   # the channel count is baked into a view
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 16, 3, stride=4)
        self.body = torch.nn.Conv2d(16, 32, 3)
        self.head = torch.nn.Linear(32 * 25, 10)

    def forward(self, x):
        return self.head(self.body(self.stem(x).relu()).relu().view(-1, 32 * 25))


class Deeper(Net):   # Net with a plain conv after the raw-parameter layer: what is left to prune
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.body(self.custom(self.stem(x).relu()).relu()).relu().mean((2, 3)))
"""


@pytest.mark.slow
@pytest.mark.parametrize("factory, named", [("Net", "layer 'custom' uses raw parameter(s) custom.weight"),
                                            ("HardCoded", "hard-coded channel count")])
def test_model_torch_pruning_cannot_trace_is_one_clear_error_naming_the_layer(tmp, factory, named):
    (tmp / "odd.py").write_text(RAW_PARAMETER_MODEL)
    recipe = _recipe([{"type": "prune", "ratio": 0.5}])
    recipe["model"] = {"source": "python", "factory": f"{tmp / 'odd.py'}:{factory}", "input": {"shape": [1, 1, 28, 28]}}
    proc = cli("run", write_recipe(tmp, recipe), "--out", tmp / "runs", "-q")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    text = " ".join(proc.stderr.split())
    assert "error: stages[0]:" in text and named in text and "ignore:" in text
    run_dir = next((tmp / "runs").iterdir())
    assert not (run_dir / "stages" / "01-prune").exists() and not (run_dir / "report.json").exists()


def _raw_parameter_recipe(tmp, factory: str, ignore: list[str], drop: float) -> dict:
    (tmp / "odd.py").write_text(RAW_PARAMETER_MODEL)
    recipe = _recipe([{"type": "prune", "ratio": 0.5, "ignore": ignore, "gates": {"max_accuracy_drop": drop}}])
    recipe["model"] = {"source": "python", "factory": f"{tmp / 'odd.py'}:{factory}", "input": {"shape": [1, 1, 28, 28]}}
    recipe["metric"] = {"primary": "cosine"}
    return recipe


def _reference_state(recipe: dict, tmp) -> dict:
    """The weights the run started from (the factory under the recipe's seed)."""
    from compress.models import load_model

    parsed = parse_recipe(recipe)
    return load_model(parsed.model, tmp, parsed.seed)[0].module.state_dict()


def _prune_with_suggested_ignore(tmp, model: str, drop: float):
    """Run the prune recipe with the ignore list the error suggests; the output head is kept by itself.
    Returns the run and the state_dicts before and after."""
    recipe = _raw_parameter_recipe(tmp, model, ["stem", "custom"], drop=drop)
    result = compress.run(recipe, out=tmp)
    stage = result.stages[0]
    assert stage["details"]["ignored"] == ["stem", "custom", "head"]
    after = torch.load(result.run_dir / stage["artifact"]["path"], weights_only=True)
    return result, _reference_state(recipe, tmp), after


@pytest.mark.slow
def test_the_suggested_ignore_list_makes_the_raw_parameter_model_prunable(tmp):
    # the error above says: add 'custom' and the layer that feeds it to `ignore:`. With that list,
    # the plain conv after them is pruned; the ignored layers and the output head (kept by itself) are not.
    result, before, after = _prune_with_suggested_ignore(tmp, "Deeper", drop=10.0)
    stage = result.stages[0]
    d = stage["details"]
    assert {k: tuple(v.shape) for k, v in after.items()} == {
        "stem.weight": (16, 1, 3, 3), "stem.bias": (16,), "custom.weight": (16, 16, 3, 3),
        "body.weight": (16, 16, 3, 3), "body.bias": (16,), "head.weight": (10, 16), "head.bias": (10,)}
    for name in ("stem.weight", "stem.bias", "custom.weight", "head.bias"):
        assert torch.equal(after[name], before[name]), name
    # body keeps 16 of its 32 filters unchanged, in order; the head keeps the matching input columns
    kept = [next(i for i in range(32) if torch.equal(row, before["body.weight"][i])) for row in after["body.weight"]]
    assert kept == sorted(kept)
    assert torch.equal(after["body.bias"], before["body.bias"][kept])
    assert torch.equal(after["head.weight"], before["head.weight"][:, kept])
    # params: stem 160 + custom 2304 + body 4640 -> 2320 + head 330 -> 170
    assert (d["params_before"], d["params_after"], d["params"], stage["params"]) == (7434, 4954, 4954, 4954)
    assert result.report["reference"]["params"] == 7434 and result.report["reference"]["macs"] == d["macs_before"]
    assert d["macs"] == d["macs_after"] == stage["macs"] < 0.55 * d["macs_before"]
    assert d["steps"] == [{"step": 1, "macs": d["macs"], "macs_fraction": d["macs"] / d["macs_before"], "params": 4954}]
    cosine = stage["primary"]
    assert cosine["name"] == "cosine" and 80.0 < cosine["value"] < 99.99   # pruned: close to, not equal to, FP32
    (gate,) = result.report["gates"]
    assert gate["gate"] == "prune.max_accuracy_drop" and gate["passed"]
    assert gate["value"] == pytest.approx(100.0 - cosine["value"], abs=1e-4)
    assert result.passed


@pytest.mark.slow
def test_a_model_with_every_prunable_layer_ignored_comes_out_unchanged(tmp):
    # Net has nothing left once the suggested list is ignored: the stage runs and changes nothing
    result, before, after = _prune_with_suggested_ignore(tmp, "Net", drop=0.0)
    stage = result.stages[0]
    d = stage["details"]
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert d["params"] == d["params_before"] == 2634
    assert d["macs"] == d["macs_before"] == result.report["reference"]["macs"]
    assert stage["primary"]["value"] == pytest.approx(100.0)
    (gate,) = result.report["gates"]
    assert gate["gate"] == "prune.max_accuracy_drop" and gate["passed"]
    assert gate["value"] == pytest.approx(0.0, abs=1e-4)
    assert result.passed


SMALL_ARCHITECTURES = """
import torch
from torchvision.models import shufflenet_v2_x0_5
from torchvision.models.convnext import CNBlockConfig, ConvNeXt


def convnext():   # each block scales its output by a raw (C, 1, 1) layer_scale parameter
    torch.manual_seed(0)
    return ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10)


def shufflenet():  # channel shuffle: a view that regroups channels
    torch.manual_seed(0)
    return shufflenet_v2_x0_5(num_classes=10)


def swin():        # shifted-window attention, which Torch-Pruning's graph build does not survive
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    return SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[2], num_heads=[1], window_size=[4, 4],
                           num_classes=10)
"""


def _architecture(tmp, factory, stages):
    (tmp / "arch.py").write_text(SMALL_ARCHITECTURES)
    recipe = _recipe(stages)
    recipe["model"] = {"source": "python", "factory": f"{tmp / 'arch.py'}:{factory}",
                       "input": {"shape": [1, 3, 32, 32]}}
    recipe["data"] = {"calibration": {"path": str(ROOT / "calibration_data/fashion_png"), "samples": 8},
                      "eval": {"path": str(ROOT / "calibration_data/fashion_png"), "samples": 8}, "batch_size": 8}
    recipe["metric"] = {"primary": "cosine"}
    return recipe


@pytest.mark.slow
def test_a_per_channel_raw_parameter_is_pruned_along_its_channels(tmp):
    import importlib.util

    from compress.torchio import load_module

    result = compress.run(_architecture(tmp, "convnext", [{"type": "prune", "ratio": 0.5}]), out=tmp)
    details = result.stages[0]["details"]
    assert details["params_after"] < details["params_before"] / 2
    spec = importlib.util.spec_from_file_location("arch", tmp / "arch.py")
    arch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(arch)
    pruned = load_module(arch.convnext(), result.run_dir / result.stages[0]["artifact"]["path"])
    blocks = [m for m in pruned.modules() if hasattr(m, "layer_scale")]
    assert len(blocks) == 2
    for block in blocks:   # each scale follows its block's (pruned) channels
        assert block.layer_scale.shape[0] == block.block[0].out_channels < 32
    assert pruned(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.slow
@pytest.mark.parametrize("factory, fragments", [
    # channel shuffle: Torch-Pruning's graph build fails on the view; `ignore:` cannot route around it
    ("shufflenet", ["cannot build its dependency graph", "view op after layer 'stage", "`ignore:` does not help"]),
    # shifted-window attention: the graph build would never finish; refused before it starts
    ("swin", ["cannot prune ShiftedWindowAttention", "method unstructured"]),
])
def test_architectures_torch_pruning_cannot_build_a_graph_for_are_one_clear_error(tmp, factory, fragments):
    proc = cli("run", write_recipe(tmp, _architecture(tmp, factory, [{"type": "prune", "ratio": 0.3}])),
               "--out", tmp / "runs", "-q")
    text = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, text
    assert all(fragment in text for fragment in fragments), text


def test_distillation_trains_every_output_of_a_multi_output_model():
    import copy

    from compress.recipe import FinetuneConfig
    from compress.stages import Progress
    from compress.train import finetune

    with np.load(ROOT / "calibration_data" / "fashion_mnist_calib.npz") as f:
        x = ((f["x"][:256].astype(np.float32) / 255 - 0.286) / 0.353)

    class Images:   # what finetune reads from a dataset, over real images, without labels
        has_labels = False

        def __len__(self):
            return len(x)

        def batches(self, batch_size, shuffle=None):
            for i in range(0, len(x), batch_size):
                yield {"input": x[i:i + batch_size]}, None

    class TwoHeads(torch.nn.Module):   # class scores and a dense map, as a segmenter returns
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.scores = torch.nn.Linear(4, 10)
            self.dense = torch.nn.Conv2d(4, 2, 1)

        def forward(self, x):
            h = self.body(x).relu()
            return {"scores": self.scores(h.mean((2, 3))), "dense": self.dense(h)}

    torch.manual_seed(0)
    teacher = TwoHeads().eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.dense.weight.add_(torch.randn_like(student.dense.weight))   # only the second head is off
    inputs = torch.from_numpy(x)

    def dense_error():
        with torch.no_grad():
            return float((student(inputs)["dense"] - teacher(inputs)["dense"]).pow(2).mean())

    before = dense_error()
    cfg = FinetuneConfig(epochs=3, lr=0.01, batch_size=32, distill={"alpha": 1.0})
    finetune(student, teacher, Images(), cfg, log=lambda m: None, evaluate=lambda m: "", where="stages[0]",
             threads=1, progress=lambda d, t: Progress())
    assert dense_error() < 0.2 * before


def test_bn_recalibration_replaces_stale_statistics_with_the_data_s():
    from compress.train import recalibrate_bn

    with np.load(ROOT / "calibration_data" / "fashion_mnist_calib.npz") as f:
        x = ((f["x"][:256].astype(np.float32) / 255 - 0.286) / 0.353)

    class Batches:   # the one method recalibrate_bn uses, over real images
        def batches(self, batch_size, shuffle=None):
            for i in range(0, len(x), batch_size):
                yield {"input": x[i:i + batch_size]}, None

    conv, bn = torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4)
    model = torch.nn.Sequential(conv, bn).eval()
    bn.running_mean.fill_(100.0)                    # stale, as after pruning
    assert recalibrate_bn(model, Batches(), batches=4, batch_size=64, seed=0) == 1
    with torch.no_grad():
        expected = conv(torch.from_numpy(x)).mean((0, 2, 3))
    torch.testing.assert_close(bn.running_mean, expected, atol=1e-4, rtol=1e-4)
    assert not model.training and bn.momentum == 0.1
