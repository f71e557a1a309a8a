"""quantize (static PTQ): NNCF for OpenVINO, ORT quantize_static (QDQ) for ONNX Runtime."""
from __future__ import annotations

import contextlib
import difflib
import json
import shutil
import subprocess
import sys
from itertools import islice
from pathlib import Path

import numpy as np

from ..artifacts import ExecuTorchModel, OnnxModel, OpenVinoModel, TensorRTQDQModel, TorchModel
from ..convert import save_openvino, stamp_onnx, to_openvino
from ..errors import InputError, StageError, backend_call
from ..recipe import QuantizeConfig
from ..runtimes import count_ops, open_session
from ..validation import Agreement
from . import StageContext, check_notes, quantized_nothing_gate, recovery, register

DEFAULT_SAMPLES = 300
SELECTION_SAMPLES = 256


def _accepts(cfg: QuantizeConfig, target) -> dict[type, type]:
    if cfg.backend == "torch":
        return {TorchModel: TorchModel}
    if cfg.backend == "tensorrt":
        return {TorchModel: TensorRTQDQModel, OnnxModel: TensorRTQDQModel}
    if cfg.backend == "executorch":
        return {TorchModel: ExecuTorchModel}
    if cfg.backend == "openvino":
        return {TorchModel: OpenVinoModel, OnnxModel: OpenVinoModel, OpenVinoModel: OpenVinoModel}
    return {OnnxModel: OnnxModel}


def _samples(cfg: QuantizeConfig, ctx: StageContext) -> int:
    return min(cfg.samples or DEFAULT_SAMPLES, len(ctx.calibration))


class CalibrationSamples:
    """Re-iterable stream of single samples for NNCF (it may pass over the data more than once):
    numpy arrays for OpenVINO models, torch tensors (a tuple for several inputs) for torch models."""

    def __init__(self, ctx: StageContext, count: int, as_torch: bool = False):
        self.ctx, self.count, self.as_torch = ctx, count, as_torch

    def __iter__(self):
        import torch

        names = [s.name for s in self.ctx.spec.inputs]
        for feeds in islice(self.ctx.calibration.samples(), self.count):
            values = [torch.from_numpy(feeds[n]) if self.as_torch else feeds[n] for n in names]
            yield values[0] if len(values) == 1 else (tuple(values) if self.as_torch else values)

    def __len__(self):
        return self.count


# ---------------------------------------------------------------- OpenVINO via NNCF
def call_nncf(fn, ctx: StageContext, has_ignore: bool, failure: str):
    """Run an NNCF call; its complaints about settings become an exit-2 error at the stage's YAML
    path, anything else a stage failure that says what failed."""
    import nncf

    with backend_call(failure, where=ctx.where, settings_errors=(nncf.ValidationError,),
                      settings_where=f"{ctx.where}.ignore" if has_ignore else ctx.where,
                      rejected="NNCF rejected the settings"):
        return fn()


NNCF_ESTIMATORS = {"minmax": "MINMAX", "percentile": "MEAN_QUANTILE", "histogram": "HISTOGRAM"}


def _nncf_settings(cfg: QuantizeConfig, family: str) -> dict:
    """The recipe's NNCF settings as one dict (what a calibration candidate varies)."""
    bias = cfg.bias_correction or ("fast" if family == "transformer" else "full")
    return {"estimator": None if cfg.method == "auto" else cfg.method, "bias_correction": bias, "preset": cfg.preset,
            "channel_alignment": False, "smooth_quant": None, "model_type": family}


