"""Model loaders: a torchvision architecture, a user's `file.py:factory` + state_dict, or an .onnx file."""
from __future__ import annotations

import difflib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import Artifact, OnnxModel, TorchModel
from ..errors import InputError, ModelError, first_line
from ..recipe import InputSpec, ModelConfig


@dataclass
class ModelSpec:
    """What every runtime agrees on: named inputs (recipe order) and named outputs (model order)."""

    inputs: list[InputSpec]
    outputs: list[str]
    output_shapes: list[list[int | None]] | None = None   # from a dry run at the recipe's batch

    @property
    def batch(self) -> int:
        return self.inputs[0].shape[0]

    def classes(self) -> int | None:
        """Class count of the first output shaped [N, C>1], if the model has one."""
        for shape in self.output_shapes or []:
            if len(shape) == 2 and shape[1] is not None and shape[1] > 1:
                return shape[1]
        return None

    def dummy(self, batch: int | None = None) -> dict[str, np.ndarray]:
        """Zero-valued example inputs (a real batch is used wherever data exists)."""
        feeds = {}
        for spec in self.inputs:
            shape = [batch or spec.shape[0], *spec.shape[1:]]
            feeds[spec.name] = np.zeros(shape, dtype=np.dtype(spec.dtype))
        return feeds

    def example_tensors(self, batch: int | None = None) -> tuple:
        """The zero-valued example inputs as torch tensors, one per input, in order."""
        import torch

        return tuple(torch.from_numpy(v) for v in self.dummy(batch).values())

    def example_input(self, batch: int | None = None):
        """What tracing tools take as `example_input(s)` (Torch-Pruning, NNCF, OpenVINO): the one
        tensor of a single-input model, else the tuple."""
        example = self.example_tensors(batch)
        return example if len(example) > 1 else example[0]


def resolve_path(value: str, base_dir: Path, *, where: str | None = None) -> Path:
    """`value` relative to `base_dir` (`~` expanded); a path the OS cannot take is an InputError."""
    try:
        path = Path(value).expanduser()
        path = path if path.is_absolute() else (base_dir / path).resolve()
        path.exists()   # raises for names the file system refuses (too long, ...)
    except (OSError, ValueError, RuntimeError) as exc:   # RuntimeError: `~user` with no such user
        raise InputError(f"{value[:200]!r} is not a usable path: {exc}", where=where) from exc
    return path


def import_callable(ref: str, base_dir: Path, *, where: str, error=ModelError) -> Any:
    """`path/to/file.py:name` -> the object. Only the file the recipe names is imported."""
    file_part, _, attr = ref.rpartition(":")
    path = resolve_path(file_part, base_dir, where=where)
    if not path.is_file():
        raise error(f"file {path} does not exist", where=where, hint="Paths are relative to the recipe file.")
    module_name = f"compress_user_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise error(f"{path} is not a Python file", where=where)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # the user's file raised (or called exit) while importing
        raise error(f"importing {path} failed: {type(exc).__name__}: {exc}", where=where) from exc
    finally:
        sys.path.remove(str(path.parent))
    if not hasattr(module, attr):
        names = [n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n))]
        close = difflib.get_close_matches(attr, names, n=1)
        hint = f"Did you mean '{close[0]}'?" if close else f"Callables in that file: {', '.join(names) or 'none'}."
        raise error(f"'{attr}' not found in {path}", where=where, hint=hint)
    return getattr(module, attr)


