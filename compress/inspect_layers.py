"""`compress inspect --layers RUN_DIR`: where INT8 loses accuracy, layer by layer.

The INT8 artifact of a run is compared with the FP32 model that entered its quantizing stage, on a
few calibration batches: per layer output, SQNR in dB (ONNX Runtime's definition,
20·log10(‖fp32‖ / ‖fp32 − int8‖), accumulated over the batches), cosine similarity and max abs error.
- ONNX QDQ (ONNX Runtime, TensorRT QDQ): ONNX Runtime's `qdq_loss_debug` adds every tensor as an
  output, runs both models and pairs each QDQ tensor with its FP32 tensor; it also gives the local
  error of each QuantizeLinear/DequantizeLinear pair and the SQNR of each dequantized weight.
- OpenVINO IR: every op's output is added as a model output (`Model.add_outputs`) in the INT8 IR and
  in the FP32 model, matched by output tensor name.
Names map back to PyTorch modules: the ONNX exporter keeps scopes in node names (`/layer1/layer1.0/
conv1/Conv`, or `pkg.torch.onnx.name_scopes` metadata), OpenVINO's PyTorch frontend in op names
(`__module.layer1.0.relu/aten::relu_/Relu`); convolutions and matmuls OpenVINO renamed when it folded
batch norm are matched to the torch module with the same weight shape, in call order.

A cross-runtime check runs the same FP32 model on torch, ONNX Runtime and OpenVINO and compares the
outputs, so an export problem is not blamed on quantization.
"""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import numpy as np

from .artifacts import ARTIFACT_TYPES, Artifact, OnnxModel, OpenVinoModel, OrtFormatModel, TorchModel
from .errors import InputError

DEFAULT_BATCHES = 2
MAX_BATCH = 4          # samples per traced batch: every intermediate tensor of a batch is held at once
_EPS = float(np.finfo(float).eps)


class _Error:
    """Streaming comparison of a reference tensor with a test tensor over several batches."""

    def __init__(self):
        self.signal = self.noise = self.dot = self.test = 0.0
        self.max_abs = 0.0
        self.size = 0

    def add(self, ref: np.ndarray, test: np.ndarray) -> None:
        ref = np.asarray(ref, dtype=np.float64).ravel()
        test = np.asarray(test, dtype=np.float64).ravel()
        if ref.shape != test.shape:
            raise ValueError(f"shape mismatch {ref.shape} vs {test.shape}")
        diff = test - ref
        self.signal += float(ref @ ref)
        self.noise += float(diff @ diff)
        self.dot += float(ref @ test)
        self.test += float(test @ test)
        self.max_abs = max(self.max_abs, float(np.abs(diff).max()) if diff.size else 0.0)
        self.size += ref.size

    def result(self) -> dict:
        # ORT's compute_signal_to_quantization_noice_ratio on the concatenated batches, streamed
        sqnr = 20 * math.log10(max(math.sqrt(self.signal), _EPS) / max(math.sqrt(self.noise), _EPS))
        norm = math.sqrt(self.signal) * math.sqrt(self.test)
        return {"sqnr_db": round(sqnr, 3), "cosine": round(self.dot / norm, 6) if norm > 0 else None,
                "max_abs": float(f"{self.max_abs:.6g}")}


# ---------------------------------------------------------------- names -> PyTorch modules
_OV_SCOPE = re.compile(r"^__module\.([^/]+)/")


def module_of(name: str | None, scopes: str | None = None, known: set[str] | None = None) -> str | None:
    """The PyTorch module a node name (or ONNX name_scopes metadata) points at, if it names one.
    `known`: the model's module names, to tell a second call of a shared module (`relu_1`) from its name."""
    path = None
    if scopes:
        try:
            import ast

            parts = [p for p in ast.literal_eval(scopes) if p]
            path = parts[-1] if parts else None
        except (ValueError, SyntaxError):
            path = None
    if path is None and name:
        match = _OV_SCOPE.match(name)
        if match:
            path = match.group(1)
        elif name.startswith("/"):   # TorchScript ONNX exporter: /layer2/layer2.0/downsample/downsample.0/Conv
            path = _scope_path(name.strip("/").split("/")[:-1])
    if path and known is not None and path not in known:
        shared = re.sub(r"_\d+$", "", path)
        return shared if shared in known else path
    return path or None


