"""ExecuTorch: torch.export -> edge dialect -> XNNPACK delegate -> .pte, run here with ExecuTorch's own
runtime (the one a phone app embeds), threads pinned. Optional: `pip install 'compress[mobile]'`."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..artifacts import ExecuTorchModel, TorchModel
from ..errors import InputError, backend_call
from . import Session

WHERE_TIMED = "timed on this x86 machine with ExecuTorch's XNNPACK kernels, not on the phone"


def require(where: str | None = None) -> None:
    import importlib.util

    if importlib.util.find_spec("executorch") is None:
        raise InputError("ExecuTorch is not installed", where=where,
                         hint="Install the extra: pip install 'compress[mobile]' (make install does).")


def export_program(module, spec, where: str | None = None):
    """torch.export of the module at batch 1; an uncapturable model is one sentence naming the line and module."""
    import torch

    example = spec.example_tensors(batch=1)
    try:
        with torch.no_grad():
            return torch.export.export(module.eval(), example)
    except Exception as exc:   # torch raises several types here; all mean "cannot capture"
        raise InputError(_capture_error(exc, module), where=where,
                         hint="Rewrite the branch with torch.cond / torch.where, or make it static.") from exc


def _capture_error(exc: BaseException, module) -> str:
    """'torch.export cannot capture the model: <what> at file.py:27 in forward() in module 'head''."""
    text = str(exc)
    expr = re.search(r"data-dependent expression (.+?) \(", text)
    frames = [f for f in re.findall(r'File "([^"]+)", line (\d+), in (\w+)', text) if "site-packages" not in f[0]]
    where, modules = "", []
    if frames:
        path, line, fn = frames[0][0], int(frames[0][1]), frames[0][2]
        where = f" at {os.path.basename(path)}:{line} in {fn}()"
        for name, sub in module.named_modules():
            code = getattr(getattr(type(sub), fn, None), "__code__", None)
            if code is not None and code.co_filename == path:
                last = max((ln for _, _, ln in code.co_lines() if ln is not None), default=code.co_firstlineno)
                if code.co_firstlineno <= line <= last:
                    modules.append(name or "<root>")
    what = "data-dependent control flow" if "data-dependent" in text.lower() else \
        f"{type(exc).__name__}: {text.strip().splitlines()[0][:200] if text.strip() else ''}"
    cond = f" ({expr.group(1)})" if expr else ""
    inside = f" in module {', '.join(repr(m) for m in modules)}" if modules else ""
    return f"torch.export cannot capture the model: {what}{cond}{where}{inside}"


def lower(program, path: Path, *, quantized: bool, where: str | None = None) -> None:
    """Edge dialect, XNNPACK partition, ExecuTorch program written to `path`."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    passes = {}
    if quantized:
        from executorch.backends.xnnpack.utils.configs import get_transform_passes

        passes["transform_passes"] = get_transform_passes()
    with backend_call("ExecuTorch lowering to XNNPACK failed", where=where):
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()], **passes)
        manager = edge.to_executorch()
    with open(path, "wb") as fh:
        manager.write_to_file(fh)


def fp32_baseline(reference, spec, folder: Path, cls=ExecuTorchModel) -> ExecuTorchModel:
    require()
    if not isinstance(reference, TorchModel):
        raise InputError("an ExecuTorch baseline needs the model as torch (model.source torchvision or python)")
    path = folder / "fp32.pte"
    lower(export_program(reference.module, spec), path, quantized=False)
    return cls(path=path)


def set_threads(threads: int) -> None:
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count, _unsafe_reset_threadpool

    if _threadpool_get_thread_count() != threads:   # XNNPACK's pthreadpool, process-wide (experimental API)
        _unsafe_reset_threadpool(threads)


def open_pte(artifact: ExecuTorchModel, threads: int, **_) -> Session:
    import torch

    require()
    from executorch.runtime import Runtime

    set_threads(threads)
    with backend_call(f"ExecuTorch cannot load {artifact.path.name}"):
        program = Runtime.get().load_program(Path(artifact.path))
        method = program.load_method("forward")
    meta = method.metadata
    count = meta.num_inputs()
    fixed = int(meta.input_tensor_meta(0).sizes()[0]) if count else None
    names: list[str] | None = None

    def infer(feeds: dict[str, np.ndarray], _program=program) -> list[np.ndarray]:
        # `_program`: a Method whose Program was garbage-collected crashes the process; keep it alive here
        nonlocal names
        names = names or list(feeds)
        outs = method.execute([torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in names])
        return [o.numpy() if hasattr(o, "numpy") else np.asarray(o) for o in outs]

    return Session(artifact.runtime, infer, fixed_batch=fixed,
                   settings={"threads": threads, "delegate": "XNNPACK", "precision": artifact.precision,
                             "executorch": _version("executorch")})


def compile_pte(cfg, artifact, ctx, cls=ExecuTorchModel) -> ExecuTorchModel:
    """A .pte ships as it is (checked to load); a torch model is lowered to an FP32 .pte."""
    import shutil

    require(ctx.where)
    path = ctx.out_dir / "model.pte"
    if isinstance(artifact, ExecuTorchModel):
        shutil.copyfile(artifact.path, path)
    else:
        lower(export_program(artifact.module, ctx.spec, ctx.where), path, quantized=False, where=ctx.where)
    out = cls(path=path, precision=artifact.precision, notes=[WHERE_TIMED])
    open_pte(out, threads=ctx.threads)
    ctx.details["executorch"] = {"delegate": "XNNPACK", "size_mb": round(path.stat().st_size / 1e6, 3)}
    return out


def _version(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
