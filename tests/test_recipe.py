"""Schema: strict keys, discriminated stages, errors that name the file, YAML path, line and allowed values."""
from __future__ import annotations

from pathlib import Path

import pytest

import compress
from compress.errors import ChainError, RecipeError
from compress.recipe import load_recipe, parse_recipe

from conftest import ROOT, fashion_recipe


def _error(tmp: Path, text: str) -> str:
    path = tmp / "r.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    return str(info.value)


BASE = """name: t
model: {source: python, factory: m.py:F, input: {shape: [1, 1, 28, 28]}}
data:
  calibration: {path: x.npz}
stages:
"""


def test_unknown_key_names_yaml_path_and_line(tmp):
    msg = _error(tmp, BASE + "  - {type: quantize, backend: openvino}\n  - type: export\n    opsett: 17\n")
    assert "r.yaml:8" in msg and "stages[1].opsett" in msg and "unknown key" in msg


def test_unknown_stage_type_lists_allowed(tmp):
    msg = _error(tmp, BASE + "  - {type: quantise, backend: openvino}\n")
    assert "stages[0]" in msg and "'quantise'" in msg and "'quantize'" in msg and "'compile'" in msg


def test_bad_literal_lists_allowed_values(tmp):
    msg = _error(tmp, BASE + "  - {type: quantize, backend: onnxruntime, method: kl}\n")
    assert "stages[0].method" in msg and "minmax" in msg and "entropy" in msg


def test_backend_specific_option_is_refused(tmp):
    msg = _error(tmp, BASE + "  - {type: quantize, backend: openvino, method: entropy}\n")
    assert "entropy" in msg and "NNCF" in msg


def test_yaml_syntax_error_has_line(tmp):
    msg = _error(tmp, "name: t\nmodel: {source: python\nstages: [\n")
    assert "YAML syntax error" in msg and "r.yaml:" in msg


def test_missing_file():
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe("does/not/exist.yaml")


def test_top_level_must_be_mapping(tmp):
    assert "mapping" in _error(tmp, "- just\n- a list\n")


@pytest.mark.parametrize("model, fragment", [
    ({"source": "python", "input": {"shape": [1, 3]}}, "needs 'factory'"),
    ({"source": "onnx", "path": "m.onnx", "weights": "w.pt", "input": {"shape": [1, 3]}}, "'weights' does not apply"),
    ({"source": "python", "factory": "m.py", "input": {"shape": [1, 3]}}, "path/to/file.py:callable"),
    ({"source": "python", "factory": "m.py:F"}, "exactly one of 'input'"),
    ({"source": "python", "factory": "m.py:F", "input": {"shape": [0, 3]}}, "model.input.shape[0]"),
    ({"source": "python", "factory": "m.py:F", "inputs": [{"name": "a", "shape": [1, 3]},
                                                          {"name": "a", "shape": [1, 3]}]}, "unique"),
])
def test_model_section_errors(model, fragment):
    recipe = {"name": "t", "model": model, "data": {"calibration": {"path": "x.npz"}}, "stages": [{"type": "export"}]}
    with pytest.raises(RecipeError) as info:
        parse_recipe(recipe)
    assert fragment in str(info.value)


def test_duplicate_stage_names():
    recipe = fashion_recipe([{"type": "export", "name": "a"},
                             {"type": "compile", "target": "x86-cpu-onnxruntime", "name": "a"}])
    with pytest.raises(RecipeError, match="used twice"):
        parse_recipe(recipe)


def test_absurd_sample_count_is_refused():
    recipe = fashion_recipe([{"type": "export"}])
    recipe["data"]["calibration"]["samples"] = 10**9
    with pytest.raises(RecipeError, match=r"data\.calibration\.samples"):
        parse_recipe(recipe)


def test_chain_check_names_stage_and_fix():
    recipe = fashion_recipe([{"type": "quantize", "backend": "onnxruntime"}])
    with pytest.raises(ChainError) as info:
        compress.validate(recipe)
    assert "stages[0]" in str(info.value) and "OnnxModel" in str(info.value) and "export" in str(info.value)


def test_chain_openvino_artifact_cannot_go_to_onnxruntime_target():
    recipe = fashion_recipe([{"type": "quantize", "backend": "openvino"},
                             {"type": "compile", "target": "x86-cpu-onnxruntime"}])
    with pytest.raises(ChainError, match=r"stages\[1\].*OpenVinoModel"):
        compress.validate(recipe)


def test_unknown_target_suggests_closest():
    recipe = fashion_recipe([{"type": "compile", "target": "x86-cpu-openvno"}])
    with pytest.raises(RecipeError, match="Did you mean 'x86-cpu-openvino'"):
        compress.validate(recipe)


def test_valid_chains_describe_types():
    plan = compress.validate(fashion_recipe([{"type": "export"}, {"type": "quantize", "backend": "onnxruntime"},
                                             {"type": "compile", "target": "x86-cpu-onnxruntime"}]))
    assert [(s["takes"], s["gives"]) for s in plan.describe()] == [
        ("TorchModel", "OnnxModel"), ("OnnxModel", "OnnxModel"), ("OnnxModel", "OnnxModel")]
    assert plan.threads == 2 and plan.batch == 1


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    if path.name.startswith("sweep-"):   # a sweep file: its base and every point validate
        from compress.sweep import load_sweep

        sweep = load_sweep(path)
        points = sweep.points()
        assert points and all(p.error is None for p in points)
        for point in points:
            assert compress.validate(point.recipe, base_dir=sweep.base_dir).stages
        return
    plan = compress.validate(path)
    assert plan.stages


def test_import_does_not_load_backends():
    import subprocess
    import sys

    code = ("import sys, compress, compress.cli; "
            "print([m for m in ('openvino', 'onnxruntime', 'nncf', 'torch', 'tensorrt') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
