"""Typed artifacts. Each knows the runtime that runs it; stages dispatch on the artifact type."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Artifact:
    path: Path | None
    precision: str = "fp32"              # fp32 | int8 | ...
    notes: list[str] = field(default_factory=list)
    runtime = "none"
    kind = "artifact"

    def files(self) -> list[Path]:
        return [self.path] if self.path is not None else []

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files() if p.exists())

    def sha256(self) -> str | None:
        files = self.files()
        if not files:
            return None
        digest = hashlib.sha256()
        for path in files:
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()


@dataclass
class TorchModel(Artifact):
    module: Any = None                   # torch.nn.Module, in eval mode
    runtime = "torch"
    kind = "TorchModel"


@dataclass
class OnnxModel(Artifact):
    runtime = "onnxruntime"
    kind = "OnnxModel"

    def files(self) -> list[Path]:
        if self.path is None:
            return []
        side = self.path.with_name(self.path.name + ".data")
        return [self.path] + ([side] if side.exists() else [])


@dataclass
class OpenVinoModel(Artifact):
    runtime = "openvino"
    kind = "OpenVinoModel"
    inference_precision: str = "f32"

    def files(self) -> list[Path]:
        return [] if self.path is None else [self.path, self.path.with_suffix(".bin")]


ARTIFACT_TYPES = {cls.kind: cls for cls in (TorchModel, OnnxModel, OpenVinoModel)}
