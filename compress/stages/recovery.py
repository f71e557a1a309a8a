"""Accuracy recovery for static INT8: per-layer sensitivity and automatic mixed-precision fallback.

Sensitivity (AIMET QuantAnalyzer's two views): for every quantizable layer, the metric with only that layer
quantized and with only that layer left in float, on the first `samples` eval samples, on the stage's own
runtime. Calibration statistics are reused: ONNX Runtime re-quantizes from its calibration cache with a different
`nodes_to_exclude`; OpenVINO variants bypass NNCF's FakeQuantize nodes of the already-calibrated model.

Fallback: OpenVINO uses `nncf.quantize_with_accuracy_control` with our validation function; ONNX Runtime keeps
layers in float greedily from the sensitivity ranking (`nodes_to_exclude`) until the drop is within `max_drop` or
`max_fallback_layers` are spent. Each step's metric and latency is recorded in `details["fallback"]`.
"""
from __future__ import annotations

import difflib
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from ..artifacts import OnnxModel, OpenVinoModel, TorchModel
from ..errors import InputError
from ..recipe import QuantizeConfig
from . import StageContext

SENSITIVITY_SAMPLES = 200
WEIGHTED_ONNX = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
WEIGHTED_OPENVINO = {"Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul"}
LATENCY_WARMUP, LATENCY_RUNS = 10, 60


# ---------------------------------------------------------------- shared
def wanted(cfg: QuantizeConfig) -> bool:
    return cfg.mode == "static" and (cfg.accuracy_control is not None or cfg.sensitivity)


def check_ignore(cfg: QuantizeConfig, names: list[str], where: str, what: str) -> None:
    """Every `ignore` name must be a node of the graph; say which names are close when one is not."""
    known = set(names)
    for name in cfg.ignore:
        if name not in known:
            close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
            raise InputError(f"ignore names '{name}', which the {what} does not have",
                             where=f"{where}.ignore",
                             hint=f"Close names: {', '.join(close)}." if close else
                             f"List the node names with Netron, or run with `sensitivity: true` to see the {what}'s "
                             "quantizable layers.")


def torch_modules(ctx: StageContext) -> set[str] | None:
    ref = ctx.reference
    if isinstance(ref, TorchModel) and ref.module is not None:
        return {name for name, _ in ref.module.named_modules() if name}
    return None


def module_name(node: str, modules: set[str] | None) -> str | None:
    """The PyTorch module a graph node came from: ONNX export scopes (`/blocks/blocks.1/expand/expand.0/Conv`,
    also in OpenVINO IR converted from ONNX) or OpenVINO's torch frontend (`__module.blocks.1.expand.0/aten::...`)."""
    if not modules:
        return None
    if node.startswith("__module."):
        name = node[len("__module."):].split("/", 1)[0]
        return name if name in modules else None
    path = local = ""
    found = None
    for part in [p for p in node.split("/") if p]:
        child = part[len(local) + 1:] if local and part.startswith(local + ".") else part
        candidate = f"{path}.{child}" if path else child
        if candidate not in modules:
            break
        path, local, found = candidate, part, candidate
    return found


@dataclass
class Judge:
    """The metric that ranks layers and gates the fallback, on the first `samples` eval samples."""
    ctx: StageContext
    metric: str | None      # None: the recipe's primary metric
    samples: int
    higher: bool
    name: str = ""

    def __call__(self, model) -> float:
        name, value = self.ctx.score(model, self.samples, self.metric)
        self.name = name
        return value

    def drop(self, baseline: float, value: float) -> float:
        return baseline - value if self.higher else value - baseline


def judge_for(cfg: QuantizeConfig, ctx: StageContext) -> Judge:
    if ctx.eval is None or ctx.score is None:
        raise InputError("accuracy_control and sensitivity need eval data to rank layers", where=f"{ctx.where}",
                         hint="Add data.eval (held-out samples, labelled or not).")
    ac = cfg.accuracy_control
    metric = None if ac is None or ac.metric == "primary" else ac.metric
    samples = min(ac.samples if ac else SENSITIVITY_SAMPLES, len(ctx.eval))
    return Judge(ctx, metric, samples, ctx.resolved.higher_is_better if metric is None else True)


