"""Eager PyTorch on CPU, threads pinned."""
from __future__ import annotations

import numpy as np

from ..artifacts import TorchModel
from . import Session


def open_torch(artifact: TorchModel, threads: int, **_) -> Session:
    import torch

    from ..models import torch_outputs

    torch.set_num_threads(threads)
    module = artifact.module

    def infer(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return torch_outputs(module, feeds)[0]

    return Session("torch", infer, settings={"threads": threads, "precision": artifact.precision,
                                             "torch": torch.__version__})


def fp32_baseline(reference: TorchModel, spec, folder, cls=TorchModel) -> TorchModel:
    return cls(path=None, module=reference.module)


def restore(cls, path, state: dict, notes: list[str], base=None) -> TorchModel | None:
    """A saved torch module is its state_dict plus the structure changes replayed on `base`."""
    if base is None:
        return None
    from ..torchio import load_module

    return cls(path=path, notes=list(notes), module=load_module(base, path), **state)
