"""qat: TorchModel -> OpenVinoModel (backend openvino) or OnnxModel (backend onnxruntime, QDQ).

NNCF inserts fake-quant (the scheme its OpenVINO/CPU presets use: symmetric per-channel INT8
weights, INT8 activations) and initialises the ranges from calibration data, which is exactly
post-training quantization. That starting point is exported and validated on the target runtime,
then the network and the quantizer ranges are fine-tuned on `data.train` (optionally distilled
from the FP32 model) and exported again. The report shows FP32 -> PTQ -> QAT side by side.
"""
from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path

from ..artifacts import OnnxModel, OpenVinoModel, TensorRTQDQModel, TorchModel
from ..convert import save_openvino, stamp_onnx, to_openvino, torch_to_onnx
from ..errors import ChainError, InputError, backend_call
from ..nncf_kernels import prepare as prepare_kernels
from ..recipe import QatConfig
from ..runtimes import count_ops
from . import (
    PlanState,
    StageContext,
    add_checkpoint,
    check_notes,
    finetune_notes,
    keep_last_good,
    quantized_nothing_gate,
    register,
)
from .prune import _ignored
from .quantize import CalibrationSamples, call_nncf

DEFAULT_SAMPLES = 300


def _weighted_types() -> tuple:
    import torch

    nn = torch.nn
    return (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear,
            nn.LSTM, nn.GRU, nn.RNN, nn.MultiheadAttention, nn.Embedding)


def _accepts(cfg: QatConfig, target) -> dict[type, type]:
    return {TorchModel: {"openvino": OpenVinoModel, "onnxruntime": OnnxModel, "tensorrt": TensorRTQDQModel}[cfg.backend]}


def fold_batchnorm(module) -> list[tuple[str, str]]:
    """Fold every BatchNorm that directly follows a conv (and is that conv's only user) into the
    conv, in place, as deployment runtimes do. Found with torch.fx; a model fx cannot trace keeps
    its BatchNorm (returns [])."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    try:
        graph = torch.fx.symbolic_trace(module)
    except Exception:
        return []
    modules = dict(graph.named_modules())
    convs = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    bns = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
    pairs = []
    for node in graph.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), bns):
            continue
        source = node.args[0] if node.args else None
        if getattr(source, "op", None) == "call_module" and isinstance(modules.get(source.target), convs) \
                and len(source.users) == 1 and modules[node.target].track_running_stats:
            pairs.append((source.target, node.target))
    for conv, bn in pairs:
        module.set_submodule(conv, fuse_conv_bn_eval(module.get_submodule(conv).eval(), module.get_submodule(bn).eval()))
        module.set_submodule(bn, torch.nn.Identity())
    return pairs


def _wrapped(module):
    """NNCF stores its hooks as a child module of the model it quantizes; an nn.Sequential would
    then call that child in its forward. For a Sequential, a thin wrapper owns the hooks instead
    (with a named input, which NNCF needs to quantize the model's input)."""
    import torch

    if not isinstance(module, torch.nn.Sequential):
        return module

    class Wrapped(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):   # a Sequential takes exactly one input
            return self.model(x)

    return Wrapped(module)


def _insert_fake_quant(cfg: QatConfig, module, ctx: StageContext):
    import nncf

    count = min(cfg.samples or DEFAULT_SAMPLES, len(ctx.calibration))
    ignored = None
    if cfg.ignore:
        _ignored(module, cfg.ignore, ctx.where)   # unknown names: one clear error with suggestions
        # NNCF's torch node names are the module path with '/' (features/0/0/conv2d/0; model/... when wrapped)
        prefix = "model/" if _wrapped(module) is not module else ""
        ignored = nncf.IgnoredScope(patterns=[f"^{prefix}{re.escape(name.replace('.', '/'))}/" for name in cfg.ignore])
    preset = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}[cfg.preset]
    ctx.log(f"NNCF inserts fake-quant; ranges from {count} calibration samples")
    qmodel = call_nncf(lambda: nncf.quantize(_wrapped(module), nncf.Dataset(CalibrationSamples(ctx, count, as_torch=True)),
                                             preset=preset, subset_size=count, ignored_scope=ignored),
                       ctx, bool(cfg.ignore), "NNCF could not insert fake-quant")
    if cfg.backend == "tensorrt":
        ctx.details["signed_activations"] = _signed_activations(qmodel)
        ctx.log(f"{ctx.details['signed_activations']} unsigned activation quantizer(s) made signed: TensorRT takes int8 only")
    return qmodel, count