def latency_ms(artifact, ctx: StageContext) -> float:
    from ..runtimes import open_session
    from ..validation import latency_feeds, measure_latency

    session = open_session(artifact, threads=ctx.threads, static_batch=ctx.batch)
    return measure_latency(session, latency_feeds(ctx.eval, ctx.batch), warmup=LATENCY_WARMUP,
                           runs=LATENCY_RUNS)["p50_ms"]


def sensitivity_rows(layers: list[str], variant: Callable[[str, str], object], judge: Judge,
                     modules: set[str] | dict[str, str | None] | None, ctx: StageContext,
                     both: bool = True) -> list[dict]:
    """`variant(kind, layer)` builds the model with only `layer` quantized (kind "only_q") or only it in float.
    Without `both`, only the second view (all the fallback ranking needs): half the work."""
    rows = []
    bar = ctx.progress("sensitivity", len(layers))
    for layer in layers:
        module = modules.get(layer) if isinstance(modules, dict) else module_name(layer, modules)
        rows.append({"node": layer, "module": module,
                     "only_this_quantized": judge(variant("only_q", layer)) if both else None,
                     "only_this_fp32": judge(variant("only_fp", layer))})
        bar.update(1, layer=layer)
    bar.close()
    return rows


def ranking(rows: list[dict], judge: Judge) -> list[dict]:
    """Most helpful to keep in float first: the best metric with only it in float, then the worst with only it
    quantized."""
    sign = 1 if judge.higher else -1
    return sorted(rows, key=lambda r: (-sign * r["only_this_fp32"], sign * (r["only_this_quantized"] or 0.0)))


def check_can_rank(rows: list[dict], judge: Judge, cfg: QuantizeConfig, ctx: StageContext) -> None:
    """A metric with one value over every candidate (too few samples, or a metric that ignores the model)
    cannot rank layers: say so instead of keeping arbitrary layers in float."""
    values = {round(r[k], 9) for r in rows for k in ("only_this_fp32", "only_this_quantized") if r[k] is not None}
    if len(values) <= 1:
        what = "accuracy_control" if cfg.accuracy_control else "sensitivity"
        raise InputError(f"{what} cannot rank layers: the metric {judge.name} is "
                         f"{next(iter(values), float('nan')):.4g} for every candidate on {judge.samples} samples",
                         where=f"{ctx.where}.accuracy_control.metric" if cfg.accuracy_control else ctx.where,
                         hint="Use a metric that moves with small changes (metric: cosine), or more samples.")


def record_sensitivity(ctx: StageContext, judge: Judge, rows: list[dict]) -> None:
    """Rows in ranking order: the layer most worth keeping in float first."""
    ctx.details["sensitivity"] = {"metric": judge.name, "samples": judge.samples, "higher_is_better": judge.higher,
                                  "rows": ranking(rows, judge)}


def greedy(plain_value: float, baseline: float, ranked: list[dict], build: Callable[[list[str]], object],
           judge: Judge, cfg: QuantizeConfig, ctx: StageContext) -> tuple[object | None, dict]:
    """Keep layers in float from the ranking until the drop is within max_drop or the budget is spent; a layer
    that does not improve the metric is put back to INT8 (and still counts as a try)."""
    ac = cfg.accuracy_control
    kept: list[str] = []
    steps: list[dict] = []
    best, value = None, plain_value
    for tries, row in enumerate(ranked):
        if judge.drop(baseline, value) <= ac.max_drop or len(kept) >= ac.max_fallback_layers \
                or tries >= 2 * ac.max_fallback_layers:
            break
        artifact = build([*kept, row["node"]])
        new = judge(artifact)
        better = judge.drop(baseline, new) < judge.drop(baseline, value)
        steps.append({"node": row["node"], "module": row["module"], "metric": new,
                      "latency_ms": latency_ms(artifact, ctx), "kept": better})
        ctx.log(f"fallback: {row['node']} in float -> {judge.name} {new:.3f} ({'kept' if better else 'reverted'})")
        if better:
            kept.append(row["node"])
            best, value = artifact, new
    return best, {"steps": steps, "kept_fp32": kept, "metric_after": value,
                  "met": judge.drop(baseline, value) <= ac.max_drop}


