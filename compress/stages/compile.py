"""compile: an artifact -> the target's deployable format (OpenVINO IR, or an optimized .onnx)."""
from __future__ import annotations

import shutil

from ..artifacts import OnnxModel, OpenVinoModel, TorchModel
from ..convert import save_openvino, stamp_onnx, to_openvino
from ..errors import StageError
from ..recipe import CompileConfig
from ..targets import Target
from . import StageContext, register


def _accepts(cfg: CompileConfig, target: Target | None) -> dict[type, type]:
    if target is None or target.runtime == "openvino":
        return {TorchModel: OpenVinoModel, OnnxModel: OpenVinoModel, OpenVinoModel: OpenVinoModel}
    return {OnnxModel: OnnxModel}


def _compile_openvino(cfg: CompileConfig, artifact, ctx: StageContext) -> OpenVinoModel:
    from ..runtimes.openvino_runtime import core

    model = to_openvino(artifact, ctx.spec)
    out = save_openvino(model, ctx.out_dir / "model.xml", ctx.details.get("stamp", {}))
    out.precision = artifact.precision
    out.inference_precision = cfg.inference_precision or ctx.target.inference_precision or "f32"
    try:  # the target must be able to load what we ship
        core().compile_model(core().read_model(str(out.path)), "CPU",
                             {"INFERENCE_PRECISION_HINT": out.inference_precision})
    except Exception as exc:
        raise StageError(f"OpenVINO cannot compile the IR for CPU: {str(exc).splitlines()[0][:300]}") from None
    ctx.details["inference_precision"] = out.inference_precision
    return out


def _compile_onnxruntime(cfg: CompileConfig, artifact: OnnxModel, ctx: StageContext) -> OnnxModel:
    import onnxruntime as ort

    if cfg.inference_precision is not None:
        raise StageError("inference_precision applies to OpenVINO targets only", where=f"{ctx.where}.inference_precision")
    level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
             "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
             "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[ctx.target.graph_optimization or "extended"]
    path = ctx.out_dir / "model.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.optimized_model_filepath = str(path)
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(artifact.path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise StageError(f"ONNX Runtime cannot optimize the model: {str(exc).splitlines()[0][:300]}") from None
    if not path.exists():  # pragma: no cover - ORT always writes it when asked
        shutil.copyfile(artifact.path, path)
    stamp_onnx(path, ctx.details.get("stamp", {}))
    ctx.details["graph_optimization"] = ctx.target.graph_optimization or "extended"
    return OnnxModel(path=path, precision=artifact.precision)


@register(CompileConfig, accepts=_accepts)
def compile_stage(cfg: CompileConfig, artifact, ctx: StageContext):
    ctx.log(f"compiling for {ctx.target.name}")
    ctx.details["target"] = ctx.target.name
    compilers = {"openvino": _compile_openvino, "onnxruntime": _compile_onnxruntime}
    return compilers[ctx.target.runtime](cfg, artifact, ctx)
