"""TensorRT engines from explicit-quantization (QDQ) ONNX: profile, build, run, time, and the version manifest.

`tensorrt` is imported only inside functions; `build_engine` and `open_engine` take the module as their
first argument, so the tests drive them with a recording stand-in (tests/test_tensorrt_engine.py) on a
machine without TensorRT or a GPU. What the calls rely on (TensorRT Python API, 10.x and 11.x):

  * precision comes from the ONNX graph, never from builder flags: INT8 = Q/DQ nodes (symmetric, zero
    point 0, per-channel weights), and the layers left unquantized run in the graph's float type (an
    FP16-cast graph for FP16). TensorRT 11 removed implicit INT8 and BuilderFlag.FP16/INT8; on 10.x those
    flags must not be combined with a strongly typed network. So no precision flag is ever set.
  * NetworkDefinitionCreationFlag.STRONGLY_TYPED is requested when the enum has it (10.x needs it; 11.x
    keeps it deprecated and ignored, networks are always strongly typed). EXPLICIT_BATCH is never used:
    deprecated and ignored in 10.x, gone from the enum in 11.x.
  * DLA (Jetson; TensorRT 10.x, and 11.4.1+ on AGX Orin only): default_device_type = DeviceType.DLA,
    DLA_core = n, BuilderFlag.GPU_FALLBACK. Layers that fall back to the GPU are counted and reported.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ..errors import InputError, StageError, backend_call

MANIFEST_FORMAT = "compress-tensorrt-manifest/1"
TIMING_CACHE_NAME = "timing.cache"


# ---------------------------------------------------------------------------------------------- profile
def _dim_label(i: int, d) -> str:
    return f"dynamic axis {i} ('{d}')" if isinstance(d, str) else f"dynamic axis {i}"


def derive_profile(inputs: dict[str, list[int | str | None]], *, batch: int, max_batch: int,
                   shapes: dict[str, dict[str, list[int]]] | None = None
                   ) -> dict[str, tuple[list[int], list[int], list[int]]]:
    """One optimization profile {input: (min, opt, max)} from the ONNX inputs' dims (`rules.dynamic_axes`).

    A dynamic dim 0 is the batch: min 1, opt `batch`, max `max_batch`. Fixed dims are copied. Any other
    dynamic dim needs the input's full shapes in `shapes` ({input: {"min": [...], "opt": [...], "max":
    [...]}}, the target's `tensorrt.shapes`); given shapes also override the batch rule for that input."""
    if not 1 <= batch <= max_batch:
        raise InputError(f"the TensorRT profile needs 1 <= batch <= max_batch, got batch {batch} and "
                         f"max_batch {max_batch}")
    shapes = shapes or {}
    unknown = sorted(set(shapes) - set(inputs))
    if unknown:
        raise InputError(f"tensorrt.shapes names input '{unknown[0]}', which the model does not have "
                         f"(inputs: {', '.join(inputs)})")
    profile: dict[str, tuple[list[int], list[int], list[int]]] = {}
    for name, dims in inputs.items():
        dims = [None if isinstance(d, int) and d < 1 else d for d in dims]
        if name in shapes:
            given = shapes[name]
            missing = [k for k in ("min", "opt", "max") if k not in given]
            if missing:
                raise InputError(f"tensorrt.shapes for input '{name}' needs min, opt and max; '{missing[0]}' "
                                 "is missing")
            lo, opt, hi = ([int(v) for v in given[k]] for k in ("min", "opt", "max"))
            for label, shape in (("min", lo), ("opt", opt), ("max", hi)):
                if len(shape) != len(dims):
                    raise InputError(f"tensorrt.shapes {label} for input '{name}' has {len(shape)} dims; the "
                                     f"input has {len(dims)}")
                for i, d in enumerate(dims):
                    if isinstance(d, int) and shape[i] != d:
                        raise InputError(f"tensorrt.shapes {label} for input '{name}' sets fixed axis {i} to "
                                         f"{shape[i]}; the model fixes it at {d}")
        else:
            triples = []
            for i, d in enumerate(dims):
                if isinstance(d, int):
                    triples.append((d, d, d))
                elif i == 0:
                    triples.append((1, batch, max_batch))
                else:
                    raise InputError(f"{_dim_label(i, d)} of input '{name}' has no profile: give targets' "
                                     "tensorrt.shapes")
            lo, opt, hi = ([t[k] for t in triples] for k in range(3))
        for i, (a, b, c) in enumerate(zip(lo, opt, hi)):
            if not 1 <= a <= b <= c:
                raise InputError(f"the TensorRT profile of input '{name}' needs 1 <= min <= opt <= max on every "
                                 f"axis; axis {i} has min {a}, opt {b}, max {c}")
        profile[name] = (lo, opt, hi)
    return profile


