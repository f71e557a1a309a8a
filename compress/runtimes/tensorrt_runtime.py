"""TensorRT-ready QDQ ONNX on this machine: emulated on ONNX Runtime CPU (TensorRT needs an NVIDIA
GPU; `compress build` makes and times the engine there). Compiling for a TensorRT target checks the
QDQ against the target's TensorRT version and derives the engine's shape profile."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..artifacts import OnnxModel, TensorRTQDQModel
from ..errors import InputError

EMULATED = "emulated (ONNX Runtime CPU), not the engine"


def checks(path: Path, *, tensorrt: str | None, lint: bool = True) -> list[dict]:
    """onnx.checker, polygraphy's lint (when installed) and TensorRT's explicit-quantization rules:
    one row each for the report; a violation of TensorRT's rules is an InputError naming the node."""
    import onnx

    from ..tensorrt.rules import check_qdq

    rows = []
    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model, full_check=True)
        rows.append({"check": "onnx.checker", "passed": True, "detail": "valid ONNX"})
    except Exception as exc:   # the file is ours or the user's; say which node
        raise InputError(f"{path.name} fails onnx.checker: {str(exc).splitlines()[0][:300]}") from exc
    if lint:
        rows.append(_polygraphy_lint(path))
    found = check_qdq(model, tensorrt=tensorrt)
    if found:
        more = f" ({len(found) - 1} more)" if len(found) > 1 else ""
        raise InputError(f"{path.name} breaks TensorRT's rules: {found[0].message}{more}",
                         hint="Quantize with backend tensorrt (symmetric INT8, zero-point 0), or exclude the op.")
    quantizers = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
    rows.append({"check": f"TensorRT QDQ rules{f' ({tensorrt})' if tensorrt else ''}", "passed": True,
                 "detail": f"{quantizers} QuantizeLinear: int8, zero-point 0, positive scales, per-channel on weights "
                           "only" + ("; every op supported" if tensorrt else "")})
    return rows


def _polygraphy_lint(path: Path) -> dict:
    import importlib.util
    import subprocess
    import sys
    import tempfile

    if importlib.util.find_spec("polygraphy") is None:
        return {"check": "polygraphy lint", "passed": None, "detail": "not run: install compress[tensorrt]"}
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "lint.json"
        entry = "import sys; from polygraphy.tools import main; sys.exit(main(sys.argv[1:]))"   # its CLI, in-venv
        done = subprocess.run([sys.executable, "-c", entry, "check", "lint", str(path), "-o", str(report)],
                              capture_output=True, text=True, timeout=600)
        detail = "no problems found" if done.returncode == 0 else (done.stderr.strip().splitlines() or ["failed"])[-1]
        if report.is_file():
            found = json.loads(report.read_text())
            bad = [s for s in found.get("lint_entries", []) if s.get("level") in ("exception", "error")]
            if bad:
                detail = "; ".join(str(b.get("message", ""))[:160] for b in bad[:3])
    return {"check": "polygraphy lint", "passed": done.returncode == 0, "detail": detail[:400]}


def open_emulated(artifact: TensorRTQDQModel, threads: int, **kwargs):
    from .onnxruntime_runtime import open_onnxruntime

    session = open_onnxruntime(artifact, threads)
    session.settings["emulated"] = EMULATED
    return session


def compile_qdq(cfg, artifact: OnnxModel, ctx, cls=TensorRTQDQModel) -> TensorRTQDQModel:
    """Check the QDQ ONNX against the target's TensorRT, derive the build's shape profile and write
    `build.json` (target, profile, workspace, DLA core, trtexec command) beside the model."""
    import onnx

    from ..tensorrt.engine import derive_profile, trtexec_command
    from ..tensorrt.rules import dynamic_axes

    trt = ctx.target.tensorrt
    path = ctx.out_dir / "model.onnx"
    shutil.copyfile(artifact.path, path)
    rows = checks(path, tensorrt=trt.versions)
    model = onnx.load(str(path), load_external_data=False)
    profile = derive_profile(dynamic_axes(model), batch=ctx.target.batch, max_batch=trt.max_batch,
                             shapes=trt.shapes)
    engine = "model.engine"
    build = {"target": ctx.target.name, "tensorrt": trt.versions, "jetpack": trt.jetpack,
             "compute_capability": trt.compute_capability, "dla_core": trt.dla_core, "workspace_mb": trt.workspace_mb,
             "profile": {k: [list(v) for v in p] for k, p in profile.items()},
             "trtexec": trtexec_command(path.name, engine, profile, workspace_mb=trt.workspace_mb,
                                        dla_core=trt.dla_core, timing_cache="timing.cache")}
    (ctx.out_dir / "build.json").write_text(json.dumps(build, indent=2))
    precision = "int8" if any(n.op_type == "QuantizeLinear" for n in model.graph.node) else artifact.precision
    out = cls(path=path, precision=precision, notes=[f"accuracy and latency here are {EMULATED}; "
                                                     "`compress build` measures the engine on the device"])
    ctx.details.update(tensorrt_checks=rows, build=build)
    return out


def import_tensorrt(where: str | None = None):
    """The `tensorrt` module, or one clear error saying what to install and where to run."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        raise InputError("TensorRT is not installed here: engines are built and timed on the device that runs them",
                         where=where,
                         hint="Run `compress build` on the Jetson (JetPack ships TensorRT's Python bindings: "
                              "apt install python3-libnvinfer) or on the GPU server (pip install tensorrt), with "
                              "this run folder copied there and compress installed")
    import tensorrt

    return tensorrt


def open_engine_session(artifact, threads: int, **_):
    """An engine, after checking its manifest against this device (engines are not portable)."""
    from ..tensorrt.engine import check_manifest, device_facts, open_engine
    from . import Session

    trt = import_tensorrt()
    manifest = artifact.path.with_name("manifest.json")
    if not manifest.is_file():
        raise InputError(f"{artifact.path} has no manifest.json beside it: build engines with `compress build`")
    facts = device_facts(trt)
    check_manifest(json.loads(manifest.read_text()), facts)
    runner = open_engine(trt, artifact.path)
    return Session(artifact.runtime, runner, settings={"device": facts.get("gpu_name"), "tensorrt": facts["tensorrt"],
                                                       "precision": artifact.precision})
