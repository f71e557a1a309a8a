"""ONNX Runtime Mobile: `.ort` files (ORT format), converted with ONNX Runtime's own tool and run
here by the ordinary onnxruntime package on this machine's CPU (not the phone's)."""
from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

from ..artifacts import OnnxModel, OrtFormatModel
from ..errors import InputError, backend_call

WHERE_TIMED = "timed on this x86 machine's ONNX Runtime CPU EP, not on the phone: expect other figures on ARM cores"


def convert(onnx_path: Path, folder: Path, *, platform: str, type_reduction: bool, where: str | None = None,
            cls=OrtFormatModel) -> OrtFormatModel:
    """`python -m onnxruntime.tools.convert_onnx_models_to_ort --optimization_style Fixed`, called in-process:
    writes <name>.ort and <name>.required_operators[_and_types].config into `folder`."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    work = folder / "src"
    work.mkdir()
    source = work / "model.onnx"
    shutil.copyfile(onnx_path, source)
    import logging

    import onnxruntime as ort

    log = io.StringIO()
    quiet = logging.getLogger("ort_format_model.utils")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    ort.set_default_logger_severity(3)   # the tool's own sessions warn about x86 layouts on amd64
    try:
        with contextlib.redirect_stdout(log), backend_call(
                "the .ort converter rejected the model", where=where, settings_errors=(Exception,),
                rejected="ONNX Runtime Mobile cannot convert the model",
                hint="An op ONNX Runtime does not implement (a custom domain, say) cannot go to .ort; "
                     "export with standard ops."):
            convert_onnx_models_to_ort(source, output_dir=folder, optimization_styles=[OptimizationStyle.Fixed],
                                       target_platform=platform, enable_type_reduction=type_reduction)
    finally:
        quiet.setLevel(level)
        ort.set_default_logger_severity(2)
        shutil.rmtree(work, ignore_errors=True)
    found = sorted(folder.glob("*.ort"))
    if len(found) != 1:   # pragma: no cover - the tool writes exactly one file for one model
        raise InputError(f"the .ort converter wrote {len(found)} files: {log.getvalue()[-300:]}", where=where)
    return cls(path=found[0])


def fp32_baseline(reference, spec, folder: Path, cls=OrtFormatModel) -> OrtFormatModel:
    """The reference model as FP32 .onnx, converted to .ort (amd64: the machine it is timed on)."""
    from .onnxruntime_runtime import fp32_baseline as onnx_baseline

    onnx_dir = folder / "onnx"
    onnx_dir.mkdir()
    source = onnx_baseline(reference, spec, onnx_dir, OnnxModel)
    out = convert(source.path, folder, platform="amd64", type_reduction=False, cls=cls)
    shutil.rmtree(onnx_dir)
    return out


def compile_ort(cfg, artifact: OnnxModel, ctx, cls=OrtFormatModel) -> OrtFormatModel:
    target = ctx.target
    platform = target.platform or "arm"
    type_reduction = target.operator_config == "ops_and_types"
    ctx.log(f"converting to ORT format (Fixed optimizations, {platform}"
            + (", type reduction)" if type_reduction else ")"))
    out = convert(artifact.path, ctx.out_dir, platform=platform, type_reduction=type_reduction, where=ctx.where,
                  cls=cls)
    out.precision = artifact.precision
    configs = [p.name for p in out.files()[1:]]
    ctx.details.update(ort_format={"platform": platform, "optimization_style": "Fixed",
                                   "type_reduction": type_reduction, "operator_config": configs,
                                   "ops": op_histogram(out.path)})
    out.notes.append(WHERE_TIMED)
    if platform == "arm":
        out.notes.append("this .ort is optimized for ARM cores: on x86 its INT8 kernels can take slow paths (seen "
                         "here: 10x slower than the same model converted for amd64), so its x86 latency and "
                         "speed-up say nothing about the phone")
    return out


def op_histogram(path: Path) -> dict[str, int]:
    """Op type -> count in the top-level graph of an .ort file (ONNX Runtime's flatbuffer schema)."""
    import onnxruntime.tools.ort_format_model  # noqa: F401  (puts ort_flatbuffers_py on the path)
    import ort_flatbuffers_py.fbs as fbs

    buffer = bytearray(path.read_bytes())
    if not fbs.InferenceSession.InferenceSession.InferenceSessionBufferHasIdentifier(buffer, 0):
        raise InputError(f"{path} is not an ORT format model")
    graph = fbs.InferenceSession.InferenceSession.GetRootAsInferenceSession(buffer, 0).Model().Graph()
    counts: dict[str, int] = {}
    for i in range(graph.NodesLength()):
        op = graph.Nodes(i).OpType().decode()
        counts[op] = counts.get(op, 0) + 1
    return counts


def count_ops(artifact: OrtFormatModel, op_types: set[str]) -> int:
    return sum(n for op, n in op_histogram(artifact.path).items() if op in op_types)


def input_shapes(path: Path) -> list[tuple[str, list, str]]:
    import numpy as np
    import onnxruntime as ort

    types = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
             "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}
    with backend_call(f"ONNX Runtime cannot load {path.name}"):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [(i.name, [d if isinstance(d, int) else None for d in i.shape], np.dtype(types.get(i.type, "float32")).name)
            for i in session.get_inputs()]


__all__ = ["compile_ort", "convert", "count_ops", "fp32_baseline", "input_shapes", "op_histogram"]