def _nncf_args(settings: dict, cfg: QuantizeConfig, float_weights: bool = False) -> dict:
    """nncf.quantize's keyword arguments for one settings dict (quantize_with_accuracy_control takes the same,
    with `advanced_parameters` named `advanced_quantization_parameters`)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    advanced = {}
    if settings["estimator"] is not None:
        advanced["activations_range_estimator_params"] = getattr(RangeEstimatorParametersSet,
                                                                 NNCF_ESTIMATORS[settings["estimator"]])
    if settings["channel_alignment"]:
        advanced["disable_channel_alignment"] = False
    if settings["smooth_quant"] is not None:
        advanced["smooth_quant_alphas"] = AdvancedSmoothQuantParameters(matmul=settings["smooth_quant"])
    if float_weights:   # FakeQuantize on float weights, so that sensitivity can bypass a layer's quantizers
        advanced["backend_params"] = {"compress_weights": False}
    preset = None if settings["preset"] is None else \
        {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}[settings["preset"]]
    return {"preset": preset, "model_type": nncf.ModelType.TRANSFORMER if settings["model_type"] == "transformer"
            else None, "ignored_scope": nncf.IgnoredScope(names=list(cfg.ignore)) if cfg.ignore else None,
            "fast_bias_correction": settings["bias_correction"] == "fast",
            "advanced_parameters": AdvancedQuantizationParameters(**advanced)}


def _nncf_quantize(model, settings: dict, cfg: QuantizeConfig, ctx: StageContext, count: int,
                   float_weights: bool = False):
    import nncf

    args = _nncf_args(settings, cfg, float_weights)
    return call_nncf(lambda: nncf.quantize(model, nncf.Dataset(CalibrationSamples(ctx, count)), subset_size=count,
                                           **args), ctx, bool(cfg.ignore), "NNCF quantization failed")


def _nncf_variants(best: dict) -> list[tuple[str, dict]]:
    """Second round of `method: auto`: NNCF's accuracy-preserving options on the best range estimator."""
    out = [("channel alignment", {**best, "channel_alignment": True}),
           ("fast bias correction", {**best, "bias_correction": "fast"})]
    if best["model_type"] == "transformer":
        out += [(f"SmoothQuant alpha {a}", {**best, "smooth_quant": a}) for a in (0.5, 0.8)]
        out.append(("no SmoothQuant", {**best, "smooth_quant": -1}))
    else:
        out.append(("preset mixed", {**best, "preset": "mixed"}))
    return out


def _quantize_nncf(cfg: QuantizeConfig, artifact, ctx: StageContext) -> OpenVinoModel:
    import nncf

    from ..families import attention_matmuls_openvino, decide
    from .calibration import search

    model = to_openvino(artifact, ctx.spec)
    count = _samples(cfg, ctx)
    if cfg.ignore:
        recovery.check_ignore(cfg, [op.get_friendly_name() for op in model.get_ordered_ops()], ctx.where,
                              "OpenVINO model")
    family, why = decide(cfg.model_type, attention_matmuls_openvino(model))
    settings = _nncf_settings(cfg, family)

    def build(candidate: dict, folder: Path) -> OpenVinoModel:
        ctx.log(f"NNCF calibration on {count} samples ({_describe(candidate)})")
        built = save_openvino(_nncf_quantize(model, candidate, cfg, ctx, count), folder / "model.xml",
                              ctx.details.get("stamp", {}))
        built.precision = "int8"
        return built

    if cfg.method == "auto":   # calibration first; sensitivity and fallback then start from the chosen settings
        first = [(name, {**settings, "estimator": est}) for name, est in
                 (("nncf default", None), ("minmax", "minmax"), ("percentile", "percentile"),
                  ("histogram", "histogram"))]
        out, settings = search(ctx, first, _nncf_variants, build, ctx.out_dir)
    elif not recovery.wanted(cfg):
        out = build(settings, ctx.out_dir)
    if recovery.wanted(cfg):
        work = ctx.out_dir / "work"
        work.mkdir()
        quantized = None
        if cfg.sensitivity:
            from openvino._offline_transformations import compress_quantize_weights_transformation

            ctx.log(f"NNCF calibration on {count} samples (float weights, for the sensitivity analysis)")
            quantized = _nncf_quantize(model, settings, cfg, ctx, count, float_weights=True)
            recovery.openvino_sensitivity(cfg, ctx, quantized, work)
            compress_quantize_weights_transformation(quantized)   # INT8 weights, as nncf.quantize gives them
        if cfg.accuracy_control is not None:
            quantized = recovery.openvino_accuracy_control(
                cfg, ctx, model, nncf.Dataset(CalibrationSamples(ctx, count)), count, _nncf_args(settings, cfg), work,
                lambda fn: call_nncf(fn, ctx, bool(cfg.ignore), "NNCF quantization with accuracy control failed"))
        out = save_openvino(quantized, ctx.out_dir / "model.xml", ctx.details.get("stamp", {}))
        out.precision = "int8"
        shutil.rmtree(work)
    ctx.details.update(backend="nncf", nncf=nncf.__version__, samples=count,
                       preset=settings["preset"] or ("mixed (NNCF default for transformers)" if family == "transformer"
                                                     else "performance (NNCF default)"),
                       method=cfg.method or "nncf default", estimator=settings["estimator"] or "nncf default",
                       bias_correction=settings["bias_correction"], model_type=family, model_type_reason=why,
                       channel_alignment=settings["channel_alignment"],
                       smooth_quant=settings["smooth_quant"], quantize_ops=count_ops(out, {"FakeQuantize"}))
    if ctx.details["quantize_ops"] == 0:
        out.precision = "fp32"
        out.notes.append("NNCF found no layer to quantize: the artifact stays FP32")
    return out


def _describe(settings: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in settings.items() if v not in (None, False))


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
        self.batch = max(d for d in range(1, min(ctx.resolved.batch_size, count) + 1) if count % d == 0)
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


