"""ONNX Runtime, CPUExecutionProvider, threads pinned."""
from __future__ import annotations

import numpy as np

from ..artifacts import OnnxModel
from ..errors import StageError
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


def open_onnxruntime(artifact: OnnxModel, threads: int) -> Session:
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(str(artifact.path), session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise StageError(f"ONNX Runtime cannot load {artifact.path.name}: {str(exc).splitlines()[0][:300]}") from None
    inputs = sess.get_inputs()
    first_dim = inputs[0].shape[0] if inputs and inputs[0].shape else None
    fixed = first_dim if isinstance(first_dim, int) and first_dim > 0 else None
    names = [i.name for i in inputs]

    def infer(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return sess.run(None, {name: feeds[name] for name in names})

    return Session("onnxruntime", infer, fixed_batch=fixed,
                   settings={"threads": threads, "provider": "CPUExecutionProvider", "precision": artifact.precision,
                             "onnxruntime": ort.__version__})
