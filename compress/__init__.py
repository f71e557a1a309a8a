"""compress: prune, quantize, export and compile a trained model, validated after every stage.

The Python API (the CLI is a thin layer over it)::

    import compress
    result = compress.run("recipes/quickstart.yaml")       # RunResult: .passed, .report, .run_dir
    plan = compress.validate("recipes/quickstart.yaml")    # schema + artifact chain, no compute
    timing = compress.bench("model.onnx", threads=2)       # latency of an .onnx or OpenVINO .xml

Each takes a path, a dict or a Recipe, and raises the typed errors in `compress.errors`
(InputError -> exit 2, StageError -> exit 1). Heavy backends are imported only when used.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .errors import ChainError, CompressError, DataError, InputError, ModelError, RecipeError, StageError
from .recipe import Recipe, load_recipe, parse_recipe

__version__ = "0.1.0"

# torch logs a CUDA warning when NNCF imports its extension loader on a CPU-only machine.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
__all__ = [
    "ChainError",
    "CompressError",
    "DataError",
    "InputError",
    "ModelError",
    "Recipe",
    "RecipeError",
    "StageError",
    "bench",
    "load",
    "resume",
    "run",
    "validate",
]


def load(recipe: str | Path | dict | Recipe, base_dir: str | Path | None = None) -> tuple[Recipe, Path]:
    """A Recipe and the folder its relative paths start from (the recipe file's folder, else `base_dir` or cwd)."""
    if isinstance(recipe, Recipe):
        return recipe, Path(base_dir or Path.cwd()).resolve()
    if isinstance(recipe, dict):
        return parse_recipe(recipe, source="<dict>"), Path(base_dir or Path.cwd()).resolve()
    if not isinstance(recipe, (str, Path)):
        raise RecipeError(f"a recipe is a path, a dict or a Recipe, not {type(recipe).__name__}")
    path = Path(recipe)
    return load_recipe(path), Path(base_dir).resolve() if base_dir else path.resolve().parent


def validate(recipe: str | Path | dict | Recipe, *, base_dir: str | Path | None = None, model: Any = None):
    """Check the schema, the targets and that every stage takes the previous stage's artifact."""
    from .pipeline import plan

    parsed, base = load(recipe, base_dir)
    return plan(parsed, base, in_memory_model=model is not None)


def run(recipe: str | Path | dict | Recipe, *, out: str | Path = "runs", model: Any = None, metric: Any = None,
        base_dir: str | Path | None = None, reporter=None, cache: bool = True, reuse_measurements: bool = False):
    """Run the recipe; returns a RunResult (report as a dict, `.passed` for the gates).

    `model`: a torch.nn.Module used instead of the recipe's model source.
    `metric`: a function(outputs, targets) -> dict, or a class with update()/compute(), used instead
    of the recipe's `metric.function`; `outputs` maps output names to numpy arrays.
    `cache=False` recomputes every stage instead of reusing identical finished ones from `<out>/.cache`.
    `reuse_measurements=True` (what `compress sweep` passes for its points) also reuses the validation of an
    identical artifact on the same data, settings and machine from `<out>/.cache/measurements`, marked as reused
    in the report; a plain run measures everything again.
    """
    from .pipeline import run as run_pipeline

    parsed, base = load(recipe, base_dir)
    return run_pipeline(parsed, base_dir=base, out_dir=Path(out), model=model, metric=metric, reporter=reporter,
                        use_cache=cache, reuse_measurements=reuse_measurements)


def resume(run_dir: str | Path, *, model: Any = None, metric: Any = None, reporter=None, cache: bool = True):
    """Continue a killed run in its folder from the last finished stage; returns a RunResult."""
    from .pipeline import resume as resume_pipeline

    return resume_pipeline(Path(run_dir), model=model, metric=metric, reporter=reporter, use_cache=cache)


def bench(path: str | Path, *, threads: int = 2, batch: int = 1, warmup: int = 10, runs: int = 50,
          inference_precision: str = "f32") -> dict:
    """Latency of an .onnx (ONNX Runtime) or .xml (OpenVINO) file on random inputs of its own shape."""
    from .validation import bench_file

    return bench_file(Path(path), threads=threads, batch=batch, warmup=warmup, runs=runs,
                      inference_precision=inference_precision)