WEIGHTED_OPS = ("MatMul", "Gemm", "Conv")
ORT_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy", "distribution": "Distribution"}


def _ort_settings(cfg: QuantizeConfig, scheme: str, family: str) -> dict:
    return {"calibration": cfg.method or "minmax", "scheme": scheme, "per_channel": cfg.per_channel,
            "symmetric_activations": False, "moving_average": False, "weighted_ops_only": family == "transformer"}


def _ort_quantize(src: Path, dst: Path, settings: dict, cfg: QuantizeConfig, ctx: StageContext, count: int,
                  work: Path, exclude: list[str] | None = None) -> None:
    """Quantize `src` with one settings dict; calibration ranges are cached in `work` per calibration setting, so
    later calls (other options, fallback variants) skip calibration. `exclude` replaces `ignore`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    act, weight, reduce_range = SCHEMES[settings["scheme"]]
    extra = {"ActivationSymmetric": settings["symmetric_activations"], "CalibMovingAverage": settings["moving_average"],
             "MatMulConstBOnly": settings["weighted_ops_only"]}
    # transformers: only the layers with weights (measured on all-MiniLM-L6-v2: mean cosine 0.35 with every op
    # quantized, 0.93 with the weighted MatMuls only; ORT's docs recommend mode dynamic for transformers)
    ops = list(WEIGHTED_OPS) if settings["weighted_ops_only"] else None
    # ranges depend on the calibration settings only: candidates that share them share one calibration pass
    cache = work / f"ranges-{settings['calibration']}-{int(settings['moving_average'])}.json"
    with backend_call("ORT quantization failed", where=ctx.where,
                      settings_errors=(ValueError, KeyError) if cfg.ignore else (),
                      settings_where=f"{ctx.where}.ignore", rejected="ORT rejected the settings"):
        quantize_static(str(src), str(dst), _Reader(ctx, count), quant_format=QuantFormat.QDQ,
                        per_channel=settings["per_channel"], reduce_range=reduce_range,
                        activation_type=getattr(QuantType, act), weight_type=getattr(QuantType, weight),
                        nodes_to_exclude=(list(cfg.ignore) if exclude is None else exclude) or None,
                        op_types_to_quantize=ops,
                        calibrate_method=getattr(CalibrationMethod, ORT_METHODS[settings["calibration"]]),
                        extra_options=extra, calibration_cache_path=str(cache))


def _selection_feeds(ctx: StageContext) -> list[dict[str, np.ndarray]]:
    n = min(SELECTION_SAMPLES, len(ctx.calibration))
    batches, seen = [], 0
    for feeds in ctx.calibration.input_batches(ctx.resolved.batch_size):
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


def _schemes(cfg: QuantizeConfig, ctx: StageContext) -> tuple[list[str], str]:
    if cfg.scheme != "auto":
        return [cfg.scheme], "set in the recipe"
    if ctx.resolved.vnni:
        return ["u8s8"], "this CPU has VNNI, where ORT's default U8S8 does not saturate"
    return (["u8s8", "u8s8_reduce_range", "s8s8"],
            "this CPU lacks VNNI, where U8S8 can saturate (ORT docs); each scheme was tried and the one that agrees "
            "best with FP32 was kept")


def _ort_variants(schemes: list[str]):
    """Second round of `method: auto`: ORT's accuracy-preserving options on the best calibration method."""
    def variants(best: dict) -> list[tuple[str, dict]]:
        out = [(f"scheme {s}", {**best, "scheme": s}) for s in schemes if s != best["scheme"]]
        out += [("symmetric activations", {**best, "symmetric_activations": True}),
                ("per-tensor weights" if best["per_channel"] else "per-channel weights",
                 {**best, "per_channel": not best["per_channel"]})]
        if best["calibration"] == "minmax":
            out.append(("moving-average min/max", {**best, "moving_average": True}))
        return out
    return variants


