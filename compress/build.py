"""`compress build`: on the device, a run's TensorRT-ready QDQ ONNX becomes an INT8 engine.

Builds the INT8 engine (strongly typed, the target's shape profile, timing cache kept beside the
engines and reused, DLA when the target asks) and an FP16 engine of the same FP32 model for
comparison; validates the INT8 engine on the run's eval data against the FP32 torch reference;
times both with CUDA events; judges the recipe's gates (accuracy drop on the engine, speed-up vs
the FP16 engine); writes `engines/<target>/model.engine` + `manifest.json`. The equivalent
`trtexec` command lines are printed. Needs TensorRT and an NVIDIA GPU: it runs where they are.
"""
from __future__ import annotations

import json
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from .errors import InputError
from .fsutil import atomic_dir
from .targets import Target, resolve_target


def locate(source: Path) -> tuple[Path | None, Path, dict]:
    """(run folder or None, the QDQ .onnx, its build.json) from a run folder or the .onnx a compile stage wrote."""
    source = Path(source)
    if source.is_dir():
        report = source / "report.json"
        if not report.is_file():
            raise InputError(f"{source} is not a finished run folder (no report.json)",
                             hint="Pass the folder `compress run` made for a TensorRT target, or its model.onnx.")
        final = json.loads(report.read_text())["final_artifact"]
        if final["type"] != "TensorRTQDQModel":
            raise InputError(f"the run's final artifact is a {final['type']}; `compress build` takes a run that "
                             "compiled for a TensorRT target (runtime tensorrt)", where=str(source))
        run_dir, onnx_path = source, source / final["path"]
    elif source.suffix == ".onnx" and source.is_file():
        onnx_path = source
        run_dir = next((p for p in source.parents if (p / "run.json").is_file()), None)
    else:
        raise InputError(f"{source} is neither a run folder nor an .onnx file")
    plan = onnx_path.with_name("build.json")
    return run_dir, onnx_path, json.loads(plan.read_text()) if plan.is_file() else {}


def check_device(target: Target, facts: dict) -> None:
    """The device must run a TensorRT in the target's range and, when the target names one, its GPU."""
    version = facts.get("tensorrt")
    if version is None or Version(version) not in SpecifierSet(target.tensorrt.versions):
        raise InputError(f"target {target.name} needs TensorRT {target.tensorrt.versions}, this device has "
                         f"{version or 'none'}", hint="Build on the device the target describes, or pick its target.")
    wanted = target.tensorrt.compute_capability
    if wanted is not None and facts.get("compute_capability") != wanted:
        raise InputError(f"target {target.name} is a GPU of compute capability {wanted}, this device's is "
                         f"{facts.get('compute_capability')} ({facts.get('gpu_name')})",
                         hint="Engines are built for one GPU: run on the target's device, or use its target.")


def fp16_onnx(fp32_path: Path, out: Path) -> Path:
    """The FP32 model with FP16 weights and math, inputs and outputs kept FP32: what a strongly typed
    network builds as an FP16 engine (TensorRT 11 has no FP16 builder flag)."""
    import onnx
    from onnxconverter_common import float16

    model = float16.convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    onnx.save(model, str(out))
    return out


def _fp32_source(run_dir: Path | None, onnx_path: Path) -> Path | None:
    candidates = []
    if run_dir is not None:
        candidates.append(run_dir / "baselines" / "tensorrt" / "fp32.onnx")
        candidates += sorted((run_dir / "stages").glob("*-export/model.onnx"))
    return next((p for p in candidates if p.is_file()), None)


def build_target(target_name: str | None, plan: dict) -> Target:
    """--target, else the target the run compiled for (its build.json); it must be a TensorRT target."""
    name = target_name or plan.get("target")
    if name is None:
        raise InputError("no target: pass --target (a TensorRT target name or file)")
    target = resolve_target(name, base_dir=Path.cwd(), where="--target")
    if target.tensorrt is None:
        raise InputError(f"target {target.name} is not a TensorRT target (runtime {target.runtime})", where="--target")
    return target


