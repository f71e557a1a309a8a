"""Content-addressed stage outputs.

A stage's key is a hash of what determines its output: the input artifact (content hash, or the
model's identity for the source model), the stage config, the target, the calibration data's
identity, the seed and the library versions. A finished stage folder holds `stage.json` with
that key, so `--resume` and the cache (`<out>/.cache/<key>/`) can reuse it; a folder without
`stage.json` never exists, because stage folders appear by rename when complete.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from .artifacts import ARTIFACT_TYPES, Artifact
from .fsutil import atomic_dir, atomic_write_json, files_digest
from .models import resolve_path
from .recipe import DataSource, ModelConfig, Transform

STAGE_FILE = "stage.json"
def digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path: Path) -> str:
    return files_digest([path])


def folder_digest(path: Path) -> str:
    """Names, sizes and modification times of every file below `path` (cheap for big image folders)."""
    entries = []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        entries.append((str(file.relative_to(path)), stat.st_size, stat.st_mtime_ns))
    return digest(entries)


def path_digest(value: str | None, base_dir: Path) -> str | None:
    if value is None:
        return None
    path = resolve_path(value, base_dir)
    if path.is_dir():
        return folder_digest(path)
    return file_digest(path) if path.is_file() else f"missing:{path}"


def model_identity(cfg: ModelConfig, base_dir: Path, seed: int, module=None) -> str:
    if module is not None:  # an in-memory model: its class and its weights
        import torch

        h = hashlib.sha256(type(module).__qualname__.encode())
        for name, tensor in module.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes() if isinstance(tensor, torch.Tensor) else b"")
        return h.hexdigest()
    factory_file = cfg.factory.rpartition(":")[0] if cfg.factory else None
    return digest({"config": cfg.model_dump(mode="json"), "seed": seed,
                   "factory": path_digest(factory_file, base_dir), "weights": path_digest(cfg.weights, base_dir),
                   "onnx": path_digest(cfg.path, base_dir)})


def data_identity(src: DataSource, transform: Transform, batch_size: int, base_dir: Path) -> str:
    factory_file = src.factory.rpartition(":")[0] if src.factory else None
    return digest({"source": src.model_dump(mode="json"), "transform": transform.model_dump(mode="json"),
                   "batch_size": batch_size, "data": path_digest(src.path, base_dir),
                   "labels": path_digest(src.labels, base_dir), "factory": path_digest(factory_file, base_dir)})


def artifact_identity(artifact: Artifact) -> str | None:
    """Content hash of a file artifact; None for in-memory artifacts."""
    return artifact.sha256()


def write_stage_file(folder: Path, key: str, artifact: Artifact, details: dict) -> None:
    atomic_write_json(folder / STAGE_FILE, {
        "key": key, "kind": artifact.kind, "file": artifact.path.name, "state": artifact.state(),
        "notes": artifact.notes, "details": details})


def read_stage(folder: Path, key: str, base=None) -> tuple[Artifact, dict] | None:
    """The finished stage in `folder` if its key matches, else None. `base` (the unpruned torch
    model) rebuilds torch artifacts from their state_dict and structure."""
    from .runtimes import restore

    try:
        meta = json.loads((folder / STAGE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if meta.get("key") != key or meta.get("kind") not in ARTIFACT_TYPES:
        return None
    cls = ARTIFACT_TYPES[meta["kind"]]
    if not all(p.is_file() for p in cls(path=folder / meta["file"]).files()):
        return None
    artifact = restore(cls, folder / meta["file"], meta.get("state", {}), meta.get("notes", []), base)
    if artifact is None:
        return None
    return artifact, meta.get("details", {})


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link files (artifacts are never modified after they are written); copy across devices."""
    for item in src.iterdir():
        target = dst / item.name
        if item.is_dir():
            target.mkdir()
            _link_tree(item, target)
        else:
            try:
                os.link(item, target)
            except OSError:
                shutil.copy2(item, target)


def store(cache_root: Path, key: str, stage_dir: Path) -> None:
    entry = cache_root / key
    if (entry / STAGE_FILE).is_file():
        return
    cache_root.mkdir(parents=True, exist_ok=True)
    with atomic_dir(entry) as tmp:
        _link_tree(stage_dir, tmp)


def fetch(cache_root: Path, key: str, stage_dir: Path, base=None) -> bool:
    entry = cache_root / key
    if read_stage(entry, key, base) is None:
        return False
    with atomic_dir(stage_dir) as tmp:
        _link_tree(entry, tmp)
    return True


def clean_stale_temps(run_dir: Path) -> None:
    """Remove temp files and folders a killed process left behind (`.<name>.tmp-<pid>`)."""
    for path in sorted(run_dir.rglob(".*.tmp-*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
