"""Runtime adapters. `open_session(artifact, ...)` dispatches on the artifact type; every session
takes named numpy inputs and returns the outputs as a list of numpy arrays in model order."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..artifacts import Artifact, OnnxModel, OpenVinoModel, TorchModel
from ..errors import StageError


@dataclass
class Session:
    runtime: str
    infer: Callable[[dict[str, np.ndarray]], list[np.ndarray]]
    fixed_batch: int | None = None                 # the model only takes this batch size
    settings: dict = field(default_factory=dict)   # threads, precision, provider...: recorded in reports

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run any batch size: a model with a fixed batch gets chunks, the last one padded."""
        size = next(iter(feeds.values())).shape[0]
        if self.fixed_batch is None or size == self.fixed_batch:
            return self.infer(feeds)
        step = self.fixed_batch
        parts: list[list[np.ndarray]] = []
        for start in range(0, size, step):
            chunk = {k: v[start:start + step] for k, v in feeds.items()}
            n = next(iter(chunk.values())).shape[0]
            if n < step:
                chunk = {k: np.concatenate([v, np.repeat(v[-1:], step - n, axis=0)]) for k, v in chunk.items()}
            parts.append([o[:n] for o in self.infer(chunk)])
        return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def _torch_session(artifact: TorchModel, threads: int, **_) -> Session:
    from .torch_runtime import open_torch

    return open_torch(artifact, threads)


def _ort_session(artifact: OnnxModel, threads: int, **_) -> Session:
    from .onnxruntime_runtime import open_onnxruntime

    return open_onnxruntime(artifact, threads)


def _ov_session(artifact: OpenVinoModel, threads: int, static_batch: int | None = None,
                inference_precision: str | None = None) -> Session:
    from .openvino_runtime import open_openvino

    return open_openvino(artifact, threads, static_batch=static_batch,
                         inference_precision=inference_precision or artifact.inference_precision)


OPENERS: dict[type, Callable[..., Session]] = {
    TorchModel: _torch_session,
    OnnxModel: _ort_session,
    OpenVinoModel: _ov_session,
}


def open_session(artifact: Artifact, *, threads: int, static_batch: int | None = None,
                 inference_precision: str | None = None) -> Session:
    opener = OPENERS.get(type(artifact))
    if opener is None:
        raise StageError(f"no runtime can run a {artifact.kind}")
    return opener(artifact, threads, static_batch=static_batch, inference_precision=inference_precision)