def _shape_text(shape) -> str:
    return "x".join(str(int(d)) for d in shape)


# ---------------------------------------------------------------------------------------------- trtexec
def trtexec_command(onnx_path, engine_path, profile: dict[str, tuple[list[int], list[int], list[int]]], *,
                    workspace_mb: int, dla_core: int | None = None, timing_cache=None) -> str:
    """The trtexec line that builds the same engine as `build_engine` (flags: samples/common/sampleOptions.cpp).
    --stronglyTyped is a no-op kept for compatibility in 11.x; --int8/--fp16/--best are never given."""
    def name(n: str) -> str:   # trtexec reads 'a:0' (quotes included) as one name holding a colon
        return f"'{n}'" if any(c in n for c in ":,'") else n

    def shapes(k: int) -> str:
        return ",".join(f"{name(n)}:{_shape_text(p[k])}" for n, p in profile.items())

    args = [f"--onnx={shlex.quote(str(onnx_path))}", "--stronglyTyped", *(
        shlex.quote(f"--{flag}Shapes={shapes(k)}") for k, flag in enumerate(("min", "opt", "max"))),
        f"--memPoolSize=workspace:{int(workspace_mb)}M", f"--saveEngine={shlex.quote(str(engine_path))}"]
    if timing_cache is not None:
        args.append(f"--timingCacheFile={shlex.quote(str(timing_cache))}")
    if dla_core is not None:
        args += [f"--useDLACore={int(dla_core)}", "--allowGPUFallback"]
    return " ".join(["trtexec", *args])


# ---------------------------------------------------------------------------------------------- device facts
def _try(fn: Callable):
    try:
        return fn()
    except Exception:
        return None


def _tensorrt_version(trt) -> str | None:
    if trt is None:
        try:
            import tensorrt as trt
        except Exception:
            return None
    return _try(lambda: str(trt.__version__))


def _cuda_runtime() -> int | None:
    def probe():
        from cuda.bindings import runtime as cudart  # cuda-python, shipped with recent torch CUDA wheels

        err, version = cudart.cudaRuntimeGetVersion()
        return int(version) if int(err) == 0 else None
    return _try(probe)


def _jetson() -> dict:
    out: dict = {"l4t": None, "jetpack": None}
    tegra = Path("/etc/nv_tegra_release")
    line = _try(lambda: tegra.read_text(errors="replace").splitlines()[0]) if tegra.exists() else None
    if line:   # "# R36 (release), REVISION: 4.3, GCID: ..., BOARD: generic, EABI: aarch64, DATE: ..."
        m = re.search(r"R(\d+)\D.*?REVISION:\s*([\d.]+)", line)
        out["l4t"] = f"{m.group(1)}.{m.group(2)}" if m else line.strip()
        pkg = _try(lambda: subprocess.run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"],
                                          capture_output=True, text=True, timeout=10))
        out["jetpack"] = (pkg.stdout.strip() or None) if pkg is not None and pkg.returncode == 0 else None
    return out