def build(source: Path, *, target_name: str | None = None, warmup: int = 20, runs: int = 200, log=print) -> dict:
    from .runtimes.tensorrt_runtime import import_tensorrt
    from .tensorrt.engine import build_engine, derive_profile, device_facts, open_engine, time_engine, write_manifest
    from .tensorrt.rules import dynamic_axes

    run_dir, onnx_path, plan = locate(source)
    trt = import_tensorrt(where="compress build")
    target = build_target(target_name, plan)
    facts = device_facts(trt)
    check_device(target, facts)
    import onnx

    settings = target.tensorrt
    profile = derive_profile(dynamic_axes(onnx.load(str(onnx_path), load_external_data=False)), batch=target.batch,
                             max_batch=settings.max_batch, shapes=settings.shapes)
    root = (run_dir or onnx_path.parent) / "engines"
    root.mkdir(exist_ok=True)
    timing_cache = root / f"{target.name}.timing.cache"     # kept beside the engines, reused by the next build
    folder = root / target.name
    result: dict = {"target": target.name, "device": facts, "profile": {k: [list(s) for s in v] for k, v in profile.items()}}
    with atomic_dir(folder) as tmp:
        log(f"building the INT8 engine ({target.name}, TensorRT {facts['tensorrt']})")
        result["int8"] = build_engine(trt, onnx_path, tmp / "model.engine", profile=profile,
                                      workspace_mb=settings.workspace_mb, dla_core=settings.dla_core,
                                      timing_cache_path=timing_cache, log=log)
        fp32 = _fp32_source(run_dir, onnx_path)
        if fp32 is not None:
            log("building the FP16 engine of the same model, for comparison")
            result["fp16"] = build_engine(trt, fp16_onnx(fp32, tmp / "fp16.onnx"), tmp / "fp16.engine",
                                          profile=profile, workspace_mb=settings.workspace_mb,
                                          dla_core=settings.dla_core, timing_cache_path=timing_cache, log=log)
        feeds, metrics = _measure_accuracy(run_dir, open_engine(trt, tmp / "model.engine"), target, log)
        result.update(metrics)
        result["latency_int8"] = time_engine(open_engine(trt, tmp / "model.engine"), feeds, warmup=warmup, runs=runs)
        if fp32 is not None:
            result["latency_fp16"] = time_engine(open_engine(trt, tmp / "fp16.engine"), feeds, warmup=warmup,
                                                 runs=runs)
        result["gates"] = _gates(run_dir, result)
        from .cache import file_digest

        write_manifest(tmp / "manifest.json", facts=facts, onnx_sha256=file_digest(onnx_path), profile=profile,
                       precision="int8", dla_core=settings.dla_core, gates=result["gates"], build=result["int8"])
        (tmp / "build-report.json").write_text(json.dumps(result, indent=2, default=str))
    result["folder"] = str(folder)
    return result


def _measure_accuracy(run_dir: Path | None, runner, target: Target, log) -> tuple[dict, dict]:
    """The engine's primary metric on the run's eval data, and the FP32 torch reference's on the same data."""
    import numpy as np

    from .validation import latency_feeds

    if run_dir is None:   # the eval data and the reference model come from the run folder's recipe
        raise InputError("accuracy needs the run folder (its recipe and eval data): pass the run folder")
    import yaml

    from . import load
    from .inputs import open_inputs
    from .measure import Measurer
    from .pipeline import Reporter
    from .runtimes import Session
    from .stages import Resolved
    from .validation import evaluate, primary_metric

    info = json.loads((run_dir / "run.json").read_text())
    recipe, base = load(yaml.safe_load((run_dir / "recipe.yaml").read_text()), base_dir=info["base_dir"])
    inputs = open_inputs(recipe, base)
    measurer = Measurer(recipe, inputs, Resolved(threads=2, batch=target.batch), run_dir, Reporter())
    log("FP32 reference (torch) on the eval data")
    reference = measurer.reference()
    session = Session("tensorrt-engine", runner)
    log("INT8 engine on the eval data")
    result = evaluate(session, inputs.eval, batch_size=recipe.data.batch_size, output_names=inputs.spec.outputs,
                      reference=measurer.reference_outputs, metric=inputs.metric, label="INT8 engine")
    name, value = primary_metric(result, inputs.spec.outputs, measurer.primary)
    report = json.loads((run_dir / "report.json").read_text())
    emulated = report["stages"][-1]["primary"]["value"]
    metrics = {"metric": name, "reference": reference["primary"]["value"], "engine": value,
               "emulated": emulated, "agreement": result.agreement,
               "higher_is_better": recipe.metric.higher_is_better}
    feeds = {k: np.ascontiguousarray(v) for k, v in latency_feeds(inputs.eval, target.batch).items()}
    return feeds, metrics


def _gates(run_dir: Path | None, result: dict) -> list[dict]:
    """The recipe's max_accuracy_drop on the engine; min_speedup as INT8 engine vs FP16 engine; and INT8
    that is not faster than FP16 (a known TensorRT trap) is flagged as a failed gate."""
    import yaml

    gates = []
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text()) if run_dir is not None else {}
    wanted = recipe.get("gates") or {}
    if "engine" in result and wanted.get("max_accuracy_drop") is not None:
        drop = result["reference"] - result["engine"]
        drop = drop if result["higher_is_better"] else -drop
        gates.append({"gate": "max_accuracy_drop", "threshold": wanted["max_accuracy_drop"], "value": round(drop, 4),
                      "passed": drop <= wanted["max_accuracy_drop"],
                      "detail": f"engine {result['metric']} {result['engine']:.2f} vs FP32 {result['reference']:.2f}"})
    if "latency_fp16" in result:
        speedup = result["latency_fp16"]["p50_ms"] / result["latency_int8"]["p50_ms"]
        result["speedup_vs_fp16"] = speedup
        gates.append({"gate": "int8_faster_than_fp16", "threshold": 1.0, "value": round(speedup, 3),
                      "passed": speedup > 1.0, "detail": f"INT8 engine {speedup:.2f}x the FP16 engine (p50, CUDA "
                                                         "events); INT8 no faster than FP16 means a poor QDQ placement"})
        if wanted.get("min_speedup") is not None:
            gates.append({"gate": "min_speedup", "threshold": wanted["min_speedup"], "value": round(speedup, 3),
                          "passed": speedup >= wanted["min_speedup"], "detail": "INT8 engine vs FP16 engine, p50"})
    return gates
