"""Property-based fuzzing of the recipe loader: whatever the input, a Recipe or a RecipeError, nothing else.

Random YAML-able structures, mutations of valid recipes (keys dropped, values replaced by random types,
unknown keys inserted) and random text go through `parse_recipe`, `load_recipe` and `compress.validate`.
Deterministic (derandomize, no example database) and fast.
"""
from __future__ import annotations

import copy
import datetime
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import compress
from compress.errors import InputError, RecipeError
from compress.recipe import Recipe, load_recipe, parse_recipe

from conftest import ROOT

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ---------------------------------------------------------------- valid starting points
BASES = [
    {   # quickstart-like: torch model, NNCF, OpenVINO
        "name": "fuzz-openvino", "seed": 0,
        "model": {"source": "python", "factory": "models/fashion_cnn.py:FashionCNN", "kwargs": {"num_classes": 10},
                  "weights": "../calibration_data/fashion_cnn.pt",
                  "input": {"name": "input", "shape": [1, 1, 28, 28], "dtype": "float32"}},
        "data": {"calibration": {"path": "../calibration_data/fashion_mnist_calib.npz", "samples": 300},
                 "eval": {"path": "../calibration_data/fashion_mnist_eval.npz"},
                 "transform": {"mean": [0.286], "std": [0.353]}, "batch_size": 64},
        "metric": {"primary": "top1"},
        "stages": [{"type": "quantize", "backend": "openvino", "method": "minmax", "name": "q"},
                   {"type": "compile", "target": "x86-cpu-openvino", "inference_precision": "f32"}],
        "gates": {"max_accuracy_drop": 1.0, "min_speedup": 1.2, "max_size_mb": 1.0},
        "latency": {"threads": 2, "batch": 1, "warmup": 10, "runs": 50},
    },
    {   # ONNX Runtime chain, two inputs, image-folder transform keys
        "name": "fuzz-ort",
        "model": {"source": "torchvision", "name": "resnet18",
                  "inputs": [{"name": "a", "shape": [2, 3, 224, 224]},
                             {"name": "b", "shape": [2, 4], "dtype": "int64"}],
                  "outputs": ["logits"]},
        "data": {"calibration": {"path": "images/", "samples": 10},
                 "transform": {"resize": 256, "center_crop": 224, "mean": [0.485, 0.456, 0.406],
                               "std": [0.229, 0.224, 0.225]}},
        "stages": [{"type": "export", "opset": 17, "parity_atol": 0.001},
                   {"type": "quantize", "backend": "onnxruntime", "scheme": "s8s8", "per_channel": False,
                    "ignore": ["/fc/Gemm"]},
                   {"type": "compile", "target": "x86-cpu-onnxruntime"}],
    },
    {   # an .onnx model, Python data and a user metric
        "name": "fuzz-onnx",
        "model": {"source": "onnx", "path": "model.onnx", "input": {"shape": [1, 8]}},
        "data": {"calibration": {"factory": "data.py:batches", "kwargs": {"n": 3}}},
        "metric": {"function": "metric.py:score", "primary": "f1", "higher_is_better": False, "kwargs": {"k": 1}},
        "stages": [{"type": "compile", "target": "x86-cpu-openvino"}],
    },
]

# ---------------------------------------------------------------- strategies
INTERESTING = [None, True, False, 0, -1, 1, 2**31, 2**63, 10**30, -10**30, 0.5, -0.0, math.nan, math.inf, -math.inf,
               "", " ", "x" * 2000, "\x00", "../" * 50, "~nobody/x.yaml", "a.yaml", "\x00.yaml", "x" * 300 + ".yaml",
               "../calibration_data/fashion_cnn.pt.yaml", "../calibration_data/fashion_mnist_calib.npz", "recipes.yaml",
               "type", "quantize", "[]", "{}",
               [], {}, [None], {"": None}, {"type": None}, datetime.date(2020, 1, 1), b"\x00\xff"]
scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
           | st.sampled_from(INTERESTING) | st.dates())
keys = (st.text(max_size=12) | st.integers() | st.none() | st.booleans() | st.floats(allow_nan=False)
        | st.sampled_from(["name", "type", "stages", "model", "data", "source", "path", "shape", "input", "target"]))
structures = st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                          | st.dictionaries(keys, children, max_size=4), max_leaves=25)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from _paths(value, (*prefix, i))


@st.composite
def mutated_recipes(draw):
    """A valid recipe after 1-4 mutations at random places (the root included)."""
    recipe = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(list(_paths(recipe))))
        action = draw(st.sampled_from(["drop", "replace", "interesting", "insert", "insert"]))
        if not path:
            if action in ("replace", "interesting"):
                recipe = draw(structures if action == "replace" else st.sampled_from(INTERESTING))
            continue
        parent = recipe
        for part in path[:-1]:
            parent = parent[part]
        node, last = parent[path[-1]], path[-1]
        if action == "drop":
            del parent[last]
        elif action == "replace":
            parent[last] = draw(structures)
        elif action == "interesting":
            parent[last] = copy.deepcopy(draw(st.sampled_from(INTERESTING)))
        elif isinstance(node, dict):
            node[draw(keys)] = draw(structures)
        elif isinstance(node, list):
            node.insert(draw(st.integers(0, len(node))), draw(structures))
        else:
            parent[last] = draw(structures)
    return recipe