def _quantize_onnxruntime(cfg: QuantizeConfig, artifact: OnnxModel, ctx: StageContext) -> OnnxModel:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ..families import attention_matmuls_onnx, decide
    from .calibration import search

    count = _samples(cfg, ctx)
    work = ctx.out_dir / "work"
    work.mkdir()
    prepared = work / "prepared.onnx"
    ctx.log("ORT pre-processing (shape inference, graph clean-up)")
    with backend_call("ORT quantization pre-processing failed", where=ctx.where), \
            contextlib.chdir(work):  # ORT writes shape-inference temp files into the working directory
        quant_pre_process(str(artifact.path.absolute()), str(prepared.absolute()), skip_symbolic_shape=False,
                          auto_merge=True)
    if cfg.ignore:
        recovery.check_ignore(cfg, recovery.onnx_node_names(prepared), ctx.where, "ONNX graph")
    family, why = decide(cfg.model_type, attention_matmuls_onnx(prepared))
    candidates, reason = _schemes(cfg, ctx)
    threads = ctx.threads
    results: dict[str, dict] = {}
    path = ctx.out_dir / "model.onnx"

    def build(settings: dict, folder: Path) -> OnnxModel:
        ctx.log(f"ORT quantize_static ({_describe(settings)}, {count} samples)")
        _ort_quantize(prepared, folder / "model.onnx", settings, cfg, ctx, count, work)
        return OnnxModel(path=folder / "model.onnx", precision="int8")

    if cfg.method == "auto":
        first = [(m, _ort_settings(cfg, candidates[0], family) | {"calibration": m}) for m in ORT_METHODS]
        out, settings = search(ctx, first, _ort_variants(candidates), build, ctx.out_dir)
        chosen, reason = settings["scheme"], "chosen with the calibration settings by the recipe's metric"
    else:
        if len(candidates) > 1:
            feeds = _selection_feeds(ctx)
            fp32_session = open_session(OnnxModel(path=prepared), threads=threads)
            fp32 = [fp32_session.run(f) for f in feeds]
        for scheme in candidates:
            (work / scheme).mkdir()
            build(_ort_settings(cfg, scheme, family), work / scheme)
            if len(candidates) > 1:
                results[scheme] = _agreement(work / scheme / "model.onnx", fp32, feeds, threads)
        if len(candidates) > 1:
            def key(s):
                return (round(results[s].get("top1_agreement", 0.0), 1), round(results[s]["cosine"], 4))
            chosen = max(candidates, key=key)  # ties keep the earlier (default) scheme
        else:
            chosen = candidates[0]
        settings = _ort_settings(cfg, chosen, family)
        (work / chosen / "model.onnx").rename(path)
        out = OnnxModel(path=path, precision="int8")
    if recovery.wanted(cfg):   # sensitivity / fallback from the chosen settings, calibration cache reused
        recovery.onnxruntime(cfg, ctx, prepared, out.path,
                             lambda dst, exclude: _ort_quantize(prepared, dst, settings, cfg, ctx, count, work, exclude))
    stamp_onnx(out.path, ctx.details.get("stamp", {}))
    ctx.details.update(backend="onnxruntime", samples=count, method=cfg.method or "minmax",
                       calibration=settings["calibration"], format="QDQ", per_channel=settings["per_channel"],
                       scheme=chosen, scheme_reason=reason, scheme_candidates=results,
                       symmetric_activations=settings["symmetric_activations"],
                       moving_average=settings["moving_average"], model_type=family, model_type_reason=why,
                       weighted_ops_only=settings["weighted_ops_only"],
                       quantize_ops=count_ops(out, {"QuantizeLinear"}))
    shutil.rmtree(work)
    if ctx.details["quantize_ops"] == 0:
        out.precision = "fp32"
        out.notes.append("ORT found no layer to quantize: the artifact stays FP32")
    return out


# ---------------------------------------------------------------- TensorRT QDQ via ModelOpt
def _calibration_array(ctx: StageContext, count: int) -> dict[str, np.ndarray]:
    names = [s.name for s in ctx.spec.inputs]
    parts: dict[str, list] = {n: [] for n in names}
    for feeds in islice(ctx.calibration.samples(), count):
        for n in names:
            parts[n].append(feeds[n])
    return {n: np.concatenate(v) for n, v in parts.items()}   # samples come with a batch dim of 1