def _scope_path(parts: list[str]) -> str:
    """Full module path from the exporter's scope components, each a child's name relative to its parent,
    except a container's items, which repeat the parent's name (layer1, layer1.0, conv2 -> layer1.0.conv2)."""
    path, last = "", ""
    for part in parts:
        nested = bool(last) and part.startswith(last + ".")
        path = path[: len(path) - len(last)] + part if nested else ".".join(p for p in (path, part) if p)
        last = part
    return path


def _torch_weight_modules(module, spec) -> list[tuple[str, tuple[int, ...]]]:
    """(name, weight shape) of every conv/linear module in the order the forward pass calls them."""
    import torch

    calls: list[tuple[str, tuple[int, ...]]] = []
    hooks = []
    for name, sub in module.named_modules():
        if isinstance(sub, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)):
            hooks.append(sub.register_forward_hook(
                lambda m, i, o, _n=name: calls.append((_n, tuple(m.weight.shape)))))
    try:
        with torch.no_grad():
            module(*spec.example_tensors())
    finally:
        for h in hooks:
            h.remove()
    return calls


def _shape_key(shape) -> tuple[int, tuple[int, ...]]:
    """Weight shapes compared across frameworks: element count and the conv kernel's spatial dims."""
    dims = tuple(int(d) for d in shape)
    return int(np.prod(dims)), (dims[-2:] if len(dims) >= 4 else ())


# ---------------------------------------------------------------- the run folder
class _Run:
    def __init__(self, run_dir: Path):
        import yaml

        from . import report as report_mod
        from .recipe import parse_recipe

        self.dir = Path(run_dir)
        self.report = report_mod.load(self.dir)
        self.info = json.loads((self.dir / "run.json").read_text())
        if not self.info.get("resumable", True):
            raise InputError(f"{run_dir} was run with an in-memory model or metric; its FP32 model cannot be "
                             "rebuilt from the run folder",
                             hint="Run the recipe with the model given in the YAML to trace it.")
        data = yaml.safe_load((self.dir / "recipe.yaml").read_text())
        self.recipe = parse_recipe(data, source=str(self.dir / "recipe.yaml"))
        self._inputs = None

    @property
    def inputs(self):
        if self._inputs is None:
            from .inputs import open_inputs

            self._inputs = open_inputs(self.recipe, Path(self.info["base_dir"]))
        return self._inputs

    def base_module(self):
        ref = self.inputs.reference
        return ref.module if isinstance(ref, TorchModel) else None

    def artifact(self, index: int) -> Artifact:
        """Stage `index`'s output as saved in the run folder; -1: the FP32 reference model."""
        if index < 0:
            return self.inputs.reference
        from . import cache

        stage = self.report["stages"][index]
        stage_dir = self.dir / Path(*Path(stage["artifact"]["path"]).parts[:2])
        found = cache.read_stage(stage_dir, stage["key"], self.base_module())
        if found is None:
            raise InputError(f"stage {stage['name']}'s artifact in {stage_dir} is missing or does not match the report",
                             hint="Re-run the recipe.")
        return found[0]

    def openvino_fp32(self, source: int, fp32: Artifact):
        """The FP32 model as an ov.Model: the run's OpenVINO baseline when the reference was quantized
        (converted from it exactly so; saves converting again), else converted now."""
        from .convert import to_openvino
        from .runtimes.openvino_runtime import core

        baseline = self.report["baselines"].get("openvino", {}).get("artifact", {})
        if source < 0 and baseline.get("path") and (self.dir / baseline["path"]).is_file():
            return core().read_model(str(self.dir / baseline["path"]))
        return to_openvino(fp32, self.inputs.spec)

    def pick(self, name: str | None) -> int:
        stages = self.report["stages"]
        quantized = [i for i, s in enumerate(stages) if s["artifact"]["precision"] == "int8"]
        if name is None:
            if not quantized:
                raise InputError(f"{self.dir} has no quantized stage (no INT8 artifact): the layer trace compares "
                                 "an INT8 artifact with the FP32 model it was made from",
                                 hint="Pass the folder of a run with a quantizing stage.")
            return quantized[0]
        names = [s["name"] for s in stages]
        if name not in names:
            import difflib

            close = difflib.get_close_matches(name, names, n=1)
            raise InputError(f"{self.dir} has no stage '{name}' (stages: {', '.join(names)})",
                             hint=f"Did you mean --stage {close[0]}?" if close else None)
        index = names.index(name)
        if index not in quantized:
            raise InputError(f"stage '{name}' of {self.dir} is not INT8 (its artifact is "
                             f"{stages[index]['artifact']['precision']}): nothing to trace",
                             hint=f"INT8 stages: {', '.join(names[i] for i in quantized) or 'none'}.")
        return index

    def fp32_source(self, index: int) -> int:
        """The last FP32 artifact before stage `index` (-1: the reference): what was quantized."""
        stages = self.report["stages"]
        j = index - 1
        while j >= 0 and stages[j]["artifact"]["precision"] == "int8":
            j -= 1
        return j

    def feeds(self, batches: int) -> list[dict[str, np.ndarray]]:
        size = max(1, min(self.recipe.data.batch_size, MAX_BATCH))
        out = []
        for feeds in self.inputs.calibration.input_batches(size):
            out.append(feeds)
            if len(out) == batches:
                break
        return out