def device_facts(trt=None) -> dict:
    """What an engine depends on, probed here: TensorRT, CUDA, cuDNN, the GPU, Jetson L4T/JetPack. Anything
    missing is None. No host name is recorded."""
    import platform

    facts: dict = {"tensorrt": _tensorrt_version(trt), "machine": platform.machine(), "cuda_torch": None,
                   "cuda_runtime": _cuda_runtime(), "cudnn": None, "gpu_name": None, "compute_capability": None,
                   "gpu_memory_mib": None}
    try:
        import torch
    except Exception:
        torch = None
    if torch is not None:
        facts["cuda_torch"] = _try(lambda: torch.version.cuda)
        facts["cudnn"] = _try(lambda: torch.backends.cudnn.version())
        if _try(torch.cuda.is_available):
            p = _try(lambda: torch.cuda.get_device_properties(0))
            if p is not None:
                facts.update(gpu_name=p.name, compute_capability=f"{p.major}.{p.minor}",
                             gpu_memory_mib=int(p.total_memory) // 2**20)
    facts.update(_jetson())
    return facts


# ---------------------------------------------------------------------------------------------- manifest
def write_manifest(path, *, facts: dict, onnx_sha256: str, profile: dict, precision: str, dla_core: int | None,
                   gates: dict, build: dict) -> dict:
    """Write the engine's manifest (JSON, atomically) beside it; returns what was written."""
    from ..fsutil import atomic_write_json

    manifest = {"format": MANIFEST_FORMAT, "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "device": dict(facts), "onnx_sha256": onnx_sha256,
                "profile": {k: [list(map(int, s)) for s in v] for k, v in profile.items()},
                "precision": precision, "dla_core": dla_core, "gates": gates, "build": build}
    atomic_write_json(Path(path), manifest)
    return manifest


def _release(version) -> str | None:
    if not version:
        return None
    parts = re.findall(r"\d+", str(version))[:3]
    return ".".join(parts + ["0"] * (3 - len(parts)))


def check_manifest(manifest: dict, facts: dict) -> None:
    """Raise InputError when this device cannot run the manifest's engine: TensorRT engines are not
    portable across TensorRT versions (major.minor.patch) or GPUs (compute capability, GPU name)."""
    built = manifest.get("device", {})
    checks = (("TensorRT", _release(built.get("tensorrt")), _release(facts.get("tensorrt"))),
              ("GPU compute capability", built.get("compute_capability"), facts.get("compute_capability")),
              ("GPU", built.get("gpu_name"), facts.get("gpu_name")))
    for what, was, now in checks:
        if was != now:
            raise InputError(f"the engine was built with {what} {was or 'none'} but this device has {what} "
                             f"{now or 'none'}; TensorRT engines are not portable across TensorRT versions or "
                             "GPUs, so rebuild it with `compress build` on this device")


# ---------------------------------------------------------------------------------------------- build
def _write_bytes_atomic(path: Path, data) -> int:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            n = fh.write(memoryview(data))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write {path}: {exc.strerror or exc}", hint="Check free space and permissions.") \
            from exc
    return n


def _parser_errors(parser) -> list[str]:
    """IParserError lines; node_name/node_operator exist from TensorRT 10, node (an index) before that."""
    def ask(err, method):
        fn = getattr(err, method, None)
        return _try(fn) if fn is not None else None

    lines = []
    for i in range(int(parser.num_errors)):
        err = parser.get_error(i)
        desc = ask(err, "desc") or str(err)
        node = ask(err, "node_name") or ""
        op = ask(err, "node_operator") or ""
        if not node:
            index = ask(err, "node")
            node = f"#{index}" if isinstance(index, int) and index >= 0 else ""
        lines.append(f"node {node} ({op}): {desc}" if node and op else f"node {node}: {desc}" if node else desc)
    return lines


def _dla_split(network, config) -> dict:
    """How many network layers TensorRT can place on the DLA (IBuilderConfig.can_run_on_DLA); the rest fall
    back to the GPU."""
    if not hasattr(config, "can_run_on_DLA"):
        return {"determined": False, "why": "this TensorRT has no IBuilderConfig.can_run_on_DLA"}
    on_dla, on_gpu = [], []
    for i in range(int(network.num_layers)):
        layer = network.get_layer(i)
        (on_dla if config.can_run_on_DLA(layer) else on_gpu).append(layer.name)
    return {"determined": True, "method": "IBuilderConfig.can_run_on_DLA per network layer",
            "layers_on_dla": len(on_dla), "layers_on_gpu": len(on_gpu), "gpu_fallback_layers": on_gpu}


def build_engine(trt, onnx_path, engine_path, *, profile: dict[str, tuple[list[int], list[int], list[int]]],
                 workspace_mb: int, dla_core: int | None = None, timing_cache_path=None,
                 log: Callable[[str], None] = print) -> dict:
    """Build a strongly typed engine from a QDQ ONNX with TensorRT module `trt`; write it atomically.

    The timing cache (default: `timing.cache` beside the engine) is loaded when present and saved back,
    so rebuilds on the same device reuse it. Returns build facts: seconds, layers, the DLA/GPU split when
    a DLA core was asked for, and the equivalent trtexec line."""
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    cache_path = Path(timing_cache_path) if timing_cache_path is not None else engine_path.parent / TIMING_CACHE_NAME
    version = str(getattr(trt, "__version__", "?"))
    if dla_core is not None:
        dynamic = next((n for n, (lo, _, hi) in profile.items() if list(lo) != list(hi)), None)
        if dynamic is not None:
            lo, _, hi = profile[dynamic]
            raise InputError(f"a DLA build needs a static profile (min = opt = max), but input '{dynamic}' has min "
                             f"{_shape_text(lo)} and max {_shape_text(hi)}: give one shape for DLA targets")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    with backend_call(f"TensorRT {version} could not start a build"):
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
        parser = trt.OnnxParser(network, logger)
    with backend_call(f"TensorRT's ONNX parser failed on {onnx_path}"):
        parsed = parser.parse_from_file(str(onnx_path))
    if not parsed:
        errors = _parser_errors(parser)
        shown = "; ".join(errors[:5]) + (f"; and {len(errors) - 5} more" if len(errors) > 5 else "")
        raise InputError(f"TensorRT {version}'s ONNX parser rejected {onnx_path.name}: {shown or 'no detail given'}")

    with backend_call(f"TensorRT {version} rejected the build settings"):
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) * 2**20)
        names = [network.get_input(i).name for i in range(int(network.num_inputs))]
        extra = sorted(set(profile) - set(names))
        if extra:
            raise InputError(f"the TensorRT profile names input '{extra[0]}', which the network does not have "
                             f"(inputs: {', '.join(names)})")
        missing = [n for n in names if n not in profile]
        if missing:
            raise InputError(f"the TensorRT profile has no shapes for network input '{missing[0]}'")
        opt_profile = builder.create_optimization_profile()
        for name in names:
            lo, opt, hi = profile[name]
            opt_profile.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
        config.add_optimization_profile(opt_profile)

        blob = cache_path.read_bytes() if cache_path.exists() else b""
        accepted = config.set_timing_cache(config.create_timing_cache(blob), ignore_mismatch=False)
        reused = bool(blob) and bool(accepted)
        if blob and not accepted:   # made by another TensorRT or GPU: start empty rather than mix tactics
            log(f"TensorRT: timing cache {cache_path} does not match this TensorRT/GPU; starting a new one")
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

        dla = None
        if dla_core is not None:
            device_dla = getattr(trt.DeviceType, "DLA", None)
            cores = int(getattr(builder, "num_DLA_cores", 0) or 0)
            if device_dla is None or cores == 0:
                raise InputError(f"dla_core {dla_core} was asked for, but this device and TensorRT {version} "
                                 "have no DLA core")
            if not 0 <= dla_core < cores:
                raise InputError(f"dla_core {dla_core} does not exist: this device has DLA cores 0..{cores - 1}")
            config.default_device_type = device_dla
            config.DLA_core = int(dla_core)
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
            dla = {"core": int(dla_core), **_dla_split(network, config)}
            if dla.get("determined") and dla["layers_on_gpu"]:
                shown = ", ".join(dla["gpu_fallback_layers"][:8])
                log(f"TensorRT: GPU fallback: {dla['layers_on_gpu']} of {int(network.num_layers)} layers cannot "
                    f"run on DLA core {dla_core} and run on the GPU ({shown}"
                    f"{', ...' if dla['layers_on_gpu'] > 8 else ''})")
            elif not dla.get("determined"):
                log(f"TensorRT: the DLA/GPU layer split cannot be determined: {dla['why']}")

    shapes = ", ".join(f"{n} {_shape_text(p[0])}/{_shape_text(p[1])}/{_shape_text(p[2])}" for n, p in profile.items())
    log(f"TensorRT {version}: building {engine_path.name} from {onnx_path.name} (strongly typed, workspace "
        f"{workspace_mb} MiB, profile {shapes}{'' if dla_core is None else f', DLA core {dla_core}'})")
    start = time.perf_counter()
    with backend_call(f"TensorRT {version} failed building {engine_path.name}"):
        plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if plan is None:
        raise StageError(f"TensorRT {version} could not build an engine from {onnx_path.name}: "
                         "build_serialized_network returned None (its log above says why)")
    engine_bytes = _write_bytes_atomic(engine_path, plan)
    with backend_call(f"TensorRT {version} could not serialize the timing cache"):
        cache_bytes = _write_bytes_atomic(cache_path, config.get_timing_cache().serialize())
    return {"engine": str(engine_path), "engine_bytes": engine_bytes, "tensorrt": version,
            "build_seconds": round(seconds, 3), "layers": int(network.num_layers),
            "strongly_typed_flag": strongly_typed is not None,   # False: this TensorRT has no flag (always typed)
            "workspace_bytes": int(workspace_mb) * 2**20,
            "profile": {k: [list(map(int, s)) for s in v] for k, v in profile.items()},
            "timing_cache": {"path": str(cache_path), "loaded_bytes": len(blob), "reused": reused,
                             "saved_bytes": cache_bytes},
            "dla": dla,
            "trtexec": trtexec_command(onnx_path, engine_path, profile, workspace_mb=workspace_mb,
                                       dla_core=dla_core, timing_cache=cache_path)}


