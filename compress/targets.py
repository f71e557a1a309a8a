"""Device profiles: `targets/*.yaml`, looked up by name (never by position), checked before work starts."""
from __future__ import annotations

import difflib
from importlib import metadata
from pathlib import Path
from typing import Literal

import yaml
from packaging.requirements import Requirement
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import RecipeError

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "targets"

class TensorRTSettings(BaseModel):
    """What an engine for this device is built with (`compress build`, on the device)."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    versions: str = Field(description="TensorRT versions the device runs, pip style, e.g. '>=10.3,<10.4'")
    jetpack: str | None = Field(None, description="JetPack release, e.g. '6.1' (Jetson only)")
    l4t: str | None = Field(None, description="L4T release, e.g. 'R36.4' (Jetson only)")
    compute_capability: str | None = Field(
        None, pattern=r"^\d+\.\d+$",
        description="GPU compute capability, e.g. '8.7' (None: any GPU; the engine's manifest pins the one it was built on)")
    high_precision: Literal["fp16", "fp32"] = Field(
        "fp16", description="dtype of the layers left unquantized (strongly typed: the graph's own dtype)")
    dla_core: int | None = Field(None, ge=0, le=3, description="DLA core to build for (GPU fallback reported)")
    workspace_mb: int = Field(1024, ge=16, le=1 << 20)
    max_batch: int = Field(1, ge=1, le=4096, description="largest batch of the engine's shape profile")
    shapes: dict[str, dict[Literal["min", "opt", "max"], list[int]]] | None = Field(
        None, description="profiles for dynamic axes other than the batch: {input: {min, opt, max}}")


class Target(BaseModel):
    """A device profile. `runtime` + `format` name an entry of the runtime table
    (`compress.runtimes`), which says what `compile` produces and how it runs."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str
    runtime: str = Field(description="a runtime of the table, e.g. openvino, onnxruntime")
    format: str = Field(description="what `compile` writes for it, e.g. openvino-ir, onnx")
    threads: int = Field(2, ge=1, le=512)
    batch: int = Field(1, ge=1, le=4096)
    inference_precision: Literal["f32", "bf16"] | None = None
    graph_optimization: Literal["basic", "extended", "all"] | None = None
    platform: Literal["arm", "amd64"] | None = Field(
        None, description="ONNX Runtime Mobile: the CPU the .ort is optimized for (arm excludes x86-only layouts)")
    operator_config: Literal["ops", "ops_and_types"] | None = Field(
        None, description="ONNX Runtime Mobile: the reduced-build config written beside the .ort lists operators, "
                          "or operators and their types (a smaller custom build)")
    quantize_backends: list[str] = Field(
        min_length=1, description="quantize/qat backends whose INT8 this target runs; a recipe that quantizes "
                                  "with another backend before compiling for it is refused at plan time")
    tensorrt: TensorRTSettings | None = Field(None, description="runtime tensorrt: how the engine is built")
    candidates: list[Literal["fp32", "bf16", "fp16", "int8"]] = Field(
        default_factory=list, description="precisions a `choose` stage may build for this target (none: it "
                                          "cannot be a choose target)")
    requires: dict[str, str] = Field(default_factory=dict)
    resources: dict[str, float] = Field(
        default_factory=dict, description="Ray custom resources of the machines that own this hardware, e.g. "
                                          "{jetson_orin_nano: 1}: a sweep on Ray runs this target's points there")

    def missing_requirements(self) -> list[str]:
        """Packages this target needs that are absent or at a version outside the pin."""
        missing = []
        for package, spec in self.requires.items():
            try:
                installed = metadata.version(package)
            except metadata.PackageNotFoundError:
                missing.append(f"{package}{spec} (not installed)")
                continue
            if installed not in Requirement(f"{package}{spec}").specifier:
                missing.append(f"{package}{spec} (installed {installed})")
        return missing


def _load_file(path: Path) -> Target:
    from .errors import ChainError
    from .runtimes import for_target

    try:
        data = yaml.safe_load(path.read_text())
        target = Target.model_validate(data)
        for_target(target.runtime, target.format)
        if (target.runtime == "tensorrt") != (target.tensorrt is not None):
            raise RecipeError("target file is invalid: a `tensorrt:` block goes with runtime tensorrt, and only "
                              "with it", where=str(path))
        return target
    except ChainError as exc:
        raise RecipeError(f"target file is invalid: {exc.message}", where=str(path),
                          hint="Name a runtime and format that `compress targets` lists.") from exc
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(map(str, err["loc"])) or "(top level)"
        raise RecipeError(f"target file is invalid: {loc}: {err['msg']}", where=str(path)) from exc
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RecipeError(f"target file is invalid: {first}", where=str(path)) from exc


def builtin_targets() -> dict[str, Target]:
    targets = {}
    for path in sorted(BUILTIN_DIR.glob("*.yaml")):
        target = _load_file(path)
        targets[target.name] = target
    return targets


def resolve_target(name: str, *, base_dir: Path, where: str) -> Target:
    """A built-in target by name, or a user's target file by path (relative to the recipe)."""
    if name.endswith((".yaml", ".yml")):
        try:
            path = (base_dir / name).resolve()
            found = path.is_file()
        except (OSError, ValueError) as exc:   # a NUL byte, a name too long for the file system
            raise RecipeError(f"target file {name[:200]!r} is not a usable path: {exc}", where=where) from exc
        if not found:
            raise RecipeError(f"target file {path} does not exist", where=where)
        return _load_file(path)
    targets = builtin_targets()
    if name in targets:
        return targets[name]
    close = difflib.get_close_matches(name, list(targets), n=1)
    hint = f"Did you mean '{close[0]}'?" if close else "Run `compress targets` to list them."
    raise RecipeError(
        f"unknown target '{name}' (known: {', '.join(sorted(targets))})", where=where, hint=hint
    )
