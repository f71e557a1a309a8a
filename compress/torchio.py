"""Torch artifacts on disk without pickled modules: a plain state_dict (loadable with
weights_only=True) plus `structure.json`, the per-module shape attributes (in/out channels,
features...) that pruning changed. Loading replays them onto a copy of the unpruned model."""
from __future__ import annotations

import copy
import json
from pathlib import Path

from .fsutil import atomic_write_json

STRUCTURE = "structure.json"
QUANTIZATION = "quantization.json"


def _plain(value) -> bool:
    if isinstance(value, (bool, int)):
        return True
    return isinstance(value, (tuple, list)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def save_module(module, folder: Path, quantization: str | None = None) -> Path:
    """`quantization` names the torchao scheme whose tensor types the state_dict holds."""
    import torch

    path = folder / "model.pt"
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, path)
    if quantization is not None:
        atomic_write_json(folder / QUANTIZATION, {"scheme": quantization})
    structure = {name: {k: list(v) if isinstance(v, tuple) else v for k, v in vars(mod).items()
                        if not k.startswith("_") and _plain(v)}
                 for name, mod in module.named_modules()}
    atomic_write_json(folder / STRUCTURE, structure)
    return path


def load_module(base, path: Path):
    """`base` (the unpruned model) with the saved structure and weights."""
    import torch

    module = copy.deepcopy(base)
    structure = json.loads((path.parent / STRUCTURE).read_text())
    for name, mod in module.named_modules():
        for key, value in structure.get(name, {}).items():
            if hasattr(mod, key) and _plain(getattr(mod, key)):
                setattr(mod, key, tuple(value) if isinstance(getattr(mod, key), tuple) else value)
    if (path.parent / QUANTIZATION).is_file():
        import torchao.quantization  # noqa: F401  (registers its tensor types as safe for weights_only loading)
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key, tensor in state.items():
        owner_name, _, attr = key.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        if attr in owner._parameters:
            owner._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=owner._parameters[attr].requires_grad)
        elif attr in owner._buffers:
            owner._buffers[attr] = tensor
    return module.eval()