# ---------------------------------------------------------------------------------------------- run
class EngineRunner:
    """Runs an engine on numpy feeds through torch CUDA tensors: `runner(feeds) -> [outputs]` in the
    engine's output order. `bind(feeds)` + `execute()` enqueue without copies, for `time_engine`."""

    def __init__(self, trt, engine, runtime, *, device: str = "cuda"):
        import torch

        self.trt, self.engine, self.runtime, self.torch, self.device = trt, engine, runtime, torch, device
        with backend_call("TensorRT could not create an execution context"):
            self.context = engine.create_execution_context()
        if self.context is None:
            raise StageError("TensorRT could not create an execution context (out of GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(int(engine.num_io_tensors))]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        # device="cpu" exists only for the recording stand-in test: real TensorRT needs CUDA memory
        self.stream = torch.cuda.Stream() if device == "cuda" else None
        self._bound: dict = {}

    @property
    def stream_handle(self) -> int:
        return int(self.stream.cuda_stream) if self.stream is not None else 0

    def bind(self, feeds: dict[str, np.ndarray]) -> None:
        torch, ctx = self.torch, self.context
        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise InputError(f"the engine needs input '{missing[0]}' (inputs: {', '.join(self.inputs)})")
        bound = {}
        for name in self.inputs:
            array = np.ascontiguousarray(feeds[name], dtype=self.dtypes[name])
            bound[name] = torch.from_numpy(array).to(self.device)
            if not ctx.set_input_shape(name, tuple(array.shape)):
                raise InputError(f"input '{name}' shape {list(array.shape)} is outside the engine's profile")
        for name in self.outputs:
            shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise StageError(f"engine output '{name}' has a data-dependent shape {list(shape)}; this runner "
                                 "needs output shapes known from the input shapes")
            dtype = torch.from_numpy(np.empty(0, self.dtypes[name])).dtype
            bound[name] = torch.empty(shape, dtype=dtype, device=self.device)
        for name, tensor in bound.items():
            ctx.set_tensor_address(name, tensor.data_ptr())
        if self.stream is not None:   # the copies above ran on the current stream
            self.stream.wait_stream(torch.cuda.current_stream())
        self._bound = bound

    def execute(self) -> None:
        if not self.context.execute_async_v3(self.stream_handle):
            raise StageError("TensorRT execute_async_v3 failed (its log says why)")

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.bind(feeds)
        self.execute()
        if self.stream is not None:
            self.stream.synchronize()
        return [self._bound[n].cpu().numpy() for n in self.outputs]


def open_engine(trt, engine_path, *, device: str = "cuda") -> EngineRunner:
    """Deserialize `engine_path` with TensorRT module `trt` and return a runner for numpy feeds."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise InputError(f"engine {engine_path} does not exist: build it with `compress build`")
    with backend_call(f"TensorRT could not load {engine_path.name}"):
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise StageError(f"engine {engine_path.name} does not match this TensorRT/GPU: rebuild it with "
                         "`compress build` on this device")
    return EngineRunner(trt, engine, runtime, device=device)


def time_engine(runner: EngineRunner, feeds: dict[str, np.ndarray], *, warmup: int, runs: int) -> dict:
    """Latency of `runner.execute()` alone (inputs bound once), timed with CUDA events on the runner's stream."""
    import torch

    if runs < 1:
        raise InputError(f"time_engine needs runs >= 1, got {runs}")
    runner.bind(feeds)
    for _ in range(max(0, warmup)):
        runner.execute()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(runner.stream)
        runner.execute()
        end.record(runner.stream)
        end.synchronize()
        times.append(start.elapsed_time(end))
    p50, p90, p99 = np.percentile(np.asarray(times, dtype=np.float64), [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "runs": runs}

