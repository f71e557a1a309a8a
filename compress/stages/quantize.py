"""quantize (static PTQ): NNCF for OpenVINO, ORT quantize_static (QDQ) for ONNX Runtime."""
from __future__ import annotations

import contextlib
from itertools import islice
from pathlib import Path

import numpy as np

from ..artifacts import OnnxModel, OpenVinoModel, TorchModel
from ..convert import count_ops, save_openvino, stamp_onnx, to_openvino
from ..errors import CompressError, InputError, StageError
from ..recipe import QuantizeConfig
from ..runtimes import open_session
from ..validation import Agreement
from . import StageContext, register

DEFAULT_SAMPLES = 300
SELECTION_SAMPLES = 256


def _accepts(cfg: QuantizeConfig, target) -> dict[type, type]:
    if cfg.backend == "openvino":
        return {TorchModel: OpenVinoModel, OnnxModel: OpenVinoModel, OpenVinoModel: OpenVinoModel}
    return {OnnxModel: OnnxModel}


def _samples(cfg: QuantizeConfig, ctx: StageContext) -> int:
    return min(cfg.samples or DEFAULT_SAMPLES, len(ctx.calibration))


class _CalibrationSamples:
    """Re-iterable stream of single samples for NNCF (it may pass over the data more than once)."""

    def __init__(self, ctx: StageContext, count: int):
        self.ctx, self.count = ctx, count

    def __iter__(self):
        names = [s.name for s in self.ctx.spec.inputs]
        for feeds in islice(self.ctx.calibration.samples(), self.count):
            yield feeds[names[0]] if len(names) == 1 else [feeds[n] for n in names]

    def __len__(self):
        return self.count