# ---------------------------------------------------------------- ONNX QDQ: ORT's qdq_loss_debug
def _onnx_names(path: Path, known: set[str] | None) -> tuple[dict[str, dict], dict[str, str], list[str]]:
    """tensor -> {node, op, module}; weight initializer -> the tensor its node produces; tensor order."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in proto.graph.initializer}
    producers, weights, order, consumers = {}, {}, [], {}
    for inp in proto.graph.input:
        producers[inp.name] = {"node": inp.name, "op": "input", "module": None}
        order.append(inp.name)
    for node in proto.graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
        info = {"node": node.name, "op": node.op_type, "module": module_of(node.name, scopes, known)}
        for out in node.output:
            producers[out] = info
            order.append(out)
        for name in node.input:
            consumers.setdefault(name, []).append(node)
            if name in initializers and node.output:
                weights.setdefault(name, node.output[0])
    return producers, weights, order, consumers


def _traced_tensor(tensor: str, traced: dict, consumers: dict) -> str | None:
    """The first traced tensor at or after `tensor` along a chain of single consumers: ORT quantizes a
    Conv followed by Relu at the Relu's output, so a conv's weights belong to that row."""
    for _ in range(8):
        if tensor in traced:
            return tensor
        nodes = consumers.get(tensor, [])
        if len(nodes) != 1 or not nodes[0].output:
            return None
        tensor = nodes[0].output[0]
    return None


def _trace_onnx(fp32_path: Path, int8_path: Path, feeds: list[dict], work: Path, known, log) -> tuple[list[dict], dict]:
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_weight_error,
        create_activation_matching,
        create_weight_matching,
        modify_model_output_intermediate_tensors,
    )

    augmented = {}
    for name, path in (("fp32", fp32_path), ("int8", int8_path)):
        augmented[name] = work / f"{name}-all-outputs.onnx"
        modify_model_output_intermediate_tensors(str(path), str(augmented[name]))
    log(f"running both models on {len(feeds)} batch(es) with every tensor as an output")
    fp32 = collect_activations(str(augmented["fp32"]), feeds)
    int8 = collect_activations(str(augmented["int8"]), feeds)
    errors: dict[str, _Error] = {}
    local: dict[str, _Error] = {}
    for tensor, match in create_activation_matching(int8, fp32).items():
        if "float" not in match:
            continue
        errors[tensor], local[tensor] = _Error(), _Error()
        for ref, pre, post in zip(match["float"], match["pre_qdq"], match["post_qdq"]):
            errors[tensor].add(ref, post)
            local[tensor].add(pre, post)
    del fp32, int8
    weight_sqnr = compute_weight_error(create_weight_matching(str(fp32_path), str(int8_path)))
    producers, weight_of, order, consumers = _onnx_names(fp32_path, known)
    by_tensor = {}   # traced tensor -> (weight SQNR, module of the node the weight feeds)
    for weight, sqnr in weight_sqnr.items():
        tensor = _traced_tensor(weight_of[weight], errors, consumers) if weight in weight_of else None
        if tensor is not None and (tensor not in by_tensor or sqnr < by_tensor[tensor][0]):   # weight, not bias
            by_tensor[tensor] = (round(float(sqnr), 3), producers[weight_of[weight]]["module"])
    rows = []
    for tensor in sorted(errors, key=lambda t: order.index(t) if t in order else len(order)):
        info = producers.get(tensor, {"node": None, "op": None, "module": None})
        weight, weight_module = by_tensor.get(tensor, (None, None))
        rows.append({"tensor": tensor, **info, **errors[tensor].result(),
                     "qdq_sqnr_db": local[tensor].result()["sqnr_db"], "weight_sqnr_db": weight,
                     "weight_module": weight_module})
    return rows, {"method": "onnxruntime.quantization.qdq_loss_debug", "weights_compared": len(weight_sqnr)}


# ---------------------------------------------------------------- OpenVINO: intermediate outputs
_OV_SKIP = {"Constant", "Parameter", "Result", "Convert", "FakeQuantize", "ShapeOf"}
_OV_WEIGHTED = {"Convolution", "GroupConvolution", "MatMul"}


def _ov_weight_shape(op):
    """Shape of a conv/matmul's constant weight input (through decompression ops), or None."""
    if op.get_type_name() not in _OV_WEIGHTED or op.get_input_size() < 2:
        return None
    shape = op.input(1).get_partial_shape()
    return shape.to_shape() if shape.is_static else None