# ---------------------------------------------------------------- ONNX Runtime
def onnx_layers(path: Path) -> list[str]:
    """Weighted nodes (Conv, Gemm, MatMul) that read a dequantized input: the layers ORT quantized."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dq = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    return [node.name for node in graph.node if node.op_type in WEIGHTED_ONNX and any(i in dq for i in node.input)]


def onnx_node_names(path: Path) -> list[str]:
    import onnx

    return [node.name for node in onnx.load(str(path), load_external_data=False).graph.node]


def onnxruntime(cfg: QuantizeConfig, ctx: StageContext, prepared: Path, plain: Path,
                quantize: Callable[[Path, list[str]], None], measured: str | None = None) -> None:
    """Sensitivity and/or fallback for an ORT QDQ model; `quantize(dst, exclude)` re-quantizes from the
    calibration cache. The chosen model replaces `plain`. `measured` labels figures not taken on the runtime
    the model ships to (TensorRT QDQ emulated on ONNX Runtime CPU)."""
    work = plain.parent
    counter = iter(range(1_000_000))

    def build(exclude: list[str]) -> OnnxModel:
        dst = work / f"variant{next(counter)}.onnx"
        quantize(dst, [*cfg.ignore, *exclude])
        return OnnxModel(path=dst, precision="int8")

    best = rank_and_fall_back(cfg, ctx, onnx_layers(plain), torch_modules(ctx), OnnxModel(path=prepared),
                              OnnxModel(path=plain, precision="int8"), build, "ORT, calibration cache reused",
                              measured)
    if best is not None:
        shutil.copyfile(best.path, plain)
    for leftover in work.glob("variant*.onnx"):
        leftover.unlink()


def rank_and_fall_back(cfg: QuantizeConfig, ctx: StageContext, layers: list[str],
                       modules: set[str] | dict[str, str | None] | None, fp32, plain,
                       build: Callable[[list[str]], object], how: str, measured: str | None = None):
    """The backend-neutral part: judge FP32 and plain INT8 on the stage's runtime, rank `layers` when asked
    (`sensitivity`) or needed (plain INT8 misses max_drop), then keep layers in float greedily with
    `build(exclude)`. Records details["sensitivity"] / details["fallback"], labelled with `measured` where
    the figures are not the shipping runtime's own; returns the artifact to ship instead of `plain`, or None."""
    judge = judge_for(cfg, ctx)
    baseline = judge(fp32)
    plain_value = judge(plain)
    ac = cfg.accuracy_control
    need_rank = ac is not None and judge.drop(baseline, plain_value) > ac.max_drop
    rows = None
    if cfg.sensitivity or need_rank:
        ctx.log(f"sensitivity of {len(layers)} layers on {judge.samples} eval samples ({how})")
        rows = sensitivity_rows(layers, lambda kind, layer: build([n for n in layers if n != layer] if kind == "only_q"
                                                                  else [layer]), judge, modules, ctx,
                                both=cfg.sensitivity)
        check_can_rank(rows, judge, cfg, ctx)
        record_sensitivity(ctx, judge, rows)
        if measured:
            ctx.details["sensitivity"]["measured"] = measured
    if ac is None:
        return None
    fallback = {"metric": judge.name, "max_drop": ac.max_drop, "budget": ac.max_fallback_layers, "baseline": baseline,
                "plain_int8": plain_value, "samples": judge.samples, "steps": [], "kept_fp32": [],
                "metric_after": plain_value, "met": not need_rank, "drop": judge.drop(baseline, plain_value),
                "latency_ms": {"fp32": latency_ms(fp32, ctx), "plain_int8": latency_ms(plain, ctx)}}
    if measured:
        fallback["measured"] = measured
    best = None
    if need_rank:
        best, result = greedy(plain_value, baseline, ranking(rows, judge), build, judge, cfg, ctx)
        fallback.update(result, drop=judge.drop(baseline, result["metric_after"]))
    ctx.details["fallback"] = fallback
    return best