def _signed_activations(qmodel) -> int:
    """NNCF quantizes non-negative activations (after ReLU) as uint8; TensorRT's explicit quantization is int8
    with zero-point 0 only. Make those quantizers signed (NNCF's own flag; its HW config refuses to force it at
    quantize time), so QAT trains the exact int8 form TensorRT will run: half the levels of the uint8 range,
    the price of TensorRT's scheme. Returns how many changed."""
    from nncf.torch.quantization.layers import SymmetricQuantizer

    changed = 0
    for module in qmodel.modules():
        if isinstance(module, SymmetricQuantizer) and not module.signed:
            module.signed = True
            changed += 1
    return changed


def _export(qmodel, cfg: QatConfig, ctx: StageContext, folder: Path, stamp: dict, nncf_model: bool = True):
    """The fake-quant torch model in the target's format: FakeQuantize IR, or ONNX QDQ.
    `nncf_model=False`: a model NNCF never touched, exported as it is."""
    folder.mkdir(parents=True, exist_ok=True)
    qmodel.eval()
    with warnings.catch_warnings():   # tracer checks flag fake-quant rounding as "not close": expected
        warnings.simplefilter("ignore")
        if cfg.backend == "openvino":
            out = _to_openvino_ir(qmodel, ctx, folder / "model.xml", stamp)
            quantizers = count_ops(out, {"FakeQuantize"})
        else:
            out = _to_onnx_qdq(qmodel, ctx, folder / "model.onnx", stamp, nncf_model)
            quantizers = count_ops(out, {"QuantizeLinear"})
            if cfg.backend == "tensorrt":   # the same QDQ file, checked against TensorRT's rules
                from ..runtimes.tensorrt_runtime import checks

                ctx.details["tensorrt_checks"] = checks(out.path, tensorrt=None)
                out = TensorRTQDQModel(path=out.path, notes=[
                    "accuracy and latency here are emulated (ONNX Runtime CPU), not the engine; `compress build` "
                    "measures the engine on the device"])
    out.precision = "int8" if quantizers else "fp32"
    return out, quantizers


def _to_openvino_ir(qmodel, ctx: StageContext, path: Path, stamp: dict) -> OpenVinoModel:
    import torch

    with torch.no_grad():
        return save_openvino(to_openvino(TorchModel(path=None, module=qmodel), ctx.spec), path, stamp)


def _to_onnx_qdq(qmodel, ctx: StageContext, path: Path, stamp: dict, nncf_model: bool) -> OnnxModel:
    import nncf

    plain = qmodel
    if nncf_model:   # fake-quant becomes torch.fake_quantize_* ops, which export as QuantizeLinear/DequantizeLinear
        with backend_call("NNCF could not strip the QAT model for export", where=ctx.where):
            plain = nncf.strip(qmodel, example_input=ctx.spec.example_input(batch=1))
    torch_to_onnx(plain, ctx.spec, path)
    stamp_onnx(path, stamp)
    return OnnxModel(path=path)


