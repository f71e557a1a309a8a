"""The runtime table: one entry per artifact type, holding everything a runtime knows.

    open            artifact -> Session (named numpy in, list of numpy out), threads pinned
    fp32_baseline   the FP32 baseline on this runtime, built from the reference model
    count_ops       how many ops of given types an artifact holds (quantized-op counts)
    input_shapes    a file's inputs (name, dims, dtype), for `compress bench`
    compile         what a `compile` stage does for a target of this runtime and format
    restore         rebuild an artifact from its file and saved state (resume, stage cache)

Entries are looked up through the class hierarchy, field by field: a subclass entry (say
`OrtFormatModel(OnnxModel)`) sets only what differs and inherits the rest. Implementations live
in this package's runtime modules and are imported on first use, so `import compress` imports no
backend. A new runtime is one artifact class, one module and one `register_runtime` call.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np

from ..artifacts import (
    Artifact,
    ExecuTorchModel,
    OnnxModel,
    OpenVinoModel,
    OrtFormatModel,
    TensorRTEngine,
    TensorRTQDQModel,
    TorchModel,
)
from ..errors import ChainError, StageError


@dataclass
class Session:
    runtime: str
    infer: Callable[[dict[str, np.ndarray]], list[np.ndarray]]
    fixed_batch: int | None = None                 # the model only takes this batch size
    settings: dict = field(default_factory=dict)   # threads, precision, provider...: recorded in reports

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run any batch size: a model with a fixed batch gets chunks, the last one padded."""
        size = next(iter(feeds.values())).shape[0]
        if self.fixed_batch is None or size == self.fixed_batch:
            return self.infer(feeds)
        step = self.fixed_batch
        parts: list[list[np.ndarray]] = []
        for start in range(0, size, step):
            chunk = {k: v[start:start + step] for k, v in feeds.items()}
            n = next(iter(chunk.values())).shape[0]
            if n < step:
                chunk = {k: np.concatenate([v, np.repeat(v[-1:], step - n, axis=0)]) for k, v in chunk.items()}
            parts.append([o[:n] for o in self.infer(chunk)])
        return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def lazy(module: str, name: str) -> Callable:
    """`compress.runtimes.<module>.<name>`, imported when first called."""
    def call(*args, **kwargs):
        return getattr(importlib.import_module(f"{__name__}.{module}"), name)(*args, **kwargs)
    call.__qualname__ = f"{module}.{name}"
    return call


@dataclass(frozen=True)
class RuntimeSpec:
    artifact: type[Artifact]
    name: str | None = None                  # runtime name in targets and reports; default: artifact.runtime
    short: str | None = None                 # abbreviation in the terminal table
    description: str | None = None
    here: str | None = None                  # what of it runs on this machine, when not all of it
    format: str | None = None                # the `format:` a target names to get this artifact from `compile`
    suffixes: tuple[str, ...] | None = None  # model files `compress bench` opens with this runtime
    requires: tuple[str, ...] | None = None  # distributions this runtime needs (`compress targets` says if ready)
    inference_precisions: tuple[str, ...] | None = None   # what `inference_precision` may ask for
    compiles_from: tuple[type, ...] | None = None         # artifact types `compile` turns into this one
    open: Callable[..., Session] | None = None                 # (artifact, threads, static_batch) -> Session
    fp32_baseline: Callable[..., Artifact] | None = None       # (reference, model_spec, folder, cls) -> Artifact
    count_ops: Callable[[Artifact, set[str]], int] | None = None
    input_shapes: Callable[..., list] | None = None            # (path) -> [(name, dims, dtype)]
    compile: Callable[..., Artifact] | None = None             # (cfg, artifact, ctx, cls) -> Artifact
    restore: Callable[..., Artifact | None] | None = None      # (cls, path, state, base) -> Artifact


RUNTIMES: dict[type, RuntimeSpec] = {}


def register_runtime(spec: RuntimeSpec) -> RuntimeSpec:
    RUNTIMES[spec.artifact] = spec
    return spec


class Entry:
    """The entry for one artifact type with every field resolved through the class hierarchy."""

    def __init__(self, artifact_type: type):
        self.artifact = artifact_type
        chain = [RUNTIMES[c] for c in artifact_type.__mro__ if c in RUNTIMES]
        if not chain:
            raise StageError(f"no runtime is registered for {getattr(artifact_type, 'kind', artifact_type)}")
        for f in fields(RuntimeSpec):
            if f.name != "artifact":
                setattr(self, f.name, next((getattr(s, f.name) for s in chain if getattr(s, f.name) is not None),
                                           None))
        self.name = self.name or artifact_type.runtime
        self.short = self.short or self.name
        for name in ("suffixes", "requires", "inference_precisions", "compiles_from"):
            setattr(self, name, getattr(self, name) or ())

    def need(self, what: str) -> Callable:
        fn = getattr(self, what)
        if fn is None:
            raise StageError(f"runtime {self.name} cannot {what.replace('_', ' ')} ({self.artifact.kind})")
        return fn


def runtime_for(artifact_or_type) -> Entry:
    cls = artifact_or_type if isinstance(artifact_or_type, type) else type(artifact_or_type)
    return Entry(cls)


