"""OpenVINO on CPU, threads and inference precision pinned (f32 unless asked otherwise)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifacts import OpenVinoModel
from ..errors import backend_call
from . import Session

_CORE = None


def core():
    global _CORE
    if _CORE is None:
        import openvino as ov

        _CORE = ov.Core()
    return _CORE


def cpu_supports(precision: str) -> bool:
    """Whether OpenVINO's CPU plugin runs this inference precision here (BF16: AVX512_BF16 or AMX;
    FP16: AVX512_FP16 or AMX-FP16); f32 always."""
    caps = core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return precision == "f32" or {"bf16": "BF16", "f16": "FP16"}.get(precision) in caps


def open_openvino(artifact: OpenVinoModel, threads: int, *, static_batch: int | None = None, **_) -> Session:
    import openvino as ov

    with backend_call(f"OpenVINO cannot read {artifact.path.name}"):
        model = core().read_model(str(artifact.path))
    if static_batch is not None:
        shapes = {}
        for port in model.inputs:
            shape = port.get_partial_shape()
            shape[0] = static_batch
            shapes[port.any_name] = shape
        model.reshape(shapes)
    asked = artifact.inference_precision
    precision = asked if cpu_supports(asked) else "f32"
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
    if precision != asked:
        settings["note"] = f"asked for {asked}, this CPU lacks it: ran {precision}"
    return Session(artifact.runtime, infer, fixed_batch=fixed, settings=settings)


def fp32_baseline(reference, spec, folder: Path, cls=OpenVinoModel) -> OpenVinoModel:
    """The reference model (torch or .onnx) as FP32 IR, run in f32 (OpenVINO would run it in BF16 on
    CPUs that have it)."""
    from ..convert import save_openvino, to_openvino

    saved = save_openvino(to_openvino(reference, spec), folder / "fp32.xml", {"baseline": "fp32"})
    return cls(path=saved.path, inference_precision="f32")


def count_ops(artifact: OpenVinoModel, op_types: set[str]) -> int:
    return sum(op.get_type_name() in op_types for op in core().read_model(str(artifact.path)).get_ops())


def input_shapes(path: Path) -> list[tuple[str, list, str]]:
    with backend_call(f"OpenVINO cannot read {path.name}"):
        model = core().read_model(str(path))
    shapes = []
    for port in model.inputs:
        dims = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
        shapes.append((port.any_name, dims, port.get_element_type().to_dtype().name))
    return shapes


def compile_ir(cfg, artifact, ctx, cls=OpenVinoModel) -> OpenVinoModel:
    """Any artifact OpenVINO converts -> IR, checked to compile for CPU at the chosen precision."""
    from ..convert import save_openvino, to_openvino

    model = to_openvino(artifact, ctx.spec)
    saved = save_openvino(model, ctx.out_dir / "model.xml", ctx.details.get("stamp", {}))
    precision = cfg.inference_precision or ctx.target.inference_precision or "f32"
    out = cls(path=saved.path, precision=artifact.precision, inference_precision=precision)
    with backend_call("OpenVINO cannot compile the IR for CPU", where=ctx.where):   # the target must load it
        core().compile_model(core().read_model(str(out.path)), "CPU", {"INFERENCE_PRECISION_HINT": precision})
    ctx.details["inference_precision"] = precision
    return out
