"""Sweeps: a base recipe and axes of values; every point is an ordinary run.

    name: fashion-sweep
    base: recipe.yaml                    # a path (relative to this file) or an inline recipe mapping
    axes:
      stages[0].ratio: [0.3, 0.5]        # a path into the base recipe -> the values it takes
      stages[1].method: [minmax, percentile]
      target: [x86-cpu-openvino]         # shorthand: the target of every stage that names one
      "stages[1].backend, target": [[openvino, x86-cpu-openvino], [onnxruntime, x86-cpu-onnxruntime]]  # zipped
    resources: {num_gpus: 1}             # per point on Ray (num_cpus: default the threads it times with,
                                         # num_gpus, resources: {name: amount});
                                         # a target's own `resources:` (targets/*.yaml) are added

The points are the product of the axes. They run through one folder of runs, so they share its
stage cache (`runs/.cache`, content-addressed): a prefix of stages common to several points runs
once, and a validation an earlier point made of the same artifact on the same data, settings and
machine is reused, marked as such (compress/measure_memo.py). A point is
`compress.run(<base with the point's values>)`; a point that fails (an invalid combination, a backend
error) is recorded and the sweep goes on. The sweep folder holds one
`points/<key>.json` per finished point, so `--resume` skips them; the report (sweep.json, sweep.md,
sweep.html) and `recommended.yaml` are written at the end.
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import itertools
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .cache import digest
from .errors import CompressError, InputError, RecipeError, first_line
from .fsutil import atomic_write_json
from .recipe import UniqueKeyLoader, parse_recipe

SWEEP_KEYS = ("name", "base", "axes", "resources")
RESOURCE_KEYS = ("num_cpus", "num_gpus", "resources")
_PATH = re.compile(r"[A-Za-z_]\w*(\[\d+\]|\.[A-Za-z_]\w*)*")
_TOKEN = re.compile(r"([A-Za-z_]\w*)|\[(\d+)\]")


# ---------------------------------------------------------------- the sweep file
@dataclass
class Axis:
    paths: list[str]            # one path, or several zipped ones
    values: list[list]          # per value of the axis: one value per path


@dataclass
class Point:
    index: int
    overrides: dict[str, Any]   # path -> value
    recipe: dict                # the base recipe with the overrides applied
    resources: dict = field(default_factory=dict)
    error: str | None = None    # the point's recipe is invalid (recorded as a failed point)

    @property
    def key(self) -> str:
        """The point's whole recipe: after an edit of the base, --resume runs the points again."""
        return digest(self.recipe)[:12]

    @property
    def label(self) -> str:
        return ", ".join(f"{p.rsplit('.', 1)[-1]}={v}" for p, v in self.overrides.items()) or "base"

    @property
    def target(self) -> str | None:
        """The last target a stage of the point names (points are compared per target)."""
        names = [s.get("target") for s in self.recipe.get("stages", []) if isinstance(s.get("target"), str)]
        return names[-1] if names else None


@dataclass
class Sweep:
    name: str
    source: Path
    base: dict
    base_dir: Path
    axes: list[Axis]
    resources: dict

    def points(self) -> list[Point]:
        points = []
        for index, combo in enumerate(itertools.product(*(axis.values for axis in self.axes))):
            overrides = {path: value for axis, values in zip(self.axes, combo) for path, value in zip(axis.paths, values)}
            recipe = copy.deepcopy(self.base)
            for path, value in overrides.items():
                _apply(recipe, path, value)
            recipe["name"] = f"{self.base.get('name', self.name)}-p{index:02d}"[:80]
            point = Point(index, overrides, recipe)
            try:
                parse_recipe(recipe, source=f"{self.source} point {index} ({point.label})")
                point.resources = self._resources(point.target)
            except RecipeError as exc:
                point.error = exc.render()
            points.append(point)
        return points

    def _resources(self, target: str | None) -> dict:
        """The sweep's resources per point, plus the custom resources of the point's target (its YAML's
        `resources:`, e.g. {jetson_orin_nano: 1})."""
        from .targets import resolve_target

        extra = resolve_target(target, base_dir=self.base_dir, where="target").resources if target else {}
        return {**self.resources, "resources": {**self.resources.get("resources", {}), **extra}}


def _parse_path(path: str, where: str) -> list:
    if not _PATH.fullmatch(path):
        raise RecipeError(f"axis {path!r} is not a path like stages[1].method or model.weights", where=where)
    return [name if name else int(index) for name, index in _TOKEN.findall(path)]


def _format_path(parts: list) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p) for i, p in enumerate(parts))


def _valid_paths(node, prefix: list | None = None) -> Iterator[str]:
    prefix = prefix or []
    if prefix:
        yield _format_path(prefix)
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _valid_paths(value, [*prefix, key])
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _valid_paths(value, [*prefix, i])