def _quantize_modelopt(cfg: QuantizeConfig, artifact, ctx: StageContext) -> TensorRTQDQModel:
    """NVIDIA ModelOpt's ONNX PTQ on CPU: TensorRT's placement of symmetric INT8 QDQ (per-channel
    weights, per-tensor activations, one DQ at residual adds), checked against TensorRT's rules."""
    import importlib.util
    import re

    if importlib.util.find_spec("modelopt") is None:
        raise InputError("backend tensorrt needs NVIDIA ModelOpt, which is not installed", where=f"{ctx.where}.backend",
                         hint="Install the extra: pip install 'compress[tensorrt]' (never nvidia-modelopt[onnx]: it "
                              "replaces onnxruntime).")
    from ..convert import torch_to_onnx
    from ..runtimes.tensorrt_runtime import EMULATED, checks

    work = ctx.out_dir / "work"
    work.mkdir()
    source = work / "fp32.onnx"   # ModelOpt rewrites its input file in place: give it a copy
    if isinstance(artifact, TorchModel):
        torch_to_onnx(artifact.module, ctx.spec, source)
    else:
        shutil.copyfile(artifact.path, source)
    names = [node.name for node in _onnx_nodes(source)]
    missing = [n for n in cfg.ignore if n not in names]
    if missing:
        close = difflib.get_close_matches(missing[0], names, n=3)
        raise InputError(f"ignore names node '{missing[0]}', which the ONNX graph does not have",
                         where=f"{ctx.where}.ignore",
                         hint=f"Close names: {', '.join(close)}." if close else "List node names with Netron.")
    count = _samples(cfg, ctx)
    data = _calibration_array(ctx, count)
    batch = max(d for d in range(1, min(ctx.resolved.batch_size, count) + 1) if count % d == 0)
    shapes = ",".join(f"{s.name}:{'x'.join(str(d) for d in [batch, *s.shape[1:]])}" for s in ctx.spec.inputs)
    high = cfg.high_precision or ctx.resolved.high_precision or "fp32"
    np.savez(work / "calibration.npz", **data)

    def build(settings: dict, folder: Path, exclude: list[str] | None = None) -> TensorRTQDQModel:
        method = settings["calibration"]
        ctx.log(f"ModelOpt ONNX PTQ (int8, {method}, {count} samples, {high} for the rest; CPU calibration)")
        output = folder / "model.onnx"
        fresh = work / f"fp32-{method}.onnx"   # ModelOpt rewrites its input in place: each run gets a copy
        shutil.copyfile(source, fresh)
        args = {"source": str(fresh), "calibration": str(work / "calibration.npz"), "method": method,
                "shapes": shapes, "output": str(output), "high_precision": high,
                "exclude": [f"^{re.escape(n)}$" for n in (cfg.ignore if exclude is None else exclude)]}
        (work / "args.json").write_text(json.dumps(args))
        # its own process: importing ModelOpt's ONNX quantization patches ONNX Runtime's quantizer in place
        done = subprocess.run([sys.executable, "-m", "compress.tensorrt.modelopt_worker", str(work / "args.json")],
                              capture_output=True, text=True, cwd=work)
        if done.returncode != 0 or not output.is_file():
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
            raise StageError(f"ModelOpt ONNX quantization failed: {lines[-1] if lines else f'exit {done.returncode}'}",
                             where=ctx.where)
        return TensorRTQDQModel(path=output, precision="int8")

    if cfg.method == "auto":
        from .calibration import search

        first = [(m, {"calibration": m}) for m in ("max", "entropy")]
        out, settings = search(ctx, first, lambda best: [], build, ctx.out_dir)
        method, path = settings["calibration"], out.path
    else:
        method = {None: "max", "minmax": "max", "entropy": "entropy"}[cfg.method]
        path = build({"calibration": method}, ctx.out_dir).path
    if recovery.wanted(cfg):   # layers kept in float by ModelOpt's nodes_to_exclude; each variant recalibrates
        def variant(dst: Path, exclude: list[str]) -> None:
            folder = work / dst.stem
            folder.mkdir()
            build({"calibration": method}, folder, exclude).path.rename(dst)

        recovery.onnxruntime(cfg, ctx, source, path, variant, measured=EMULATED)
    shutil.rmtree(work)
    stamp_onnx(path, ctx.details.get("stamp", {}))
    out = TensorRTQDQModel(path=path, precision="int8")
    rows = checks(path, tensorrt=None)
    ctx.details.update(backend="modelopt", modelopt=_version("nvidia-modelopt"), samples=count, method=method,
                       high_precision=high, format="QDQ (TensorRT explicit quantization)", tensorrt_checks=rows,
                       quantize_ops=count_ops(out, {"QuantizeLinear"}))
    out.notes.append("accuracy and latency here are emulated (ONNX Runtime CPU), not the engine; `compress build` "
                     "measures the engine on the device")
    if ctx.details["quantize_ops"] == 0:
        out.precision = "fp32"
        out.notes.append("ModelOpt found no layer to quantize: the artifact stays FP32")
    return out


def _onnx_nodes(path: Path):
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.node


