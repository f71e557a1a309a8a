"""Eager PyTorch on CPU, threads pinned."""
from __future__ import annotations

import numpy as np

from ..artifacts import TorchModel
from . import Session


def open_torch(artifact: TorchModel, threads: int) -> Session:
    import torch

    from ..models import torch_outputs

    torch.set_num_threads(threads)
    module = artifact.module

    def infer(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return torch_outputs(module, feeds)[0]

    return Session("torch", infer, settings={"threads": threads, "precision": artifact.precision,
                                             "torch": torch.__version__})