def _load_state_dict(module, path: Path, where: str) -> None:
    import pickle

    import torch

    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist", where=where)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelError(
            f"{path} cannot be loaded with weights_only=True: it holds pickled Python objects, "
            "which compress refuses to run",
            where=where, hint="Save only tensors: torch.save(model.state_dict(), path).",
        ) from None
    except Exception as exc:
        raise ModelError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})",
                         where=where) from exc
    if not isinstance(state, dict) or not state or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        keys = list(state)[:5] if isinstance(state, dict) else type(state).__name__
        raise ModelError(f"{path} is not a state_dict (a flat mapping of names to tensors); found {keys}",
                         where=where, hint="Save it with torch.save(model.state_dict(), path).")
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:   # tensors of the wrong shape
        first = str(exc).strip().splitlines()
        detail = next((line.strip() for line in first if "size mismatch" in line), first[0] if first else "")
        raise ModelError(f"{path} does not match the model: {detail[:300]}", where=where,
                         hint="Check that the factory (and its kwargs) build the architecture the checkpoint was "
                              "saved from.") from exc
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append(f"missing {result.missing_keys[:3]}")
        if result.unexpected_keys:
            parts.append(f"unexpected {result.unexpected_keys[:3]}")
        raise ModelError(f"{path} does not match the model: {'; '.join(parts)}", where=where,
                         hint="Check that the factory builds the architecture the checkpoint was saved from.")


def flatten_outputs(out) -> tuple[list, list[str] | None]:
    import torch

    if isinstance(out, torch.Tensor):
        return [out], None
    if isinstance(out, dict):
        return list(out.values()), [str(k) for k in out]
    if isinstance(out, (list, tuple)):
        flat: list = []
        for item in out:
            sub, _ = flatten_outputs(item)
            flat.extend(sub)
        return flat, None
    if hasattr(out, "_fields"):  # namedtuple
        return list(out), list(out._fields)
    raise ModelError(f"the model returned {type(out).__name__}; expected tensors (a tensor, tuple, list or dict)")


def torch_outputs(module, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], list[str] | None]:
    import torch

    with torch.inference_mode():
        out = module(*[torch.from_numpy(np.ascontiguousarray(v)) for v in feeds.values()])
    flat, names = flatten_outputs(out)
    return [t.detach().float().numpy() if t.is_floating_point() else t.detach().numpy() for t in flat], names


def _output_names(cfg: ModelConfig, found: list[str] | None, count: int) -> list[str]:
    if cfg.outputs is not None:
        if len(cfg.outputs) != count:
            raise ModelError(f"model.outputs names {len(cfg.outputs)} output(s) but the model returns {count}",
                             where="model.outputs")
        return list(cfg.outputs)
    if found is not None and len(found) == count:
        return found
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _load_torch(cfg: ModelConfig, base_dir: Path, seed: int) -> tuple[TorchModel, ModelSpec]:
    import torch

    torch.manual_seed(seed)
    notes = []
    if cfg.source == "torchvision":
        import torchvision

        known = torchvision.models.list_models()
        if cfg.name not in known:
            close = difflib.get_close_matches(cfg.name, known, n=1)
            raise ModelError(f"unknown torchvision architecture '{cfg.name}'", where="model.name",
                             hint=f"Did you mean '{close[0]}'?" if close else "See torchvision.models.list_models().")
        try:
            module = torchvision.models.get_model(cfg.name, weights=None, **cfg.kwargs)
        except TypeError as exc:
            raise ModelError(f"torchvision {cfg.name} rejected kwargs: {exc}", where="model.kwargs") from exc
    else:
        factory = import_callable(cfg.factory, base_dir, where="model.factory")
        try:
            module = factory(**cfg.kwargs)
        except (Exception, SystemExit) as exc:
            raise ModelError(f"calling {cfg.factory} failed: {type(exc).__name__}: {exc}", where="model.factory") from exc
        if not isinstance(module, torch.nn.Module):
            raise ModelError(f"{cfg.factory} returned {type(module).__name__}, not a torch.nn.Module",
                             where="model.factory")
    if cfg.weights is not None:
        _load_state_dict(module, resolve_path(cfg.weights, base_dir, where="model.weights"), "model.weights")
    else:
        notes.append("no weights file: the model has random initial weights, so task metrics are not meaningful")
    module = module.eval().float()
    spec = ModelSpec(inputs=cfg.input_specs, outputs=[])
    try:
        outs, names = torch_outputs(module, spec.dummy())
    except ModelError:
        raise
    except Exception as exc:
        shapes = ", ".join(f"{s.name} {s.shape} {s.dtype}" for s in spec.inputs)
        first = first_line(exc)
        raise ModelError(f"the model does not accept the recipe's input ({shapes}): {first}",
                         where="model.input",
                         hint="Set model.input.shape (batch first) and dtype to what the model takes.") from exc
    if not outs:
        raise ModelError("the model returned no tensors", where="model.factory")
    spec.outputs = _output_names(cfg, names, len(outs))
    spec.output_shapes = [list(o.shape) for o in outs]
    return TorchModel(path=None, module=module, notes=notes), spec