def _version(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------- ExecuTorch: PT2E with XNNPACK's quantizer
def _quantize_pt2e(cfg: QuantizeConfig, artifact: TorchModel, ctx: StageContext) -> ExecuTorchModel:
    """torchao's PT2E flow with ExecuTorch's XNNPACKQuantizer (symmetric INT8, per-channel weights), calibrated
    on `data.calibration`, lowered to XNNPACK; `ignore` keeps modules (by name) in FP32. Sensitivity and
    accuracy_control rank the convolutions and linear layers on the .pte itself and keep the chosen ones out of
    the quantizer (its filter function); PT2E has no calibration cache, so each variant calibrates afresh."""
    import copy

    from ..runtimes.executorch_runtime import WHERE_TIMED, require
    from .prune import _ignored

    require(f"{ctx.where}.backend")
    module = copy.deepcopy(artifact.module).eval()
    if cfg.ignore:
        _ignored(module, cfg.ignore, ctx.where)   # unknown names: one clear error with the close ones
    count = _samples(cfg, ctx)
    ctx.log(f"PT2E with XNNPACKQuantizer: calibrating on {count} samples")
    path = ctx.out_dir / "model.pte"
    counts = _pt2e_program(module, cfg, ctx, list(cfg.ignore), count, path)
    if recovery.wanted(cfg):
        import torch

        from ..runtimes.executorch_runtime import export_program, lower

        fp32 = ctx.out_dir / "fp32-variant.pte"
        lower(export_program(module, ctx.spec, ctx.where), fp32, quantized=False, where=ctx.where)
        layers = [name for name, m in module.named_modules()
                  if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear))
                  and name not in cfg.ignore]
        counter, variants = iter(range(1_000_000)), {}

        def build(exclude: list[str]) -> ExecuTorchModel:
            dst = ctx.out_dir / f"variant{next(counter)}.pte"
            variants[dst] = _pt2e_program(module, cfg, ctx, [*cfg.ignore, *exclude], count, dst)
            return ExecuTorchModel(path=dst, precision="int8")

        best = recovery.rank_and_fall_back(cfg, ctx, layers, {n: n for n in layers}, ExecuTorchModel(path=fp32),
                                           ExecuTorchModel(path=path, precision="int8"), build,
                                           "ExecuTorch XNNPACK, each variant calibrated afresh", WHERE_TIMED)
        if best is not None:
            shutil.copyfile(best.path, path)
            counts = variants[best.path]
        for leftover in [fp32, *ctx.out_dir.glob("variant*.pte")]:
            leftover.unlink()
    out = ExecuTorchModel(path=path, precision="int8" if counts["weighted_int8"] else "fp32", notes=[WHERE_TIMED])
    ctx.details.update(backend="executorch", quantizer="XNNPACKQuantizer (symmetric INT8)", samples=count,
                       method="minmax" + (" (auto: XNNPACK's quantizer offers min/max observers only)"
                                          if cfg.method == "auto" else ""),
                       per_channel=cfg.per_channel, quantize_ops=counts["weighted_int8"],
                       weighted_layers=counts["weighted"], ignored=list(cfg.ignore))
    if not counts["weighted_int8"]:
        out.notes.append("XNNPACK's quantizer found no layer to quantize: the artifact stays FP32")
    return out


