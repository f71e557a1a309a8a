"""Model loaders: torchvision by name, file.py:factory + state_dict (weights_only), .onnx files."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.errors import ModelError
from compress.models import load_model
from compress.recipe import ModelConfig

from conftest import FACTORY, ROOT, WEIGHTS


def cfg(**kw) -> ModelConfig:
    kw.setdefault("input", {"shape": [1, 1, 28, 28]})
    return ModelConfig(**kw)


def test_python_factory_with_state_dict():
    artifact, spec = load_model(cfg(source="python", factory=FACTORY, weights=WEIGHTS), ROOT)
    assert artifact.kind == "TorchModel" and spec.outputs == ["output"]
    assert not artifact.notes  # trained weights: no random-init warning


def test_torchvision_by_name_without_weights_is_flagged():
    artifact, _ = load_model(cfg(source="torchvision", name="mobilenet_v3_small", kwargs={"num_classes": 7},
                                 input={"shape": [1, 3, 64, 64]}), ROOT)
    assert "random initial weights" in artifact.notes[0]
    assert artifact.module.classifier[-1].out_features == 7


def test_torchvision_typo_suggests_name():
    with pytest.raises(ModelError, match="Did you mean 'resnet18'"):
        load_model(cfg(source="torchvision", name="resnet81", input={"shape": [1, 3, 32, 32]}), ROOT)


def test_factory_not_found_lists_callables():
    with pytest.raises(ModelError, match=r"'FashionCN' not found.*Did you mean 'FashionCNN'"):
        load_model(cfg(source="python", factory=FACTORY.replace("FashionCNN", "FashionCN")), ROOT)


def test_factory_file_missing(tmp):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(cfg(source="python", factory="nope.py:F"), tmp)


def test_input_shape_that_does_not_fit():
    with pytest.raises(ModelError, match="does not accept the recipe's input"):
        load_model(cfg(source="python", factory=FACTORY, weights=WEIGHTS, input={"shape": [1, 3, 28, 28]}), ROOT)


def test_checkpoint_that_needs_pickle_is_refused_and_never_runs(tmp):
    marker = tmp / "pwned.txt"

    class Evil:
        def __reduce__(self):
            return (Path.write_text, (marker, "code ran"))

    path = tmp / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"weight": Evil()}, fh)
    with pytest.raises(ModelError, match="weights_only=True"):
        load_model(cfg(source="python", factory=FACTORY, weights=str(path)), ROOT)
    assert not marker.exists()


def test_checkpoint_that_is_not_a_state_dict(tmp):
    path = tmp / "list.pt"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(ModelError, match="not a state_dict"):
        load_model(cfg(source="python", factory=FACTORY, weights=str(path)), ROOT)


def test_checkpoint_for_another_architecture(tmp):
    path = tmp / "other.pt"
    torch.save(torch.nn.Linear(3, 4).state_dict(), path)
    with pytest.raises(ModelError, match="does not match the model"):
        load_model(cfg(source="python", factory=FACTORY, weights=str(path)), ROOT)


def test_onnx_source_checks_names_and_shapes(tmp):
    from compress.convert import torch_to_onnx

    artifact, spec = load_model(cfg(source="python", factory=FACTORY, weights=WEIGHTS), ROOT)
    path = tmp / "m.onnx"
    torch_to_onnx(artifact.module, spec, path)
    onnx_artifact, onnx_spec = load_model(cfg(source="onnx", path=str(path)), tmp)
    assert onnx_artifact.kind == "OnnxModel" and onnx_spec.outputs == ["output"]
    with pytest.raises(ModelError, match="has shape"):
        load_model(cfg(source="onnx", path=str(path), input={"shape": [1, 1, 32, 32]}), tmp)
    with pytest.raises(ModelError, match="input names"):
        load_model(cfg(source="onnx", path=str(path), input={"name": "x", "shape": [1, 1, 28, 28]}), tmp)


def test_truncated_onnx_is_a_clear_error(tmp):
    from compress.convert import torch_to_onnx

    artifact, spec = load_model(cfg(source="python", factory=FACTORY, weights=WEIGHTS), ROOT)
    path = tmp / "m.onnx"
    torch_to_onnx(artifact.module, spec, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        load_model(cfg(source="onnx", path=str(path)), tmp)


def test_in_memory_module_and_multi_output_names():
    class Two(torch.nn.Module):
        def forward(self, x):
            return {"logits": x.flatten(1)[:, :10], "embedding": x.mean((2, 3))}

    _, spec = load_model(cfg(source="python", factory="x.py:y"), ROOT, module=Two())
    assert spec.outputs == ["logits", "embedding"]
    feeds = spec.dummy(batch=3)
    assert feeds["input"].shape == (3, 1, 28, 28) and feeds["input"].dtype == np.float32