def runtimes() -> list[Entry]:
    """Every registered runtime, in registration order."""
    return [Entry(cls) for cls in RUNTIMES]


def runtime_named(name: str) -> Entry | None:
    return next((r for r in runtimes() if r.name == name), None)


def for_target(runtime: str, fmt: str, *, where: str | None = None) -> Entry:
    """The artifact a target's `runtime` + `format` compile to; unknown pairs are an input error."""
    known = [r for r in runtimes() if r.format is not None]
    match = next((r for r in known if r.name == runtime and r.format == fmt), None)
    if match is None:
        pairs = ", ".join(f"{r.name}/{r.format}" for r in known)
        raise ChainError(f"no runtime compiles runtime '{runtime}' with format '{fmt}' (known runtime/format: {pairs})",
                         where=where)
    return match


def for_suffix(suffix: str) -> Entry | None:
    return next((r for r in runtimes() if suffix in r.suffixes), None)


def open_session(artifact: Artifact, *, threads: int, static_batch: int | None = None) -> Session:
    return runtime_for(artifact).need("open")(artifact, threads=threads, static_batch=static_batch)


def restore(cls: type, path, state: dict, notes: list[str], base=None) -> Artifact | None:
    """An artifact of type `cls` from its file and `Artifact.state()`; None when it cannot be rebuilt
    (e.g. a torch module without the base model its structure is replayed on)."""
    fn = runtime_for(cls).restore
    known = {f.name for f in fields(cls)}
    state = {k: v for k, v in state.items() if k in known}
    if fn is not None:
        return fn(cls, path, state, notes, base)
    return cls(path=path, notes=list(notes), **state)


def count_ops(artifact: Artifact, op_types: set[str]) -> int:
    """How many ops of these types the artifact holds (FakeQuantize, QuantizeLinear, ...)."""
    fn = runtime_for(artifact).count_ops
    return fn(artifact, op_types) if fn is not None else 0


register_runtime(RuntimeSpec(
    TorchModel, short="PT", description="torch", requires=("torch",),
    open=lazy("torch_runtime", "open_torch"), fp32_baseline=lazy("torch_runtime", "fp32_baseline"),
    restore=lazy("torch_runtime", "restore")))
register_runtime(RuntimeSpec(
    OnnxModel, short="ORT", description="ONNX Runtime", format="onnx",
    suffixes=(".onnx",), requires=("onnxruntime",), compiles_from=(OnnxModel,),
    open=lazy("onnxruntime_runtime", "open_onnxruntime"),
    fp32_baseline=lazy("onnxruntime_runtime", "fp32_baseline"),
    count_ops=lazy("onnxruntime_runtime", "count_ops"), input_shapes=lazy("onnxruntime_runtime", "input_shapes"),
    compile=lazy("onnxruntime_runtime", "compile_onnx")))
register_runtime(RuntimeSpec(
    OpenVinoModel, short="OV", description="OpenVINO", format="openvino-ir", suffixes=(".xml",),
    requires=("openvino",), inference_precisions=("f32", "bf16", "f16"),
    compiles_from=(TorchModel, OnnxModel, OpenVinoModel),
    open=lazy("openvino_runtime", "open_openvino"), fp32_baseline=lazy("openvino_runtime", "fp32_baseline"),
    count_ops=lazy("openvino_runtime", "count_ops"), input_shapes=lazy("openvino_runtime", "input_shapes"),
    compile=lazy("openvino_runtime", "compile_ir")))
register_runtime(RuntimeSpec(
    OrtFormatModel, short="ORTm", description="ONNX Runtime Mobile (.ort), run here", format="ort",
    suffixes=(".ort",), compiles_from=(OnnxModel,),
    fp32_baseline=lazy("ort_mobile_runtime", "fp32_baseline"), count_ops=lazy("ort_mobile_runtime", "count_ops"),
    input_shapes=lazy("ort_mobile_runtime", "input_shapes"), compile=lazy("ort_mobile_runtime", "compile_ort")))
register_runtime(RuntimeSpec(
    TensorRTQDQModel, name="tensorrt", short="TRT~", format="qdq-onnx",
    description="TensorRT QDQ emulated on ONNX Runtime CPU, not the engine",
    here="QDQ here, engine on the device", requires=("nvidia-modelopt",), compiles_from=(OnnxModel,),
    open=lazy("tensorrt_runtime", "open_emulated"), compile=lazy("tensorrt_runtime", "compile_qdq")))
register_runtime(RuntimeSpec(
    ExecuTorchModel, short="ET", description="ExecuTorch (XNNPACK), run here", format="pte",
    requires=("executorch",), compiles_from=(TorchModel, ExecuTorchModel),
    open=lazy("executorch_runtime", "open_pte"), fp32_baseline=lazy("executorch_runtime", "fp32_baseline"),
    compile=lazy("executorch_runtime", "compile_pte")))
register_runtime(RuntimeSpec(
    TensorRTEngine, short="TRT", description="TensorRT engine on the device's GPU", suffixes=(".engine",),
    here="on the device only (`compress build`)", requires=("tensorrt",),
    open=lazy("tensorrt_runtime", "open_engine_session")))
