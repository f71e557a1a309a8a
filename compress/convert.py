"""Format conversions shared by stages and baselines: torch -> ONNX, anything -> OpenVINO model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .artifacts import Artifact, OnnxModel, OpenVinoModel, TorchModel
from .errors import StageError, backend_call
from .models import ModelSpec


def torch_to_onnx(module, spec: ModelSpec, path: Path, *, opset: int = 17) -> None:
    """Export with a dynamic batch dimension; weights stay inside the one .onnx file."""
    import warnings

    import torch

    example = spec.example_tensors()
    names = [s.name for s in spec.inputs]
    axes = {name: {0: "batch"} for name in names + spec.outputs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with backend_call("ONNX export failed",
                          hint="Try another opset, or simplify the model's Python control flow."):
            torch.onnx.export(module, example, str(path), dynamo=False, opset_version=opset,
                              input_names=names, output_names=list(spec.outputs), dynamic_axes=axes,
                              do_constant_folding=True)


def to_openvino(artifact: Artifact, spec: ModelSpec):
    """An ov.Model with the recipe's input/output names and a dynamic batch dimension."""
    import openvino as ov

    if isinstance(artifact, OpenVinoModel):
        from .runtimes.openvino_runtime import core

        return core().read_model(str(artifact.path))
    with backend_call("OpenVINO conversion failed"):
        if isinstance(artifact, TorchModel):
            import warnings

            import torch

            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")

            example_input = spec.example_input()
            shapes = [ov.PartialShape([-1, *s.shape[1:]]) for s in spec.inputs]
            try:
                model = ov.convert_model(artifact.module, example_input=example_input, input=shapes)
            except Exception:
                # OpenVINO traces with torch.jit's sanity check, which rejects some models whose two
                # traces differ only in value names (torchvision's ViT with this torch). Trace without it.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    traced = torch.jit.trace(artifact.module, spec.example_tensors(), check_trace=False,
                                             strict=False)
                model = ov.convert_model(traced, example_input=example_input, input=shapes)
        elif isinstance(artifact, OnnxModel):
            model = ov.convert_model(str(artifact.path))
            model.reshape({port.any_name: ov.PartialShape([-1, *spec_shape[1:]])
                           for port, spec_shape in zip(model.inputs, (s.shape for s in spec.inputs))})
        else:
            raise StageError(f"cannot convert {artifact.kind} to OpenVINO")
    for port, s in zip(model.inputs, spec.inputs):
        port.get_tensor().set_names({s.name})
    for port, name in zip(model.outputs, spec.outputs):
        port.get_tensor().set_names({name})
    return model


def _stable_names(model) -> None:
    """OpenVINO names ops `<Type>_<n>` from a process-wide counter (and derives names such as
    `Multiply_3256/fq_weights_1` from them), so the same model saved twice in one process differs
    in its .xml. Renumber every such counter per model, in op order: same model, same bytes."""
    import re

    counter = re.compile(r"(?<=_)(\d{2,})(?=$|[/:.])")
    mapping: dict[str, str] = {}

    def renumber(name: str) -> str:
        return counter.sub(lambda m: mapping.setdefault(m.group(1), f"c{len(mapping)}"), name)

    model.set_friendly_name("compress")
    keep = {name for port in list(model.inputs) + list(model.outputs) for name in port.get_names()}
    for op in model.get_ordered_ops():
        op.set_friendly_name(renumber(op.get_friendly_name()))
        for output in op.outputs():
            names = output.get_names()
            if names and not names & keep:
                output.set_names({renumber(n) for n in names})


def save_openvino(model, path: Path, stamp: dict) -> OpenVinoModel:
    """Serialize IR (weights kept at their precision) with the compress stamp in rt_info."""
    import openvino as ov

    _stable_names(model)
    model.set_rt_info(json.dumps(stamp, default=str), ["compress", "stamp"])
    ov.save_model(model, str(path), compress_to_fp16=False)
    return OpenVinoModel(path=path)


def stamp_onnx(path: Path, stamp: dict) -> None:
    """Write the compress stamp into the ONNX metadata_props (provenance travels with the file)."""
    import onnx

    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    meta["compress"] = json.dumps(stamp, default=str)
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def onnx_max_abs_diff(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[float, float]:
    diff = max(float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max()) for x, y in zip(a, b))
    scale = max(float(np.abs(y).max()) for y in b)
    return diff, scale
