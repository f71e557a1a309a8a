"""export: TorchModel -> a file format (`format:` picks the exporter), checked for output parity
against torch on real data."""
from __future__ import annotations

from ..artifacts import ExecuTorchModel, OnnxModel, TorchModel
from ..convert import onnx_max_abs_diff, stamp_onnx, torch_to_onnx
from ..errors import StageError
from ..models import torch_outputs
from ..recipe import ExportConfig
from ..runtimes import open_session
from . import StageContext, register


def _onnx(cfg: ExportConfig, artifact: TorchModel, ctx: StageContext) -> OnnxModel:
    path = ctx.out_dir / "model.onnx"
    ctx.log(f"exporting to ONNX (opset {cfg.opset})")
    torch_to_onnx(artifact.module, ctx.spec, path, opset=cfg.opset)
    stamp_onnx(path, ctx.details.get("stamp", {}))
    return OnnxModel(path=path, precision=artifact.precision)


def _executorch(cfg: ExportConfig, artifact: TorchModel, ctx: StageContext) -> ExecuTorchModel:
    from ..runtimes.executorch_runtime import WHERE_TIMED, export_program, lower, require

    require(f"{ctx.where}.format")
    path = ctx.out_dir / "model.pte"
    ctx.log("torch.export -> XNNPACK -> .pte (ExecuTorch, FP32)")
    lower(export_program(artifact.module, ctx.spec, ctx.where), path, quantized=False, where=ctx.where)
    return ExecuTorchModel(path=path, precision=artifact.precision, notes=[WHERE_TIMED])


EXPORTERS = {"onnx": (OnnxModel, _onnx), "executorch": (ExecuTorchModel, _executorch)}   # format -> (type, exporter)


def _parity(cfg: ExportConfig, artifact: TorchModel, exported, ctx: StageContext) -> None:
    feeds = next(ctx.calibration.input_batches(min(ctx.resolved.batch_size, 16)))
    expected, _ = torch_outputs(artifact.module, feeds)
    got = open_session(exported, threads=1).run(feeds)
    diff, scale = onnx_max_abs_diff(got, expected)
    allowed = cfg.parity_atol * max(1.0, scale)
    ctx.details["parity"] = {"max_abs_diff": diff, "allowed": allowed, "samples": len(next(iter(feeds.values())))}
    if not diff <= allowed:
        raise StageError(f"{cfg.format} outputs differ from torch by {diff:.3g} (allowed {allowed:.3g})",
                         where=f"{ctx.where}.parity_atol",
                         hint="The exporter changed the model's numerics; try another opset, or raise parity_atol "
                              "if this is expected.")


def _notes(record: dict) -> list[str]:
    parity = record["details"].get("parity")
    if parity is None:
        return []
    return [f"{record['config']['format']} vs torch max |diff| {parity['max_abs_diff']:.2e} "
            f"(allowed {parity['allowed']:.2e})"]


@register(ExportConfig, accepts=lambda cfg, target: {TorchModel: EXPORTERS[cfg.format][0]}, notes=_notes)
def export(cfg: ExportConfig, artifact: TorchModel, ctx: StageContext):
    exported = EXPORTERS[cfg.format][1](cfg, artifact, ctx)
    _parity(cfg, artifact, exported, ctx)
    return exported
