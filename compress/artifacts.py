"""Typed artifacts. Each type names its runtime; what a runtime can do with it (open, baseline,
count ops, bench, cache round trip) is one entry of the table in `compress.runtimes`, looked up
through the class hierarchy, so a subclass inherits what it does not override."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .fsutil import files_digest

ARTIFACT_TYPES: dict[str, type[Artifact]] = {}   # kind -> class, filled as classes are defined


@dataclass
class Artifact:
    path: Path | None
    precision: str = "fp32"              # fp32 | int8 | ...
    notes: list[str] = field(default_factory=list)
    runtime: ClassVar[str] = "none"
    kind: ClassVar[str] = "artifact"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            ARTIFACT_TYPES[cls.kind] = cls

    def files(self) -> list[Path]:
        return [self.path] if self.path is not None else []

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files() if p.exists())

    def sha256(self) -> str | None:
        files = self.files()
        return files_digest(files) if files else None

    def state(self) -> dict:
        """The plain fields that, with the file, restore this artifact (precision, inference precision...)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("path", "notes", "module")}


@dataclass
class TorchModel(Artifact):
    module: Any = None                   # torch.nn.Module, in eval mode
    runtime: ClassVar[str] = "torch"
    kind: ClassVar[str] = "TorchModel"


@dataclass
class OnnxModel(Artifact):
    runtime: ClassVar[str] = "onnxruntime"
    kind: ClassVar[str] = "OnnxModel"

    def files(self) -> list[Path]:
        if self.path is None:
            return []
        side = self.path.with_name(self.path.name + ".data")
        return [self.path] + ([side] if side.exists() else [])


@dataclass
class OpenVinoModel(Artifact):
    runtime: ClassVar[str] = "openvino"
    kind: ClassVar[str] = "OpenVinoModel"
    inference_precision: str = "f32"

    def files(self) -> list[Path]:
        return [] if self.path is None else [self.path, self.path.with_suffix(".bin")]


@dataclass
class OrtFormatModel(OnnxModel):
    """ONNX Runtime Mobile's `.ort` flatbuffer; the reduced-build operator config lies beside it."""
    runtime: ClassVar[str] = "onnxruntime-mobile"
    kind: ClassVar[str] = "OrtFormatModel"

    def files(self) -> list[Path]:
        if self.path is None:
            return []
        return [self.path, *sorted(self.path.parent.glob(f"{self.path.stem}.required_operators*.config"))]


@dataclass
class TensorRTQDQModel(OnnxModel):
    """An .onnx with TensorRT-style explicit quantization (symmetric INT8 QDQ, zero-point 0). Here it
    runs on ONNX Runtime's CPU provider: emulated, never the engine's figures. `compress build` turns
    it into an engine on the device."""
    runtime: ClassVar[str] = "tensorrt-emulated"
    kind: ClassVar[str] = "TensorRTQDQModel"

    def files(self) -> list[Path]:
        build = self.path.with_name("build.json") if self.path is not None else None
        return super().files() + ([build] if build is not None and build.exists() else [])


@dataclass
class ExecuTorchModel(Artifact):
    """An ExecuTorch program (.pte) lowered to XNNPACK: what a phone app loads; runs here too."""
    runtime: ClassVar[str] = "executorch"
    kind: ClassVar[str] = "ExecuTorchModel"


@dataclass
class TensorRTEngine(Artifact):
    """A serialized TensorRT engine with `manifest.json` beside it (the device it was built for)."""
    runtime: ClassVar[str] = "tensorrt-engine"
    kind: ClassVar[str] = "TensorRTEngine"

    def files(self) -> list[Path]:
        if self.path is None:
            return []
        manifest = self.path.with_name("manifest.json")
        return [self.path] + ([manifest] if manifest.exists() else [])
