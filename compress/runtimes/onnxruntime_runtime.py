"""ONNX Runtime, CPUExecutionProvider, threads pinned; offline graph optimisation for `compile`."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifacts import OnnxModel
from ..errors import backend_call
from . import Session


def session_options(threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Worker threads busy-wait between ops and, by default, keep spinning for a while after Run()
    # returns. Each session has its own pool, so an idle session's spinners steal cores from the
    # next session that runs (an artifact timed right after its baseline, a budget probe) and from
    # anyone else on the machine. Stop spinning when Run() returns; in-run latency is unchanged.
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


def open_onnxruntime(artifact: OnnxModel, threads: int, **_) -> Session:
    import onnxruntime as ort

    with backend_call(f"ONNX Runtime cannot load {artifact.path.name}"):
        sess = ort.InferenceSession(str(artifact.path), session_options(threads), providers=["CPUExecutionProvider"])
    inputs = sess.get_inputs()
    first_dim = inputs[0].shape[0] if inputs and inputs[0].shape else None
    fixed = first_dim if isinstance(first_dim, int) and first_dim > 0 else None
    names = [i.name for i in inputs]

    def infer(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return sess.run(None, {name: feeds[name] for name in names})

    return Session(artifact.runtime, infer, fixed_batch=fixed,
                   settings={"threads": threads, "provider": "CPUExecutionProvider", "precision": artifact.precision,
                             "onnxruntime": ort.__version__})


def fp32_baseline(reference, spec, folder: Path, cls=OnnxModel) -> OnnxModel:
    """The reference .onnx itself, or the reference torch model exported."""
    import shutil

    from ..convert import torch_to_onnx

    if isinstance(reference, OnnxModel):
        shutil.copyfile(reference.path, folder / "fp32.onnx")
    else:
        torch_to_onnx(reference.module, spec, folder / "fp32.onnx")
    return cls(path=folder / "fp32.onnx")


def count_ops(artifact: OnnxModel, op_types: set[str]) -> int:
    import onnx

    return sum(n.op_type in op_types for n in onnx.load(str(artifact.path), load_external_data=False).graph.node)


def input_shapes(path: Path) -> list[tuple[str, list, str]]:
    import onnx

    from ..models import check_onnx_file

    proto = check_onnx_file(path, str(path))
    init = {i.name for i in proto.graph.initializer}
    shapes = []
    for i in proto.graph.input:
        if i.name in init:
            continue
        t = i.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        shapes.append((i.name, dims, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).name))
    return shapes


def compile_onnx(cfg, artifact: OnnxModel, ctx, cls=OnnxModel) -> OnnxModel:
    """ONNX Runtime's offline graph optimisation, saved into the shipped .onnx."""
    import onnxruntime as ort

    from ..convert import stamp_onnx

    choice = ctx.target.graph_optimization or "extended"
    level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
             "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
             "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[choice]
    path = ctx.out_dir / "model.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.optimized_model_filepath = str(path)
    options.log_severity_level = 3
    with backend_call("ONNX Runtime cannot optimize the model", where=ctx.where):
        ort.InferenceSession(str(artifact.path), options, providers=["CPUExecutionProvider"])
    stamp_onnx(path, ctx.details.get("stamp", {}))
    ctx.details["graph_optimization"] = choice
    return cls(path=path, precision=artifact.precision)