def _apply(recipe: dict, path: str, value) -> None:
    parts = _parse_path(path, "axes")
    node = recipe
    for part in parts[:-1]:
        node = node[part] if isinstance(part, int) else node.setdefault(part, {})
    node[parts[-1]] = copy.deepcopy(value)


def _target_paths(base) -> list[str]:
    """`target` as an axis: every stage whose handler names a target."""
    from .stages import handler_for

    return [f"stages[{i}].target" for i, stage in enumerate(base.stages) if handler_for(stage).target(stage) is not None]


def load_sweep(path: Path) -> Sweep:
    where = str(path)
    try:
        data = yaml.load(Path(path).read_text(), Loader=UniqueKeyLoader)
    except OSError as exc:
        raise InputError(f"cannot read the sweep file: {exc.strerror or exc}", where=where) from exc
    except yaml.YAMLError as exc:
        raise RecipeError(f"not valid YAML: {first_line(exc)}", where=where) from exc
    if not isinstance(data, dict):
        raise RecipeError("a sweep file is a mapping with base: and axes:", where=where)
    unknown = sorted(set(data) - set(SWEEP_KEYS))
    if unknown:
        raise RecipeError(f"unknown key {unknown[0]!r}; a sweep file has {', '.join(SWEEP_KEYS)}", where=where)
    for key in ("base", "axes"):
        if key not in data:
            raise RecipeError(f"{key}: required key is missing", where=where)
    base_raw, base_dir, base_where = data["base"], Path(path).resolve().parent, f"{where}: base"
    if isinstance(base_raw, str):
        base_file = base_dir / base_raw
        try:
            base_raw = yaml.load(base_file.read_text(), Loader=UniqueKeyLoader)
        except (OSError, yaml.YAMLError) as exc:
            raise InputError(f"cannot read the base recipe {base_file}: {first_line(exc)}", where=f"{where}: base") from exc
        base_dir, base_where = base_file.resolve().parent, str(base_file)
    base = parse_recipe(base_raw, source=base_where)
    name = str(data.get("name") or base.name)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,80}", name):
        raise RecipeError(f"name: {name!r} may hold letters, digits, '_', '.', '-' (at most 80)", where=where)
    axes = _axes(data["axes"], base, where)
    resources = data.get("resources") or {}
    if not isinstance(resources, dict) or set(resources) - set(RESOURCE_KEYS):
        raise RecipeError(f"resources: a mapping of {', '.join(RESOURCE_KEYS)}", where=where)
    return Sweep(name, Path(path), base_raw, base_dir, axes, resources)


def _axes(raw, base, where: str) -> list[Axis]:
    if not isinstance(raw, dict) or not raw:
        raise RecipeError("axes: a mapping of recipe paths to lists of values, e.g. stages[1].method: [minmax, "
                          "percentile]", where=where)
    valid = sorted(set(_valid_paths(base.model_dump(mode="json"))))
    axes = []
    for key, values in raw.items():
        paths = [p.strip() for p in str(key).split(",")]
        if not isinstance(values, list) or not values:
            raise RecipeError(f"axes.{key}: a non-empty list of values", where=where)
        if len(paths) > 1 and not all(isinstance(v, list) and len(v) == len(paths) for v in values):
            raise RecipeError(f"axes.{key}: zipped paths take a list of [{', '.join(paths)}] lists", where=where)
        rows = values if len(paths) > 1 else [[v] for v in values]
        expanded_paths: list[str] = []
        expanded_rows: list[list] = [[] for _ in rows]
        for column, path in enumerate(paths):
            targets = _target_paths(base) if path == "target" else [path]
            if path == "target" and not targets:
                raise RecipeError("axes.target: no stage of the base recipe names a target", where=where)
            for one in targets:
                _parse_path(one, f"{where}: axes")
                if one not in valid:
                    close = difflib.get_close_matches(one, valid, n=1, cutoff=0.5)
                    hint = f"The closest valid path is {close[0]}." if close else "Paths look like stages[1].method."
                    raise RecipeError(f"axes: {one!r} is not a path in the base recipe", where=where, hint=hint)
                expanded_paths.append(one)
                for row, out in zip(rows, expanded_rows):
                    out.append(row[column])
        axes.append(Axis(expanded_paths, expanded_rows))
    return axes