def _ov_ops(model) -> list:
    """Ops worth tracing: the float output of every compute op (not constants or quantization ops)."""
    import openvino as ov

    picked = []
    for op in model.get_ordered_ops():
        if op.get_type_name() in _OV_SKIP or op.get_output_size() != 1:
            continue
        if op.get_output_element_type(0) != ov.Type.f32 or not op.output(0).get_names():
            continue
        picked.append(op)
    return picked


def _trace_openvino(fp32_model, int8_path: Path, feeds: list[dict], torch_calls, known, log) -> tuple[list[dict], dict]:
    from .runtimes.openvino_runtime import core

    int8_model = core().read_model(str(int8_path))
    fp32_ops = {}
    for op in _ov_ops(fp32_model):
        for name in op.output(0).get_names():
            fp32_ops.setdefault(name, op)
    pairs = []   # (fp32 op, int8 op, a tensor name both outputs carry), in the INT8 model's order
    for op in _ov_ops(int8_model):
        name = next((n for n in sorted(op.output(0).get_names()) if n in fp32_ops), None)
        if name is not None and fp32_ops[name].get_type_name() == op.get_type_name():
            pairs.append((fp32_ops[name], op, name))
    modules = _ov_modules(_ov_ops(fp32_model), torch_calls)
    # The CPU plugin's low-precision transforms return zeros for intermediate outputs of INT8 layers they fuse
    # (OpenVINO 2026.4): run FakeQuantize as written, in FP32 arithmetic, as ORT's qdq_loss_debug does for QDQ.
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2, "NUM_STREAMS": 1, "LP_TRANSFORMS_MODE": "NO"}
    compiled = {}
    for label, model, side in (("fp32", fp32_model, 0), ("int8", int8_model, 1)):
        model.add_outputs([p[side].output(0) for p in pairs])
        compiled[label] = core().compile_model(model, "CPU", config)
    errors = [_Error() for _ in pairs]
    for k, batch in enumerate(feeds):
        log(f"batch {k + 1}/{len(feeds)}: running both models with {len(pairs)} intermediate outputs")
        results = {}
        for label, model in compiled.items():
            out = model.create_infer_request().infer(list(batch.values()))
            results[label] = [np.array(out[model.output(p[2])]) for p in pairs]
        for err, ref, test in zip(errors, results["fp32"], results["int8"]):
            err.add(ref, test)
    rows = []
    for (fp32_op, int8_op, tensor), err in zip(pairs, errors):
        name = int8_op.get_friendly_name()
        rows.append({"tensor": tensor, "node": name, "op": int8_op.get_type_name(),
                     "module": module_of(name, known=known) or modules.get(id(fp32_op)), **err.result(),
                     "qdq_sqnr_db": None, "weight_sqnr_db": None, "weight_module": None})
    return rows, {"method": "openvino Model.add_outputs, matched by output tensor name",
                  "int8_ops_unmatched": len(_ov_ops(int8_model)) - len(pairs)}