def _onnx_dtype_name(elem_type: int) -> str:
    import onnx

    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):   # 0 (undefined), or a non-tensor input
        return f"ONNX element type {elem_type}"


def check_onnx_file(path: Path, where: str):
    """Load and check an .onnx file; a truncated or corrupt file is a clear ModelError."""
    import onnx

    if not path.is_file():
        raise ModelError(f"ONNX file {path} does not exist", where=where)
    try:
        onnx.checker.check_model(str(path))
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        first = first_line(exc)
        raise ModelError(f"{path} is not a valid ONNX model ({first[:200]})", where=where,
                         hint="Re-export it, or check that the file was copied completely.") from exc


def _load_onnx(cfg: ModelConfig, base_dir: Path) -> tuple[OnnxModel, ModelSpec]:
    path = resolve_path(cfg.path, base_dir, where="model.path")
    proto = check_onnx_file(path, "model.path")
    initializers = {init.name for init in proto.graph.initializer}
    graph_inputs = [i for i in proto.graph.input if i.name not in initializers]
    specs = cfg.input_specs
    if [i.name for i in graph_inputs] != [s.name for s in specs]:
        raise ModelError(f"the recipe's input names {[s.name for s in specs]} differ from the ONNX inputs "
                         f"{[i.name for i in graph_inputs]}", where="model.input",
                         hint="Use the ONNX input names, in the same order.")
    for graph_input, spec in zip(graph_inputs, specs):
        tensor = graph_input.type.tensor_type
        dtype = _onnx_dtype_name(tensor.elem_type)
        if dtype != spec.dtype:
            raise ModelError(f"input '{spec.name}' is {dtype} in the ONNX file but {spec.dtype} in the recipe",
                             where="model.input.dtype")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if len(dims) != len(spec.shape) or any(d is not None and d != s for d, s in zip(dims, spec.shape)):
            shown = [d if d is not None else "?" for d in dims]
            raise ModelError(f"input '{spec.name}' has shape {shown} in the ONNX file, "
                             f"but the recipe says {spec.shape}", where="model.input.shape")
    names = [o.name for o in proto.graph.output]
    if cfg.outputs is not None and list(cfg.outputs) != names:
        raise ModelError(f"model.outputs {cfg.outputs} differ from the ONNX outputs {names}", where="model.outputs")
    shapes = [[d.dim_value if d.HasField("dim_value") else None for d in o.type.tensor_type.shape.dim]
              for o in proto.graph.output]
    return OnnxModel(path=path), ModelSpec(inputs=specs, outputs=names, output_shapes=shapes)


def load_model(cfg: ModelConfig, base_dir: Path, seed: int = 0, module=None) -> tuple[Artifact, ModelSpec]:
    """The reference (FP32) artifact and its I/O spec. `module` overrides the recipe's source (API use)."""
    if module is not None:
        import torch

        if not isinstance(module, torch.nn.Module):
            raise ModelError(f"model= must be a torch.nn.Module, got {type(module).__name__}")
        cfg = cfg.model_copy(update={"source": "python", "factory": "<in-memory>:model", "weights": None})
        module = module.eval().float()
        spec = ModelSpec(inputs=cfg.input_specs, outputs=[])
        try:
            outs, names = torch_outputs(module, spec.dummy())
        except Exception as exc:
            raise ModelError(f"the model does not accept the recipe's input: {exc}", where="model.input") from exc
        spec.outputs = _output_names(cfg, names, len(outs))
        spec.output_shapes = [list(o.shape) for o in outs]
        return TorchModel(path=None, module=module), spec
    if cfg.source == "onnx":
        return _load_onnx(cfg, base_dir)
    return _load_torch(cfg, base_dir, seed)
