"""Validations reused between the points of a sweep (issue #21: common prefixes run once).

The stage cache lets a sweep's points share the stages they have in common; without this, every
point would still measure its FP32 reference, its baselines and those shared stages again. A
point run by a sweep (`compress.run(..., reuse_measurements=True)`) looks each validation up here
first: same artifact (content hash and state), same paired baseline, same eval data, metric,
latency settings, threads, batch, library versions and the same machine (host name and CPU). A
hit returns the record measured by the first point, marked `reused` with that point's run folder,
so the report says where the figure came from. A plain `compress run` never reuses a
measurement: running a recipe again measures again (that is how noise shows, and how the gate
stability tests work).

Entries live in `<runs>/.cache/measurements/<key>/` beside the stage cache: `record.json` and the
per-sample arrays (`arrays.npz`: the intervals' per-sample hits; the reference's outputs, which
agreement is measured against). An entry appears complete or not at all.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .cache import data_identity, digest, path_digest
from .fsutil import atomic_dir
from .validation import EvalResult


class MeasureMemo:
    def __init__(self, root: Path, context: dict):
        self.root = root
        self.context = digest(context)

    @classmethod
    def for_run(cls, root: Path, recipe, base_dir: Path, model_id: str, resolved, machine: dict, versions: dict):
        """The memo of one run: everything a validation depends on besides the artifact itself."""
        metric_file = recipe.metric.function.rpartition(":")[0] if recipe.metric.function else None
        return cls(root, {
            "model": model_id,   # agreement is measured against this model's outputs
            "eval": data_identity(recipe.data.eval, recipe.data.transform, recipe.data.batch_size, base_dir),
            "metric": recipe.metric.model_dump(mode="json"), "metric_file": path_digest(metric_file, base_dir),
            "latency": recipe.latency.model_dump(mode="json"), "resolved": repr(resolved),
            "machine": {"host": os.uname().nodename, **machine}, "versions": versions,
        })

    def key(self, **what) -> str:
        return digest({"context": self.context, **what})

    def get(self, key: str, *, collect: bool) -> tuple[dict, EvalResult] | None:
        entry = self.root / key
        try:
            record = json.loads((entry / "record.json").read_text())
            with np.load(entry / "arrays.npz") as arrays:
                stored = {name: arrays[name] for name in arrays.files}
        except (OSError, ValueError):
            return None
        meta = record.pop("_memo")
        per_sample = {name[len("per_sample/"):]: a for name, a in stored.items() if name.startswith("per_sample/")}
        outputs = None
        if meta["outputs"] is not None:
            outputs = [[stored[f"outputs/{b}/{i}"] for i in range(n)] for b, n in enumerate(meta["outputs"])]
        if collect and outputs is None:
            return None
        record["reused"] = {"run": meta["run"], "measured_at": meta["measured_at"]}
        return record, EvalResult(metrics=record["metrics"], agreement=record["agreement"],
                                  samples=record["samples"], outputs=outputs, per_sample=per_sample)

    def put(self, key: str, record: dict, result: EvalResult, run_dir: Path, measured_at: str) -> None:
        entry = self.root / key
        if (entry / "record.json").is_file():
            return
        arrays = {f"per_sample/{name}": a for name, a in result.per_sample.items()}
        if result.outputs is not None:
            arrays.update({f"outputs/{b}/{i}": a for b, batch in enumerate(result.outputs) for i, a in enumerate(batch)})
        meta = {"run": run_dir.name, "measured_at": measured_at,
                "outputs": [len(batch) for batch in result.outputs] if result.outputs is not None else None}
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_dir(entry) as tmp:
            np.savez(tmp / "arrays.npz", **arrays)
            (tmp / "record.json").write_text(json.dumps({**record, "_memo": meta}, default=str))