def _ov_modules(ops, torch_calls) -> dict[int, str]:
    """id(op) -> torch module name for conv/matmul ops without a module scope in their name: the n-th such
    op with a given weight shape is the n-th call of a torch conv/linear module with that shape."""
    if not torch_calls:
        return {}
    queues: dict[tuple, list[str]] = {}
    for name, shape in torch_calls:
        queues.setdefault(_shape_key(shape), []).append(name)
    out = {}
    for op in ops:
        shape = _ov_weight_shape(op)
        if shape is None:
            continue
        queue = queues.get(_shape_key(list(shape)))
        if queue:
            out[id(op)] = queue.pop(0)
    return out


# ---------------------------------------------------------------- cross-runtime check of the FP32 model
def _cross_runtime(run: _Run, feeds: list[dict], work: Path, log) -> dict:
    """The FP32 reference on its own runtime vs the same model exported to ONNX Runtime and OpenVINO."""
    from .runtimes import open_session, restore, runtime_for, runtime_named

    ref = run.inputs.reference
    spec = run.inputs.spec
    anchor = runtime_for(ref).name
    sessions = {anchor: open_session(ref, threads=2)}
    for name in ("onnxruntime", "openvino"):
        entry = runtime_named(name)
        if name == anchor or entry is None:
            continue
        baseline = run.report["baselines"].get(name)
        path = run.dir / baseline["artifact"]["path"] if baseline and baseline["artifact"].get("path") else None
        if path is not None and path.is_file():
            artifact = restore(entry.artifact, path, {"inference_precision": "f32"}, [])
        else:
            log(f"cross-runtime: building the FP32 model for {name}")
            folder = work / f"fp32-{name}"
            folder.mkdir(exist_ok=True)
            artifact = entry.need("fp32_baseline")(ref, spec, folder, entry.artifact)
        sessions[name] = open_session(artifact, threads=2)
    outputs = {name: [s.run(f) for f in feeds] for name, s in sessions.items()}
    rows = []
    for name in sessions:
        if name == anchor:
            continue
        for i, out_name in enumerate(spec.outputs):
            err = _Error()
            for ref_out, test_out in zip(outputs[anchor], outputs[name]):
                err.add(ref_out[i], test_out[i])
            r = err.result()
            rows.append({"runtime": name, "output": out_name, "cosine": r["cosine"], "max_abs": r["max_abs"],
                         "sqnr_db": r["sqnr_db"]})
    return {"reference": anchor, "rows": rows}