TARGETS = ["x86-cpu-openvino", "x86-cpu-onnxruntime", "../targets/x86-cpu-openvino.yaml", "no-such-target",
           "missing.yaml", "\x00.yaml", "x" * 300 + ".yaml", "/dev/null.yaml", "../recipes", "quickstart.yaml"]
STAGES = ([{"type": "quantize", "backend": "openvino"}, {"type": "quantize", "backend": "onnxruntime"},
           {"type": "quantize", "backend": "onnxruntime", "scheme": "u8s8"}, {"type": "export"},
           {"type": "export", "opset": 13}, {"type": "prune", "ratio": 0.5}, {"type": "distill"}]
          + [{"type": "compile", "target": t} for t in TARGETS])


@st.composite
def chains(draw):
    """Mostly valid recipes with a random chain of 1-5 stages: exercises plan() (targets, artifact chain)."""
    recipe = copy.deepcopy(draw(st.sampled_from(BASES[:1] + BASES[2:])))
    stages = draw(st.lists(st.sampled_from(STAGES), min_size=1, max_size=5))
    recipe["stages"] = [dict(s, name=f"s{i}") if draw(st.booleans()) else dict(s) for i, s in enumerate(stages)]
    if draw(st.integers(0, 4)) == 0:   # now and then a duplicate name or a wrong-type name
        recipe["stages"][0]["name"] = draw(st.sampled_from(["s1", "", "bad name", 3, None]))
    return recipe


def _edit(text: str, data) -> str:
    """Character-level damage to YAML text: deletions, insertions of YAML's special characters, swaps."""
    chars = list(text)
    for _ in range(data.draw(st.integers(1, 6))):
        if not chars:
            break
        i = data.draw(st.integers(0, len(chars) - 1))
        op = data.draw(st.sampled_from(["delete", "insert", "replace"]))
        special = st.sampled_from([*":-[]{},#&*!|>'\"%@`?\t\n ", "\x00", "\ufeff", "\x85", "  ", "- ", ": "])
        if op == "delete":
            del chars[i]
        elif op == "insert":
            chars.insert(i, data.draw(special | st.text(max_size=3)))
        else:
            chars[i] = data.draw(special)
    return "".join(chars)


# ---------------------------------------------------------------- the properties
def _parse(data) -> Recipe | None:
    try:
        recipe = parse_recipe(data, source="<fuzz>")
    except RecipeError as exc:
        assert exc.render()
        return None
    assert isinstance(recipe, Recipe)
    return recipe


def _load(path: Path) -> Recipe | None:
    try:
        recipe = load_recipe(path)
    except RecipeError as exc:
        assert exc.render() and str(path) in exc.render()
        return None
    assert isinstance(recipe, Recipe)
    return recipe


def _validate(data) -> None:
    if not isinstance(data, dict):   # validate() takes a path, a dict or a Recipe; anything else is a TypeError
        _parse(data)
        return
    try:
        plan = compress.validate(data, base_dir=ROOT / "recipes")
    except InputError as exc:
        assert exc.render()
        return
    assert plan.describe()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _write(scratch: Path, text: str) -> Path:
    path = scratch / "recipe.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    return path


def test_bases_are_valid():
    for base in BASES:
        assert isinstance(parse_recipe(copy.deepcopy(base)), Recipe)
    assert compress.validate(copy.deepcopy(BASES[0]), base_dir=ROOT / "recipes").describe()


@FUZZ
@given(structures)
def test_parse_random_structures(data):
    _parse(data)


@FUZZ
@given(mutated_recipes())
def test_parse_and_validate_mutated_recipes(data):
    _parse(copy.deepcopy(data))
    _validate(data)


@FUZZ
@given(chains())
def test_validate_stage_chains(data):
    _parse(copy.deepcopy(data))
    _validate(data)


@FUZZ
@given(structures)
def test_validate_random_structures(data):
    _validate(data)


@FUZZ
@given(mutated_recipes())
def test_load_yaml_of_mutated_recipes_agrees_with_parse(scratch, data):
    """Through a file: same verdict as parse_recipe, and the same Recipe when valid (line lookup never fails)."""
    try:
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    except yaml.YAMLError:
        return   # not representable as YAML (PyYAML's own limit, not ours)
    parsed = _parse(copy.deepcopy(data))
    loaded = _load(_write(scratch, text))
    assert (parsed is None) == (loaded is None)
    if parsed is not None:
        assert repr(parsed.model_dump()) == repr(loaded.model_dump())


@FUZZ
@given(st.data())
def test_load_damaged_yaml_text(scratch, data):
    base = data.draw(st.sampled_from(BASES))
    text = yaml.safe_dump(base, sort_keys=False, default_flow_style=data.draw(st.sampled_from([False, None])))
    _load(_write(scratch, _edit(text, data)))


@FUZZ
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_load_random_text(scratch, text):
    _load(_write(scratch, text))


def test_load_non_utf8_file(scratch):
    path = scratch / "binary.yaml"
    path.write_bytes(b"name: \xff\xfe\x00\x01")
    with pytest.raises(RecipeError, match="cannot read the recipe"):
        load_recipe(path)