# ---------------------------------------------------------------- OpenVINO via NNCF
def _quantize_nncf(cfg: QuantizeConfig, artifact, ctx: StageContext) -> OpenVinoModel:
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    model = to_openvino(artifact, ctx.spec)
    count = _samples(cfg, ctx)
    advanced = None
    estimators = {"minmax": RangeEstimatorParametersSet.MINMAX, "percentile": RangeEstimatorParametersSet.MEAN_QUANTILE}
    if cfg.method is not None:
        advanced = AdvancedQuantizationParameters(activations_range_estimator_params=estimators[cfg.method])
    preset = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}[cfg.preset]
    ignored = nncf.IgnoredScope(names=list(cfg.ignore)) if cfg.ignore else None
    ctx.log(f"NNCF calibration on {count} samples")
    try:
        quantized = nncf.quantize(model, nncf.Dataset(_CalibrationSamples(ctx, count)), preset=preset,
                                  subset_size=count, ignored_scope=ignored, advanced_parameters=advanced)
    except CompressError:
        raise
    except nncf.ValidationError as exc:
        raise InputError(f"NNCF rejected the settings: {str(exc).splitlines()[0][:300]}",
                         where=f"{ctx.where}.ignore" if cfg.ignore else ctx.where) from None
    except Exception as exc:
        raise StageError(f"NNCF quantization failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None
    out = save_openvino(quantized, ctx.out_dir / "model.xml", ctx.details.get("stamp", {}))
    out.precision = "int8"
    ctx.details.update(backend="nncf", nncf=nncf.__version__, samples=count, preset=cfg.preset,
                       method=cfg.method or "nncf default", quantize_ops=count_ops(out, {"FakeQuantize"}))
    if ctx.details["quantize_ops"] == 0:
        out.precision = "fp32"
        out.notes.append("NNCF found no layer to quantize: the artifact stays FP32")
    return out


# ---------------------------------------------------------------- ONNX Runtime quantize_static
SCHEMES = {
    # name: (activation type, weight type, reduce_range)
    "u8s8": ("QUInt8", "QInt8", False),
    "u8s8_reduce_range": ("QUInt8", "QInt8", True),
    "s8s8": ("QInt8", "QInt8", False),
}


class _Reader:
    """ORT CalibrationDataReader over the calibration stream, in batches of one size.

    ORT's histogram calibrators (percentile, entropy) stack per-batch results, so every batch
    must have the same size: the largest size <= data.batch_size that divides the sample count.
    """

    def __init__(self, ctx: StageContext, count: int):
        self.ctx, self.count = ctx, count
        self.batch = max(d for d in range(1, min(ctx.recipe.data.batch_size, count) + 1) if count % d == 0)
        self.rewind()

    def rewind(self):
        batches = self.ctx.calibration.input_batches(self.batch)
        self._left = self.count
        self._iter = batches

    def get_next(self):
        if self._left <= 0:
            return None
        feeds = next(self._iter, None)
        if feeds is None:
            return None
        feeds = {k: v[: self._left] for k, v in feeds.items()}
        self._left -= len(next(iter(feeds.values())))
        return feeds


def _ort_quantize(src: Path, dst: Path, scheme: str, cfg: QuantizeConfig, ctx: StageContext, count: int,
                  cache: Path) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    act, weight, reduce_range = SCHEMES[scheme]
    method = {None: CalibrationMethod.MinMax, "minmax": CalibrationMethod.MinMax,
              "percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy}[cfg.method]
    quantize_static(str(src), str(dst), _Reader(ctx, count), quant_format=QuantFormat.QDQ,
                    per_channel=cfg.per_channel, reduce_range=reduce_range,
                    activation_type=getattr(QuantType, act), weight_type=getattr(QuantType, weight),
                    nodes_to_exclude=list(cfg.ignore) or None, calibrate_method=method,
                    calibration_cache_path=str(cache))


def _selection_feeds(ctx: StageContext) -> list[dict[str, np.ndarray]]:
    n = min(SELECTION_SAMPLES, len(ctx.calibration))
    batches, seen = [], 0
    for feeds in ctx.calibration.input_batches(ctx.recipe.data.batch_size):
        batches.append(feeds)
        seen += len(next(iter(feeds.values())))
        if seen >= n:
            break
    return batches


def _agreement(candidate: Path, fp32: list[list[np.ndarray]], feeds: list[dict], threads: int) -> dict:
    session = open_session(OnnxModel(path=candidate), threads=threads)
    agree = Agreement()
    for batch, ref in zip(feeds, fp32):
        agree.update(session.run(batch)[0], ref[0])
    return agree.result()


def _quantize_onnxruntime(cfg: QuantizeConfig, artifact: OnnxModel, ctx: StageContext) -> OnnxModel:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    count = _samples(cfg, ctx)
    work = ctx.out_dir / "work"
    work.mkdir()
    prepared = work / "prepared.onnx"
    ctx.log("ORT pre-processing (shape inference, graph clean-up)")
    try:
        with contextlib.chdir(work):  # ORT writes shape-inference temp files into the working directory
            quant_pre_process(str(artifact.path.absolute()), str(prepared.absolute()), skip_symbolic_shape=False,
                              auto_merge=True)
    except Exception as exc:
        raise StageError(f"ORT quantization pre-processing failed: {str(exc).splitlines()[0][:300]}") from None

    if cfg.scheme != "auto":
        candidates, reason = [cfg.scheme], "set in the recipe"
    elif ctx.machine.get("vnni"):
        candidates = ["u8s8"]
        reason = "this CPU has VNNI, where ORT's default U8S8 does not saturate"
    else:
        candidates = ["u8s8", "u8s8_reduce_range", "s8s8"]
        reason = ("this CPU lacks VNNI, where U8S8 can saturate (ORT docs); "
                  "each scheme was tried and the one that agrees best with FP32 was kept")
    threads = ctx.recipe.latency.threads or 2
    cache = work / "calibration.cache"
    results: dict[str, dict] = {}
    if len(candidates) > 1:
        feeds = _selection_feeds(ctx)
        fp32_session = open_session(OnnxModel(path=prepared), threads=threads)
        fp32 = [fp32_session.run(f) for f in feeds]
    for scheme in candidates:
        ctx.log(f"ORT quantize_static ({scheme}, {cfg.method or 'minmax'}, {count} samples)")
        dst = work / f"{scheme}.onnx"
        try:
            _ort_quantize(prepared, dst, scheme, cfg, ctx, count, cache)
        except CompressError:
            raise
        except (ValueError, KeyError) as exc:
            if cfg.ignore:
                raise InputError(f"ORT rejected the settings: {exc}", where=f"{ctx.where}.ignore") from None
            raise StageError(f"ORT quantization failed: {type(exc).__name__}: {exc}") from None
        if len(candidates) > 1:
            results[scheme] = _agreement(dst, fp32, feeds, threads)
    if len(candidates) > 1:
        key = lambda s: (round(results[s].get("top1_agreement", 0.0), 1), round(results[s]["cosine"], 4))
        chosen = max(candidates, key=key)  # ties keep the earlier (default) scheme
    else:
        chosen = candidates[0]
    path = ctx.out_dir / "model.onnx"
    (work / f"{chosen}.onnx").rename(path)
    stamp_onnx(path, ctx.details.get("stamp", {}))
    out = OnnxModel(path=path, precision="int8")
    ctx.details.update(backend="onnxruntime", samples=count, method=cfg.method or "minmax", format="QDQ",
                       per_channel=cfg.per_channel, scheme=chosen, scheme_reason=reason,
                       scheme_candidates=results, quantize_ops=count_ops(out, {"QuantizeLinear"}))
    for leftover in work.iterdir():
        leftover.unlink()
    work.rmdir()
    if ctx.details["quantize_ops"] == 0:
        out.precision = "fp32"
        out.notes.append("ORT found no layer to quantize: the artifact stays FP32")
    return out


# ---------------------------------------------------------------- dynamic (no calibration)
def _dynamic_onnxruntime(cfg: QuantizeConfig, artifact: OnnxModel, ctx: StageContext) -> OnnxModel:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if cfg.scheme == "auto":
        reduce_range = not ctx.machine.get("vnni")
        reason = ("this CPU has VNNI: full-range U8S8" if not reduce_range else
                  "this CPU lacks VNNI, where U8S8 can saturate (ORT docs): 7-bit weights (reduce_range)")
    else:
        reduce_range = cfg.scheme == "u8s8_reduce_range"
        reason = "set in the recipe"
    prepared = ctx.out_dir / "prepared.onnx"
    path = ctx.out_dir / "model.onnx"
    ctx.log(f"ORT quantize_dynamic ({'reduce_range' if reduce_range else 'full range'})")
    try:
        with contextlib.chdir(ctx.out_dir):  # ORT writes shape-inference temp files into the working directory
            quant_pre_process(str(artifact.path.absolute()), str(prepared.absolute()), skip_symbolic_shape=False,
                              auto_merge=True)
        quantize_dynamic(str(prepared), str(path), weight_type=QuantType.QInt8, per_channel=cfg.per_channel,
                         reduce_range=reduce_range, nodes_to_exclude=list(cfg.ignore) or None)
    except CompressError:
        raise
    except Exception as exc:
        raise StageError(f"ORT dynamic quantization failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None
    finally:
        prepared.unlink(missing_ok=True)
    stamp_onnx(path, ctx.details.get("stamp", {}))
    out = OnnxModel(path=path, precision="int8")
    ops = count_ops(out, {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul",
                          "DynamicQuantizeLSTM", "QAttention"})
    ctx.details.update(backend="onnxruntime", mode="dynamic", scheme="u8s8_reduce_range" if reduce_range else "u8s8",
                       scheme_reason=reason, per_channel=cfg.per_channel, quantize_ops=ops)
    if ops == 0:
        out.precision = "fp32"
        out.notes.append("ORT found no layer to quantize dynamically (MatMul, Gemm, Conv, LSTM, GRU, Attention): "
                         "the artifact stays FP32")
    return out


def _dynamic_openvino(cfg: QuantizeConfig, artifact, ctx: StageContext) -> OpenVinoModel:
    import nncf

    model = to_openvino(artifact, ctx.spec)
    ctx.log("NNCF INT8 weight compression (OpenVINO quantizes activations at run time)")
    ignored = nncf.IgnoredScope(names=list(cfg.ignore)) if cfg.ignore else None
    try:
        compressed = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM, ignored_scope=ignored)
    except nncf.ValidationError as exc:
        raise InputError(f"NNCF rejected the settings: {str(exc).splitlines()[0][:300]}", where=ctx.where) from None
    except Exception as exc:
        raise StageError(f"NNCF weight compression failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None
    out = save_openvino(compressed, ctx.out_dir / "model.xml", ctx.details.get("stamp", {}))
    from ..runtimes.openvino_runtime import core

    int8_weights = sum(op.get_type_name() == "Constant" and op.get_element_type().get_type_name() in ("u8", "i8")
                       for op in core().read_model(str(out.path)).get_ops())
    out.precision = "int8" if int8_weights else "fp32"
    ctx.details.update(backend="nncf", mode="dynamic", nncf=nncf.__version__, weight_compression="INT8_ASYM",
                       quantize_ops=int8_weights)
    if not int8_weights:
        out.notes.append("NNCF found no weights to compress: the artifact stays FP32")
    return out


@register(QuantizeConfig, accepts=_accepts)
def quantize(cfg: QuantizeConfig, artifact, ctx: StageContext):
    if artifact.precision != "fp32":
        raise InputError(f"the model is already {artifact.precision}; quantize an FP32 model", where=ctx.where)
    backends = {("static", "openvino"): _quantize_nncf, ("static", "onnxruntime"): _quantize_onnxruntime,
                ("dynamic", "openvino"): _dynamic_openvino, ("dynamic", "onnxruntime"): _dynamic_onnxruntime}
    return backends[cfg.mode, cfg.backend](cfg, artifact, ctx)