# ---------------------------------------------------------------- one point (runs in a worker)
def run_point(job: dict) -> dict:
    """Run one point as an ordinary run; never raises for the point's own failure (Ctrl-C does)."""
    from . import run as api_run

    started = time.time()
    record = {**{k: job[k] for k in ("key", "index", "overrides", "label", "target")},
              "host": os.uname().nodename, "pid": os.getpid()}
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():   # a Ray task: where it ran, with what
        context = sys.modules["ray"].get_runtime_context()
        record.update(ray_node=context.get_node_id(), ray_resources=context.get_assigned_resources())
    log = Path(job["out"]).parent / "points" / f"{job['key']}.log"   # the backends' own output
    try:
        with open(log, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            result = api_run(job["recipe"], out=job["out"], base_dir=job["base_dir"], reuse_measurements=True)
        record.update(status="done", **summarize(result.report))
    except CompressError as exc:
        record.update(status="failed", error=exc.render(), exit_code=exc.exit_code)
    except Exception as exc:   # a backend failure: the point fails, the sweep goes on
        record.update(status="failed", error=f"{type(exc).__name__}: {first_line(exc)[:400]}", exit_code=1)
    finished = time.time()
    record.update(seconds=round(finished - started, 2), started_at=round(started, 3), finished_at=round(finished, 3))
    return record


def summarize(report: dict) -> dict:
    final = report["stages"][-1]
    primary = final["primary"]
    return {
        "run_dir": report["run_dir"], "passed": report["passed"], "gates": report["gates"],
        "metric": primary["name"], "value": primary["value"], "delta": primary.get("delta"),
        "higher_is_better": primary.get("higher_is_better", True), "reference": report["reference"]["primary"]["value"],
        "p50_ms": final["latency"]["p50_ms"], "size_mb": final["artifact"].get("size_mb"),
        "runtime": final["runtime"], "precision": final["artifact"].get("precision"),
        "speedup": final["speedup"].get("vs_fp32_same_runtime"),
        "cached": [s["name"] for s in report["stages"] if s.get("cached")],
        "stages": [{"name": s["name"], "config": s["config"]} for s in report["stages"]],
    }


# ---------------------------------------------------------------- the sweep folder
class SweepFolder:
    def __init__(self, root: Path):
        self.root = root
        self.points_dir = root / "points"
        self.runs = root / "runs"   # every point's run folder, and the shared stage cache runs/.cache

    def open(self, resume: bool) -> None:
        if self.points_dir.is_dir() and any(self.points_dir.iterdir()) and not resume:
            raise InputError(f"{self.root} already holds a sweep",
                             hint="Pass --resume to continue it (finished points are skipped), or --out elsewhere.")
        self.points_dir.mkdir(parents=True, exist_ok=True)

    def finished(self) -> dict[str, dict]:
        done = {}
        for file in self.points_dir.glob("*.json"):
            try:
                record = json.loads(file.read_text())
            except (OSError, ValueError):
                continue
            if record.get("status") == "done":
                done[record["key"]] = record
        return done

    def record(self, record: dict) -> None:
        atomic_write_json(self.points_dir / f"{record['key']}.json", record)


def _identity(p: Point) -> dict:
    return {"key": p.key, "index": p.index, "overrides": p.overrides, "label": p.label, "target": p.target}


def failed(job: dict, error: str, *, exit_code: int = 1) -> dict:
    """The record of a point that did not finish (`job`: a point's identity or its job)."""
    return {**{k: job[k] for k in ("key", "index", "overrides", "label", "target")}, "status": "failed",
            "error": error, "exit_code": exit_code, "seconds": 0}


def jobs(sweep: Sweep, points: list[Point], folder: SweepFolder) -> list[dict]:
    return [{**_identity(p), "recipe": p.recipe, "base_dir": str(sweep.base_dir), "out": str(folder.runs.resolve()),
             "resources": p.resources} for p in points]


def point_threads(sweep: Sweep, points: list[Point]) -> int:
    """The most latency threads any point times with (a worker's pinned cores)."""
    from . import validate

    threads = 1
    for p in points:
        if p.error is None:
            try:
                threads = max(threads, validate(p.recipe, base_dir=sweep.base_dir).threads)
            except CompressError as exc:
                p.error = exc.render()
    return threads


def execute(sweep: Sweep, out_root: Path, *, executor: Callable, resume: bool, progress: Callable[[dict, int, int], None]
            ) -> dict:
    """Run the sweep's unfinished points with `executor(jobs, on_result)`; returns the report."""
    from .sweep_report import write_report

    folder = SweepFolder(out_root / sweep.name)
    folder.open(resume)
    points = sweep.points()
    finished = folder.finished() if resume else {}
    todo = [p for p in points if p.key not in finished]
    threads = point_threads(sweep, todo)   # plans every point: one whose plan fails gets its error here
    for p in todo:
        if p.error is not None:
            folder.record(failed(_identity(p), p.error, exit_code=2))
    todo = [p for p in todo if p.error is None]
    total, count = len(points), len(points) - len(todo)
    started = time.time()

    def on_result(record: dict) -> None:
        nonlocal count
        count += 1
        folder.record(record)
        progress(record, count, total)

    executor(jobs(sweep, todo, folder), on_result, threads=threads)
    wall = time.time() - started
    return write_report(sweep, points, folder, wall_s=round(wall, 1), ran=len(todo))