# ---------------------------------------------------------------- OpenVINO
PASS_THROUGH = {"Convert", "MaxPool", "Reshape", "Squeeze", "Unsqueeze", "Transpose"}   # NNCF quantizes before them


def _fake_quantize_inputs(op) -> list:
    """The FakeQuantize nodes that feed `op`: directly, or through ops NNCF quantizes in front of (a Convert for
    weights, max pooling or reshapes for activations)."""
    found = []
    for port in op.inputs():
        node = port.get_source_output().get_node()
        while node.get_type_name() in PASS_THROUGH:
            node = node.input_value(0).get_node()
        if node.get_type_name() == "FakeQuantize":
            found.append(node)
    return found


def _weight_signature(op) -> tuple | None:
    """(kind, out, in per group, kernel...) of an OpenVINO layer's weight, comparable with a torch layer's."""
    shape = op.input(1).get_partial_shape()
    if not shape.is_static:
        return None
    dims = [int(d) for d in shape.to_shape()]
    kind = op.get_type_name()
    if kind == "GroupConvolution":
        return ("conv", dims[0] * dims[1], *dims[2:])
    if kind == "MatMul":
        out_in = dims if op.get_attributes().get("transpose_b") else dims[::-1]
        return ("linear", *out_in)
    return ("conv", *dims)


def _torch_signatures(module) -> list[tuple[str, tuple]]:
    import torch

    rows = []
    for name, m in module.named_modules():
        if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            rows.append((name, ("conv", *m.weight.shape)))
        elif isinstance(m, torch.nn.Linear):
            rows.append((name, ("linear", *m.weight.shape)))
    return rows


def openvino_modules(model, layers: list[str], ctx: StageContext) -> dict[str, str | None]:
    """Module names of OpenVINO layers. The torch frontend names most nodes `__module.<name>/...`, but a convolution
    with BatchNorm folded in comes out as `Multiply_<n>`: those are matched, in graph order, to the next torch layer
    with the same weight shape; a layer that does not match stays unnamed."""
    modules = torch_modules(ctx)
    names = {layer: module_name(layer, modules) for layer in layers}
    if not modules or all(names.values()):
        return names
    torch_layers = _torch_signatures(ctx.reference.module)
    index = {name: i for i, (name, _) in enumerate(torch_layers)}
    ordered = [op for op in model.get_ordered_ops() if op.get_type_name() in WEIGHTED_OPENVINO]
    ops = {op.get_friendly_name(): op for op in ordered}
    names = {op.get_friendly_name(): module_name(op.get_friendly_name(), modules) for op in ordered}   # all layers:
    at = 0                                                                      # named ones keep the walk in step
    for layer in names:
        if names[layer] is not None:
            at = index.get(names[layer], at - 1) + 1
            continue
        sig = _weight_signature(ops[layer])
        if at < len(torch_layers) and torch_layers[at][1] == sig:
            names[layer] = torch_layers[at][0]
            at += 1
    return {layer: names.get(layer) for layer in layers}


def openvino_layers(model) -> list[str]:
    return [op.get_friendly_name() for op in model.get_ordered_ops()
            if op.get_type_name() in WEIGHTED_OPENVINO and _fake_quantize_inputs(op)]


