"""OpenVINO on CPU, threads and inference precision pinned (f32 unless asked otherwise)."""
from __future__ import annotations

import numpy as np

from ..artifacts import OpenVinoModel
from ..errors import StageError
from . import Session

_CORE = None


def core():
    global _CORE
    if _CORE is None:
        import openvino as ov

        _CORE = ov.Core()
    return _CORE


def cpu_supports_bf16() -> bool:
    caps = core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "BF16" in caps


def open_openvino(artifact: OpenVinoModel, threads: int, *, static_batch: int | None = None,
                  inference_precision: str = "f32") -> Session:
    import openvino as ov

    try:
        model = core().read_model(str(artifact.path))
    except Exception as exc:
        raise StageError(f"OpenVINO cannot read {artifact.path.name}: {str(exc).splitlines()[0][:300]}") from None
    if static_batch is not None:
        shapes = {}
        for port in model.inputs:
            shape = port.get_partial_shape()
            shape[0] = static_batch
            shapes[port.any_name] = shape
        model.reshape(shapes)
    precision = inference_precision
    if precision == "bf16" and not cpu_supports_bf16():
        precision = "f32"
    config = {
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": precision,
    }
    compiled = core().compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    first = model.inputs[0].get_partial_shape()
    fixed = first[0].get_length() if first.rank.is_static and first[0].is_static else None
    names = [port.any_name for port in model.inputs]
    outputs = list(compiled.outputs)

    def infer(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        ordered = [feeds[n] for n in names] if all(n in feeds for n in names) else list(feeds.values())
        result = request.infer(ordered)
        return [np.array(result[port]) for port in outputs]

    settings = {"threads": threads, "device": "CPU", "inference_precision": precision,
                "precision": artifact.precision, "openvino": ov.get_version().split("-")[0]}
    if precision != inference_precision:
        settings["note"] = f"asked for {inference_precision}, this CPU lacks it: ran {precision}"
    return Session("openvino", infer, fixed_batch=fixed, settings=settings)