def _pt2e_program(module, cfg: QuantizeConfig, ctx: StageContext, ignore: list[str], count: int, path: Path) -> dict:
    """Quantize `module` with XNNPACK's quantizer, modules named in `ignore` left in float, calibrate on `count`
    samples, lower to `path`; returns the layer counts of the converted graph."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import get_module_name_filter

    from ..runtimes.executorch_runtime import export_program, lower

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=cfg.per_channel))
    if ignore:
        keep = [get_module_name_filter(name) for name in ignore]
        quantizer.set_filter_function(lambda node: not any(f(node) for f in keep))
    names = [s.name for s in ctx.spec.inputs]
    with backend_call("PT2E quantization failed", where=ctx.where):
        prepared = prepare_pt2e(export_program(module, ctx.spec, ctx.where).module(), quantizer)
        with torch.no_grad():
            for feeds in islice(ctx.calibration.samples(), count):   # one sample at a time: the export's batch
                prepared(*[torch.from_numpy(feeds[n]) for n in names])
        converted = convert_pt2e(prepared)
    counts = _pt2e_counts(converted)
    ctx.log(f"lowering the quantized program to XNNPACK ({path.name})")
    lower(torch.export.export(converted, ctx.spec.example_tensors(batch=1)), path, quantized=True, where=ctx.where)
    return counts


def _pt2e_counts(graph_module) -> dict:
    """Convolutions and linear layers of a converted PT2E graph, and how many read an INT8 (dequantized) weight."""
    weighted = int8 = 0
    for node in graph_module.graph.nodes:
        target = str(node.target)
        if node.op == "call_function" and ("conv" in target or "linear" in target) and len(node.args) > 1:
            weighted += 1
            weight = node.args[1]
            int8 += int(hasattr(weight, "target") and "dequantize" in str(weight.target))
    return {"weighted": weighted, "weighted_int8": int8}


# ---------------------------------------------------------------- dynamic (no calibration)
def _dynamic_onnxruntime(cfg: QuantizeConfig, artifact: OnnxModel, ctx: StageContext) -> OnnxModel:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if cfg.scheme == "auto":
        reduce_range = not ctx.resolved.vnni
        reason = ("this CPU has VNNI: full-range U8S8" if not reduce_range else
                  "this CPU lacks VNNI, where U8S8 can saturate (ORT docs): 7-bit weights (reduce_range)")
    else:
        reduce_range = cfg.scheme == "u8s8_reduce_range"
        reason = "set in the recipe"
    prepared = ctx.out_dir / "prepared.onnx"
    path = ctx.out_dir / "model.onnx"
    ctx.log(f"ORT quantize_dynamic ({'reduce_range' if reduce_range else 'full range'})")
    try:
        with backend_call("ORT dynamic quantization failed", where=ctx.where):
            with contextlib.chdir(ctx.out_dir):  # ORT writes shape-inference temp files into the working directory
                quant_pre_process(str(artifact.path.absolute()), str(prepared.absolute()), skip_symbolic_shape=False,
                                  auto_merge=True)
            if cfg.ignore:
                recovery.check_ignore(cfg, recovery.onnx_node_names(prepared), ctx.where, "ONNX graph")
            quantize_dynamic(str(prepared), str(path), weight_type=QuantType.QInt8, per_channel=cfg.per_channel,
                             reduce_range=reduce_range, nodes_to_exclude=list(cfg.ignore) or None)
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
    float_weights = _weight_elements(model, ("f32", "f16", "bf16"))   # before: NNCF compresses in place
    recurrent = sorted({op.get_type_name() for op in model.get_ops() if op.get_type_name().endswith("Sequence")})
    ctx.log("NNCF INT8 weight compression (OpenVINO quantizes activations at run time)")
    ignored = nncf.IgnoredScope(names=list(cfg.ignore)) if cfg.ignore else None
    compressed = call_nncf(lambda: nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM,
                                                         ignored_scope=ignored),
                           ctx, bool(cfg.ignore), "NNCF weight compression failed")
    out = save_openvino(compressed, ctx.out_dir / "model.xml", ctx.details.get("stamp", {}))
    int8_tensors = sum(_is_weight(op, ("u8", "i8")) for op in compressed.get_ops())
    share = _weight_elements(compressed, ("u8", "i8")) / max(float_weights, 1)
    out.precision = "int8" if int8_tensors else "fp32"
    ctx.details.update(backend="nncf", mode="dynamic", nncf=nncf.__version__, weight_compression="INT8_ASYM",
                       quantize_ops=int8_tensors, int8_weight_share=round(share, 4))
    if not int8_tensors:
        out.notes.append("NNCF found no weights to compress: the artifact stays FP32")
    elif share < 0.5:
        why = (f"; {', '.join(recurrent)} weights stay FP32 (NNCF weight compression covers MatMul, "
               "Convolution and embedding weights only; ONNX Runtime's dynamic quantization covers LSTM/GRU)"
               if recurrent else "")
        out.notes.append(f"only {share:.1%} of the weights became INT8{why}: expect little gain in size or speed")
    return out


def _is_weight(op, types: tuple[str, ...]) -> bool:
    """A constant with two or more dimensions > 1: a weight matrix or kernel, not a bias, scale or zero point."""
    if op.get_type_name() != "Constant" or op.get_element_type().get_type_name() not in types:
        return False
    shape = op.get_output_partial_shape(0)
    return shape.is_static and sum(d > 1 for d in shape.to_shape()) >= 2


def _weight_elements(model, types: tuple[str, ...]) -> int:
    import math

    return sum(math.prod(op.get_output_partial_shape(0).to_shape()) for op in model.get_ops() if _is_weight(op, types))


def _dynamic_torch(cfg: QuantizeConfig, artifact: TorchModel, ctx: StageContext) -> TorchModel:
    """torchao (the successor of the deprecated torch.ao.quantization): INT8 per-channel weights and
    per-token INT8 activations quantized at run time, for nn.Linear layers."""
    import copy

    import torch
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8Tensor, quantize_

    from ..torchio import save_module

    module = copy.deepcopy(artifact.module).eval()
    ctx.log("torchao Int8DynamicActivationInt8Weight on nn.Linear layers")
    with backend_call("torchao quantization failed", where=ctx.where):
        # set_inductor_config=False: leave torch's global compiler settings alone
        quantize_(module, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    done = sum(isinstance(m.weight, Int8Tensor) for m in linears)
    others = sorted({type(m).__name__ for m in module.modules()
                     if isinstance(m, (torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN, torch.nn.Conv1d, torch.nn.Conv2d,
                                       torch.nn.Conv3d))})
    path = save_module(module, ctx.out_dir, quantization="torchao.Int8DynamicActivationInt8WeightConfig")
    out = TorchModel(path=path, module=module, precision="int8" if done else "fp32")
    ctx.details.update(backend="torchao", mode="dynamic", quantize_ops=done, linear_layers=len(linears),
                       torchao_config="Int8DynamicActivationInt8WeightConfig")
    if not done:
        out.notes.append("torchao found no nn.Linear layer to quantize: the artifact stays FP32")
    if others:
        out.notes.append(f"{', '.join(others)} layers stay FP32: torchao's dynamic INT8 covers nn.Linear only "
                         "(export to ONNX Runtime for INT8 LSTM/GRU/conv)")
    out.notes.append("timed in eager mode; torchao's INT8 kernels are fastest under torch.compile")
    return out


def _forbids_after(cfg: QuantizeConfig) -> dict[str, tuple[str, str | None]]:
    """After quantizing: no pruning, no second quantization; after torchao, no export either."""
    once = ("the model is already quantized by {at}; quantize once", "Remove one of the quantize stages.")
    rules = {"prune": ("prune before quantizing: {at} already quantized the model", None), "quantize": once,
             "qat": once}
    if cfg.backend == "torch":
        torch_only = ("{at} quantized the model with torchao (backend torch), which cannot be exported to ONNX or "
                      "OpenVINO", "For ONNX Runtime or OpenVINO, put `export` first and quantize with backend "
                              "onnxruntime or openvino; backend torch is for models that ship as torch.")
        rules.update(export=torch_only, compile=torch_only)
    return rules


def _reads(cfg: QuantizeConfig) -> tuple[str, ...]:
    """ONNX Runtime's `scheme: auto` picks by the CPU's VNNI (and, without it, by measured agreement);
    TensorRT's QDQ keeps the unquantized layers in the target's dtype unless the stage says."""
    if cfg.backend == "onnxruntime" and cfg.scheme == "auto":
        return ("vnni", "threads", "batch_size")
    if cfg.backend == "tensorrt" and cfg.high_precision is None:
        return ("high_precision",)
    return ()


def _notes(record: dict) -> list[str]:
    d = record["details"]
    lines = []
    if "model_type" in d:
        lines.append(f"model type {d['model_type']} ({d['model_type_reason']})")
    tried = d.get("calibration_candidates")
    if tried:
        ranking = d["calibration_ranking"]
        lines.append(f"method auto, {len(tried)} candidates by {ranking['metric']} on {ranking['samples']} eval samples"
                     + ("" if ranking["separated"] else " (the metric did not separate them: the default was kept)")
                     + ": " + "; ".join((f"{t['name']} {next(iter(t['metric'].values())):.2f} {t['latency_ms']:.2f} ms"
                                         if t["metric"] else f"{t['name']} failed in the library")
                                        + (" (kept)" if t["chosen"] else "") for t in tried))
    if "scheme" not in d:
        return lines + check_notes(record) + recovery.notes(record)
    schemes = d.get("scheme_candidates")
    tried_schemes = ": " + ", ".join(f"{k} top-1 agreement {v.get('top1_agreement', float('nan')):.2f}%, "
                                     f"cos {v['cosine']:.4f}" for k, v in schemes.items()) if schemes else ""
    return [*lines, *recovery.notes(record), f"ORT scheme {d['scheme']} ({d['scheme_reason']}){tried_schemes}"]


def _check(cfg: QuantizeConfig, state) -> None:
    """accuracy_control ranks layers on held-out data: without data.eval it has nothing to rank on."""
    from ..errors import ChainError

    if cfg.accuracy_control is not None and state.recipe.data.eval is None:
        raise ChainError("accuracy_control needs eval data to rank layers by the metric, and the recipe has none",
                         where=f"{state.where}.accuracy_control",
                         hint="Add data.eval (held-out samples), or remove accuracy_control.")


@register(QuantizeConfig, accepts=_accepts, quantizes=lambda cfg: cfg.backend, forbids_after=_forbids_after,
          reads=_reads, gates=lambda record: quantized_nothing_gate(record) + recovery.gates(record), notes=_notes,
          sections=recovery.sections, check=_check)
def quantize(cfg: QuantizeConfig, artifact, ctx: StageContext):
    if artifact.precision != "fp32":
        raise InputError(f"the model is already {artifact.precision}; quantize an FP32 model", where=ctx.where)
    backends = {("static", "openvino"): _quantize_nncf, ("static", "onnxruntime"): _quantize_onnxruntime,
                ("static", "tensorrt"): _quantize_modelopt, ("static", "executorch"): _quantize_pt2e,
                ("dynamic", "openvino"): _dynamic_openvino, ("dynamic", "onnxruntime"): _dynamic_onnxruntime,
                ("dynamic", "torch"): _dynamic_torch}
    return backends[cfg.mode, cfg.backend](cfg, artifact, ctx)