# ---------------------------------------------------------------- entry point
def trace(run_dir: Path, *, stage: str | None = None, batches: int = DEFAULT_BATCHES, log=lambda m: None) -> dict:
    """Trace one INT8 stage of a finished run; writes RUN_DIR/inspect/layers.json and returns its content."""
    import shutil
    import tempfile

    from . import report as report_mod
    from .fsutil import atomic_write_json

    if batches < 1:
        raise InputError(f"--batches must be at least 1, got {batches}")
    t0 = time.perf_counter()
    say = log

    def log(message):
        say(f"{time.perf_counter() - t0:5.1f}s {message}")

    run = _Run(run_dir)
    index = run.pick(stage)
    record = run.report["stages"][index]
    cls = ARTIFACT_TYPES.get(record["artifact"]["type"])
    int8_path = run.dir / record["artifact"]["path"]
    onnx_like = cls is not None and issubclass(cls, OnnxModel) and not issubclass(cls, OrtFormatModel)
    if not (onnx_like or (cls is not None and issubclass(cls, OpenVinoModel))):
        raise InputError(f"the layer trace reads ONNX QDQ models and OpenVINO IR; stage '{record['name']}' "
                         f"made a {record['artifact']['type']}",
                         hint="Pass --stage with the quantizing stage of an ONNX Runtime, TensorRT or OpenVINO chain.")
    source = run.fp32_source(index)
    log(f"stage {record['name']}: {record['artifact']['type']} vs the FP32 model "
        f"{'of stage ' + run.report['stages'][source]['name'] if source >= 0 else 'given in the recipe'}")
    fp32 = run.artifact(source)
    feeds = run.feeds(batches)
    (run.dir / "inspect").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".layers-", dir=run.dir / "inspect"))
    try:
        torch_calls = _torch_weight_modules(fp32.module, run.inputs.spec) if isinstance(fp32, TorchModel) else None
        base = run.base_module()
        known = {name for name, _ in base.named_modules()} if base is not None else None
        if onnx_like:
            fp32_path = fp32.path
            if not isinstance(fp32, OnnxModel):
                from .convert import torch_to_onnx

                fp32_path = work / "fp32.onnx"
                torch_to_onnx(fp32.module, run.inputs.spec, fp32_path)
            rows, how = _trace_onnx(fp32_path, int8_path, feeds, work, known, log)
        else:
            rows, how = _trace_openvino(run.openvino_fp32(source, fp32), int8_path, feeds, torch_calls, known, log)
        if not rows:
            raise InputError(f"no layer of stage '{record['name']}' could be matched with the FP32 model",
                             hint="Is it a QDQ model? A compiled (fused) artifact keeps no per-layer tensors; "
                                  "trace the quantizing stage with --stage.")
        cross = _cross_runtime(run, feeds, work, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "stage": record["name"], "artifact": record["artifact"]["path"], "runtime": record["runtime"],
        "fp32": run.report["stages"][source]["name"] if source >= 0 else "reference",
        "batches": len(feeds), "samples": int(sum(next(iter(f.values())).shape[0] for f in feeds)),
        **how, "layers": rows, "cross_runtime": cross, "seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write_json(run.dir / "inspect" / "layers.json", result)
    report_mod.refresh(run.dir)   # report.html gains the per-layer plot
    return result


def worst(layers: list[dict], count: int | None = None) -> list[dict]:
    """Layers ranked worst first: lowest SQNR vs FP32."""
    ranked = sorted(layers, key=lambda r: r["sqnr_db"])
    return ranked if count is None else ranked[:count]


def table(result: dict, count: int = 20):
    """The ranked rich table `compress inspect --layers` prints."""
    from rich.table import Table

    t = Table(title=f"layer trace of stage {result['stage']} ({result['runtime']}): {len(result['layers'])} layers, "
                    f"{result['samples']} calibration samples; worst {min(count, len(result['layers']))} by SQNR")
    # QDQ dB: the tensor before vs after its own Quantize/DequantizeLinear pair (ONNX QDQ only; where ORT
    # folded a ReLU into that pair's clipping it includes the ReLU); weight dB: the dequantized weights
    columns = [("module", "module"), ("op", "op"), ("sqnr_db", "SQNR dB"), ("cosine", "cosine"),
               ("max_abs", "max abs"), ("qdq_sqnr_db", "QDQ dB"), ("weight_sqnr_db", "weight dB")]
    ranked = worst(result["layers"], count)
    columns = [c for c in columns if c[0] in ("module", "op") or any(r.get(c[0]) is not None for r in ranked)]
    for key, title in columns:
        t.add_column(title, justify="left" if key in ("module", "op") else "right", overflow="fold",
                     min_width=18 if key == "module" else None)
    formats = {"sqnr_db": ".1f", "cosine": ".4f", "max_abs": ".3g", "qdq_sqnr_db": ".1f", "weight_sqnr_db": ".1f"}

    def cell(v, fmt):
        return "–" if v is None else format(v, fmt)

    for row in ranked:
        named = {"module": row["module"] or row["node"] or row["tensor"], "op": row["op"] or "–"}
        t.add_row(*[named[k] if k in named else cell(row.get(k), formats[k]) for k, _ in columns])
    cross = result["cross_runtime"]
    c = Table(title=f"same FP32 model on other runtimes vs {cross['reference']} (export check)")
    for col in ("runtime", "output", "cosine", "max abs", "SQNR dB"):
        c.add_column(col)
    for row in cross["rows"]:
        c.add_row(row["runtime"], row["output"], cell(row["cosine"], ".6f"), cell(row["max_abs"], ".3g"),
                  cell(row["sqnr_db"], ".1f"))
    return t, c