def freezer(cfg: QatConfig, qmodel, log):
    """Called before every optimizer step: stop BatchNorm statistics / quantizer ranges on schedule."""
    import torch
    from nncf.torch.quantization.layers import BaseQuantizer

    bns = [m for m in qmodel.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    quantizers = [m for m in qmodel.modules() if isinstance(m, BaseQuantizer)]

    def on_step(step: int) -> None:
        if cfg.freeze_bn_after is not None and step >= cfg.freeze_bn_after:
            for bn in bns:
                bn.eval()   # re-applied every step: finetune() puts the model in train mode each epoch
            if step == cfg.freeze_bn_after:
                log(f"step {step}: BatchNorm statistics frozen")
        if cfg.freeze_quantizers_after is not None and step == cfg.freeze_quantizers_after:
            for q in quantizers:
                for p in q.parameters():
                    p.requires_grad_(False)
                    p.grad = None
            log(f"step {step}: quantizer ranges frozen")

    return on_step


def _nothing_to_quantize(module, cfg: QatConfig, ctx: StageContext, stamp: dict, details: dict, nncf_model: bool):
    """No layer NNCF quantizes: export the model as it is, FP32, say why (the `quantized` gate fails)."""
    ctx.details.update(details)
    out, _ = _export(module, cfg, ctx, ctx.out_dir, stamp, nncf_model)
    out.notes.append("the model has no layer to quantize (no convolution or linear layer that NNCF inserts "
                     "fake-quant for): the artifact stays FP32 and no training ran")
    return out


def _check(cfg: QatConfig, state: PlanState) -> None:
    if state.recipe.data.train is None:
        raise ChainError("quantization-aware training needs training data: the recipe has no data.train",
                         where=state.where, hint="Add data.train (same formats as calibration/eval), or use a "
                                                 "`quantize` stage (post-training, calibration data only).")


def _forbids_after(cfg: QatConfig) -> dict[str, tuple[str, str | None]]:
    once = ("the model is already quantized by {at}; quantize once", "Remove one of the quantize stages.")
    return {"prune": ("prune before quantizing: {at} already quantized the model", None), "quantize": once,
            "qat": once}


def _notes(record: dict) -> list[str]:
    d = record["details"]
    notes = []
    if d.get("folded_batchnorm"):
        notes.append(f"{d['folded_batchnorm']} BatchNorm layer(s) folded into their convolutions before fake-quant "
                     "was inserted")
    if "PTQ start" in d.get("checkpoints", {}):
        notes.append(f"'PTQ start' is the model right after fake-quant insertion and range calibration on "
                     f"{d['samples']} samples, before training: post-training quantization (artifact "
                     f"{d['checkpoints']['PTQ start']['path']} in the stage folder)")
    return notes + finetune_notes(record) + check_notes(record)


@register(QatConfig, accepts=_accepts, check=_check, quantizes=lambda cfg: cfg.backend, forbids_after=_forbids_after,
          gates=quantized_nothing_gate, notes=_notes)
def qat(cfg: QatConfig, artifact: TorchModel, ctx: StageContext):
    from ..train import TrainingDiverged, finetune

    if artifact.precision != "fp32":
        raise InputError(f"the model is already {artifact.precision}; QAT starts from an FP32 model", where=ctx.where)
    module = copy.deepcopy(artifact.module).eval()
    stamp = ctx.details.get("stamp", {})
    details = {"backend": "nncf", "export": "OpenVINO IR (FakeQuantize)" if cfg.backend == "openvino" else "ONNX QDQ",
               "preset": cfg.preset, "quantize_ops": 0}
    if not any(isinstance(m, _weighted_types()) for m in module.modules()):
        return _nothing_to_quantize(module, cfg, ctx, stamp, details, nncf_model=False)
    folded = fold_batchnorm(module) if cfg.fold_bn else []
    details["fake_quant_kernels"] = prepare_kernels(ctx.log)   # before NNCF's first fake-quant op builds them
    fp32 = _wrapped(copy.deepcopy(module)) if cfg.finetune.distributed else None   # what the workers rebuild from
    qmodel, count = _insert_fake_quant(cfg, module, ctx)
    ptq, quantizers = _export(qmodel, cfg, ctx, ctx.out_dir / "ptq", {**stamp, "checkpoint": "ptq"})
    details.update(samples=count, folded_batchnorm=len(folded), quantize_ops=quantizers)
    if quantizers == 0:
        return _nothing_to_quantize(qmodel, cfg, ctx, stamp, details, nncf_model=True)
    ctx.details.update(details)
    add_checkpoint(ctx, "PTQ start", ptq)

    teacher = ctx.reference.module if cfg.finetune.distill is not None else None

    def metric_text(m) -> str:
        name, value = ctx.score(m, cfg.finetune.eval_samples)
        return f"{name} {value:.2f} (torch fake-quant)"

    ctx.log(f"QAT: {cfg.finetune.epochs} epoch(s), {cfg.finetune.optimizer} lr {cfg.finetune.lr}")
    try:
        if cfg.finetune.distributed:
            from ..ddp_worker import launch

            details["finetune"] = launch(qmodel, teacher, ctx.train, cfg.finetune, log=ctx.log, evaluate=metric_text,
                                         where=ctx.where, threads=ctx.threads, masks=None, seed=ctx.resolved.seed,
                                         nncf_from=fp32, qat=cfg)
        else:
            details["finetune"] = finetune(qmodel, teacher, ctx.train, cfg.finetune, log=ctx.log, evaluate=metric_text,
                                           where=ctx.where, threads=ctx.threads, on_step=freezer(cfg, qmodel, ctx.log),
                                           progress=ctx.progress, seed=ctx.resolved.seed)
    except TrainingDiverged as exc:
        raise keep_last_good(ctx, exc, lambda folder, epoch=exc.epoch: _export(qmodel, cfg, ctx, folder,
                                                              {**stamp, "checkpoint": f"epoch {epoch}"})[0]) from None
    out, quantizers = _export(qmodel, cfg, ctx, ctx.out_dir, stamp)
    details["quantize_ops"] = quantizers
    ctx.details.update(details)
    return out