def openvino_variant(quantized, layer: str, kind: str):
    """A copy of the NNCF-quantized model with FakeQuantize bypassed: for `only_fp`, the ones feeding `layer`;
    for `only_q`, every one but those (the calibrated ranges of the others stay untouched)."""
    model = quantized.clone()
    ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
    own = {fq.get_friendly_name() for fq in _fake_quantize_inputs(ops[layer])}
    for op in list(model.get_ordered_ops()):
        if op.get_type_name() != "FakeQuantize":
            continue
        if (kind == "only_fp") == (op.get_friendly_name() in own):
            op.output(0).replace(op.input_value(0))
    return model


def openvino_sensitivity(cfg: QuantizeConfig, ctx: StageContext, quantized, work: Path) -> None:
    import openvino as ov

    judge = judge_for(cfg, ctx)
    counter = iter(range(1_000_000))

    def save(model) -> OpenVinoModel:
        path = work / f"variant{next(counter)}.xml"
        ov.save_model(model, str(path), compress_to_fp16=False)
        return OpenVinoModel(path=path, precision="int8")

    layers = openvino_layers(quantized)
    ctx.log(f"sensitivity of {len(layers)} layers on {judge.samples} eval samples (OpenVINO, NNCF's ranges reused)")
    rows = sensitivity_rows(layers, lambda kind, layer: save(openvino_variant(quantized, layer, kind)), judge,
                            openvino_modules(quantized, layers, ctx), ctx)
    check_can_rank(rows, judge, cfg, ctx)
    record_sensitivity(ctx, judge, rows)


