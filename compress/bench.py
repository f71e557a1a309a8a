"""`compress bench`: time an .onnx or OpenVINO .xml with the shared latency harness."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .artifacts import OnnxModel, OpenVinoModel
from .errors import InputError
from .models import check_onnx_file
from .runtimes import open_session
from .validate import machine_info, measure_latency


def _random_feeds(shapes: list[tuple[str, list, str]], batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for name, dims, dtype in shapes:
        if any(d is None for d in dims[1:]):
            raise InputError(f"input '{name}' has dynamic dimensions {dims}; bench needs static ones after the batch")
        shape = [batch, *dims[1:]]
        kind = np.dtype(dtype).kind
        feeds[name] = (rng.standard_normal(shape).astype(dtype) if kind == "f"
                       else rng.integers(0, 2, shape).astype(dtype))
    return feeds


def bench_file(path: Path, *, threads: int, batch: int, warmup: int, runs: int, inference_precision: str) -> dict:
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    if path.suffix == ".onnx":
        import onnx

        proto = check_onnx_file(path, str(path))
        init = {i.name for i in proto.graph.initializer}
        shapes = []
        for i in proto.graph.input:
            if i.name in init:
                continue
            t = i.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            shapes.append((i.name, dims, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).name))
        artifact = OnnxModel(path=path)
        session = open_session(artifact, threads=threads)
    elif path.suffix == ".xml":
        from .runtimes.openvino_runtime import core

        model = core().read_model(str(path))
        shapes = []
        for port in model.inputs:
            ps = port.get_partial_shape()
            dims = [d.get_length() if d.is_static else None for d in ps]
            shapes.append((port.any_name, dims, port.get_element_type().to_dtype().name))
        artifact = OpenVinoModel(path=path, inference_precision=inference_precision)
        session = open_session(artifact, threads=threads, static_batch=batch, inference_precision=inference_precision)
    else:
        raise InputError(f"{path.name}: bench takes an .onnx or an OpenVINO .xml file")
    latency = measure_latency(session, _random_feeds(shapes, batch), warmup=warmup, runs=runs)
    return {"model": str(path), "runtime": session.runtime, "settings": session.settings, "latency": latency,
            "machine": machine_info(), "inputs": "random normal (floats) / 0-1 (integers), seed 0"}