class _RevertLog(logging.Handler):
    """Collects what NNCF's accuracy restorer says it did (it reports through its logger)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.reverted: list[list[str]] = []    # each step's group, including steps NNCF later undid
        self.final: list[str] | None = None    # what stayed reverted at the end

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        names = [line.strip() for line in text.splitlines()[1:] if line.strip()]
        if text.startswith("Reverted ") and "operations to the floating-point precision" in text:
            self.reverted.append(names)
        elif "were reverted back to the floating-point precision" in text:
            self.final = names


def _items(ctx: StageContext, count: int, fp32) -> list[tuple]:
    """(inputs, label, FP32 outputs on OpenVINO) per eval sample: NNCF validates and ranks by item."""
    items = []
    names = [s.name for s in ctx.spec.inputs]
    for feeds, labels in islice(ctx.eval.batches(1), count):
        inputs = [feeds[n] for n in names]
        ref = fp32(inputs)
        items.append((inputs, None if labels is None else int(labels[0]), ref))
    return items


def _item_metric(metric: str, outputs: list[np.ndarray], items: list[tuple]) -> float:
    """top1 (labels), top1_agreement or cosine (x100, vs the FP32 outputs) of the first output over `items`."""
    if metric == "top1":
        return 100.0 * float(np.mean([out.argmax() == item[1] for out, item in zip(outputs, items)]))
    if metric == "top1_agreement":
        return 100.0 * float(np.mean([out.argmax() == item[2].argmax() for out, item in zip(outputs, items)]))
    cos = [float(np.dot(o.ravel(), r.ravel()) / max(np.linalg.norm(o) * np.linalg.norm(r), 1e-30))
           for o, r in ((out, item[2]) for out, item in zip(outputs, items))]
    return 100.0 * float(np.mean(cos))


def openvino_accuracy_control(cfg: QuantizeConfig, ctx: StageContext, model, calibration, count: int, args: dict,
                              work: Path, call):
    """nncf.quantize_with_accuracy_control with our metric as its validation function, and nncf.quantize's
    arguments `args` (preset, model type, ignored scope, bias correction, advanced parameters). Returns the model."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    from ..runtimes.openvino_runtime import core

    ac = cfg.accuracy_control
    judge = judge_for(cfg, ctx)
    fp32_path = work / "fp32.xml"
    ov.save_model(model, str(fp32_path), compress_to_fp16=False)
    judge(OpenVinoModel(path=fp32_path))   # learns the metric's name
    metric = judge.name
    if metric not in ("top1", "top1_agreement", "cosine"):
        raise InputError(f"accuracy_control on backend openvino ranks by top1, top1_agreement or cosine; the primary "
                         f"metric here is '{metric}'", where=f"{ctx.where}.accuracy_control.metric",
                         hint="Set accuracy_control.metric to top1, top1_agreement or cosine.")
    if metric == "top1" and not ctx.eval.has_labels:
        raise InputError("accuracy_control.metric top1 needs labels in the eval data",
                         where=f"{ctx.where}.accuracy_control.metric", hint="Use top1_agreement or cosine.")
    # f32 as the runtime (open_openvino) and NNCF's own evaluator compile: the CPU plugin's default runs FP32 in BF16
    # where the CPU has it, which made the reference outputs BF16 and hid a real drop from the restorer
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}
    fp32_compiled = core().compile_model(model, "CPU", f32)
    items = _items(ctx, judge.samples, lambda inputs: fp32_compiled(inputs)[0][0])
    sign = 1.0 if judge.higher else -1.0

    def validate(compiled, data) -> float:
        data = list(data)
        outputs = [compiled(item[0])[0][0] for item in data]
        return sign * _item_metric(metric, outputs, data)

    baseline = validate(fp32_compiled, items) * sign
    plain_dir = work / "plain"
    restorer = AdvancedAccuracyRestorerParameters(max_num_iterations=ac.max_fallback_layers,
                                                  intermediate_model_dir=str(plain_dir),
                                                  ranking_subset_size=min(judge.samples, 300), num_ranking_workers=1)
    listener = _RevertLog()
    logger = logging.getLogger("nncf")
    quiet = [(h, h.level) for h in logger.handlers]   # NNCF's own console output: its restorer talks a lot
    for handler, _ in quiet:
        handler.setLevel(logging.WARNING)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(listener)
    ctx.log(f"NNCF quantize_with_accuracy_control (max drop {ac.max_drop}, at most {ac.max_fallback_layers} layers)")
    try:
        quantized = call(lambda: nncf.quantize_with_accuracy_control(
            model, calibration, nncf.Dataset(items, lambda item: item[0]), validate, max_drop=ac.max_drop,
            drop_type=nncf.DropType.ABSOLUTE, subset_size=count, preset=args["preset"], model_type=args["model_type"],
            ignored_scope=args["ignored_scope"], fast_bias_correction=args["fast_bias_correction"],
            advanced_quantization_parameters=args["advanced_parameters"],
            advanced_accuracy_restorer_parameters=restorer))
    finally:
        logger.removeHandler(listener)
        logger.setLevel(level)
        for handler, was in quiet:
            handler.setLevel(was)
    modules = torch_modules(ctx)
    plain_xml = next(iter(sorted(plain_dir.glob("*.xml"))), None)
    plain_model = OpenVinoModel(path=plain_xml, precision="int8") if plain_xml else None
    compiled = core().compile_model(quantized, "CPU", f32)
    after = validate(compiled, items) * sign
    plain_value = validate(core().compile_model(str(plain_xml), "CPU", f32), items) * sign if plain_xml else None
    final_path = work / "final.xml"
    ov.save_model(quantized, str(final_path), compress_to_fp16=False)
    tried = [name for group in listener.reverted for name in group]
    kept = listener.final if listener.final is not None else tried
    names = openvino_modules(model, [op.get_friendly_name() for op in model.get_ordered_ops()
                                     if op.get_type_name() in WEIGHTED_OPENVINO], ctx)
    steps = [{"node": name, "module": names.get(name) or module_name(name, modules), "metric": None, "latency_ms": None,
              "kept": name in kept} for name in tried]
    if steps:   # NNCF reports the metric only at the end: give the last step the final value
        steps[-1].update(metric=after, latency_ms=latency_ms(OpenVinoModel(path=final_path), ctx))
    ctx.details["fallback"] = {
        "metric": metric, "max_drop": ac.max_drop, "budget": ac.max_fallback_layers, "baseline": baseline,
        "plain_int8": plain_value, "samples": judge.samples, "steps": steps, "kept_fp32": kept,
        "metric_after": after, "met": judge.drop(baseline, after) <= ac.max_drop, "drop": judge.drop(baseline, after),
        "groups": len(listener.reverted),   # NNCF reverts a layer with the operations around it; the budget counts these
        "engine": "nncf.quantize_with_accuracy_control",
        "latency_ms": {"fp32": latency_ms(OpenVinoModel(path=fp32_path), ctx),
                       "plain_int8": latency_ms(plain_model, ctx) if plain_model else None}}
    return quantized


# ---------------------------------------------------------------- report lines and gate
def notes(record: dict) -> list[str]:
    fb = record["details"].get("fallback")
    if not fb:
        return []
    lat = fb.get("latency_ms") or {}
    kept = ", ".join(f"{s['node']}" + (f" ({s['module']})" if s.get("module") else "")
                     for s in fb["steps"] if s.get("kept", True)) or "none"
    line = (f"accuracy control ({fb['metric']}, {fb['samples']} eval samples): FP32 {fb['baseline']:.3f}, plain INT8 "
            f"{_num(fb['plain_int8'])}, with fallback {fb['metric_after']:.3f} (max drop {fb['max_drop']}, "
            f"{'met' if fb['met'] else 'NOT met'}); {_spent(fb)} kept in float: {kept}")
    if lat.get("fp32") and lat.get("plain_int8"):
        line += f"; p50 FP32 {lat['fp32']:.3f} ms, plain INT8 {lat['plain_int8']:.3f} ms"
    if fb.get("measured"):
        line += f" ({fb['measured']})"
    return [line]


def _spent(fb: dict) -> str:
    if "groups" in fb:
        return f"{len(fb['kept_fp32'])} operations (NNCF steps {fb['groups']} of at most {fb['budget']})"
    return f"{len(fb['kept_fp32'])} of at most {fb['budget']} layers"


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def sections(record: dict) -> list[str]:
    lines: list[str] = []
    fb = record["details"].get("fallback")
    if fb and fb["steps"]:
        measured = f"; {fb['measured']}" if fb.get("measured") else ""
        lines += [f"### Fallback steps ({record['name']}{measured})", "", f"| layer | module | {fb['metric']} | p50 ms | kept |",
                  "|---|---|---|---|---|"]
        lines += [f"| {s['node']} | {s.get('module') or '–'} | {_num(s['metric'])} | {_num(s['latency_ms'])} | "
                  f"{'yes' if s.get('kept', True) else 'no'} |" for s in fb["steps"]]
        lines.append("")
    sens = record["details"].get("sensitivity")
    if sens:
        measured = f"; {sens['measured']}" if sens.get("measured") else ""
        lines += [f"### Sensitivity ({record['name']}, {sens['metric']} on {sens['samples']} eval samples{measured})", "",
                  "| rank | layer | module | only this INT8 | only this float |", "|---|---|---|---|---|"]
        for i, row in enumerate(sens["rows"], 1):
            lines.append(f"| {i} | {row['node']} | {row['module'] or '–'} | {_num(row['only_this_quantized'])} | "
                         f"{row['only_this_fp32']:.3f} |")
        lines.append("")
    return lines


def gates(record: dict) -> list[dict]:
    fb = record["details"].get("fallback")
    if not fb:
        return []
    return [{"gate": "accuracy_control", "threshold": f"drop <= {fb['max_drop']} ({fb['metric']})",
             "value": round(fb["drop"], 4), "passed": bool(fb["met"]),
             "detail": f"stage {record['name']}: {fb['metric']} {fb['metric_after']:.2f} vs FP32 {fb['baseline']:.2f} with "
                       f"{_spent(fb)} kept in float"}]
