"""Runs a recipe: plan (static checks) -> reference -> stages, each validated -> gates -> report.

The jobs live in their own modules: `inputs` opens the model and data, `measure` validates and
times every artifact, `rundir` owns the run folder and its status, `gates` judges, `report`
assembles and writes. This module plans the chain and runs the stage loop with the stage cache.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import yaml

from . import cache, interrupt
from . import report as report_mod
from .artifacts import ARTIFACT_TYPES, Artifact, OnnxModel, TorchModel
from .errors import ChainError, InputError, StageError
from .fsutil import atomic_dir
from .gates import evaluate_gates, stage_judge
from .inputs import Inputs, open_inputs
from .measure import Measurer, param_count
from .measure_memo import MeasureMemo
from .recipe import Recipe
from .rundir import RunFolder
from .runtimes import restore, runtime_for
from .stages import PlanState, Progress, Resolved, StageContext, handler_for, output_type
from .targets import Target, resolve_target
from .validation import machine_info

__all__ = ["Plan", "PlannedStage", "Reporter", "RunResult", "evaluate_gates", "plan", "resume", "run"]

LIBRARIES = ("compress", "torch", "torchvision", "onnx", "onnxruntime", "openvino", "nncf", "numpy",
             "torchao", "torch-pruning", "pydantic")


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


# ---------------------------------------------------------------- plan: checks that cost milliseconds
@dataclass
class PlannedStage:
    index: int
    name: str
    config: object
    input_type: type
    output_type: type
    target: Target | None
    where: str


@dataclass
class Plan:
    recipe: Recipe
    base_dir: Path
    stages: list[PlannedStage]
    threads: int
    batch: int

    @property
    def high_precision(self) -> str | None:
        """The last TensorRT target's dtype for the layers INT8 leaves alone."""
        targets = [s.target for s in self.stages if s.target is not None and s.target.tensorrt is not None]
        return targets[-1].tensorrt.high_precision if targets else None

    @property
    def final_runtime(self) -> str:
        """The runtime table's name for where the chain's last artifact runs."""
        return runtime_for(self.stages[-1].output_type).name

    def describe(self) -> list[dict]:
        return [{"stage": s.name, "type": s.config.type, "takes": s.input_type.kind, "gives": s.output_type.kind,
                 "target": s.target.name if s.target else None} for s in self.stages]


def _target(cfg, where: str, base_dir: Path) -> Target | None:
    name = handler_for(cfg).target(cfg)
    if name is None:
        return None
    target = resolve_target(name, base_dir=base_dir, where=f"{where}.target")
    missing = target.missing_requirements()
    if missing:
        raise InputError(f"target {target.name} needs {', '.join(missing)}", where=f"{where}.target",
                         hint="Install the project with `make install`.")
    return target


def _check_order(cfg, where: str, earlier: list[PlannedStage]) -> None:
    """What earlier stages forbid to follow them."""
    for before in earlier:
        rule = handler_for(before.config).forbids_after(before.config).get(cfg.type)
        if rule is not None:
            raise ChainError(rule[0].format(at=before.where), where=where, hint=rule[1])


def _check_int8_source(where: str, earlier: list[PlannedStage], target: Target | None) -> None:
    """A target runs INT8 from the quantization backends it names (the artifact types alone cannot tell
    ONNX Runtime's U8S8 QDQ from TensorRT's symmetric S8S8 QDQ: both are .onnx)."""
    if target is None:
        return
    for before in earlier:
        backend = handler_for(before.config).quantizes(before.config)
        if backend is not None and backend not in target.quantize_backends:
            raise ChainError(f"{before.where} quantizes with backend {backend}, but target {target.name} runs INT8 "
                             f"from {', '.join(target.quantize_backends)}", where=f"{where}.target",
                             hint=f"Quantize with backend {target.quantize_backends[0]}, or compile for a target "
                                  f"that takes backend {backend}.")


def plan(recipe: Recipe, base_dir: Path, *, in_memory_model: bool = False) -> Plan:
    current: type = OnnxModel if recipe.model.source == "onnx" and not in_memory_model else TorchModel
    planned: list[PlannedStage] = []
    counts: dict[str, int] = {}
    last_target = None
    for i, cfg in enumerate(recipe.stages):
        where = f"stages[{i}]"
        target = _target(cfg, where, base_dir)
        _check_order(cfg, where, planned)
        handler_for(cfg).check(cfg, PlanState(recipe, where, target, list(planned)))
        out = output_type(cfg, current, target, where)
        _check_int8_source(where, planned, target)
        counts[cfg.type] = counts.get(cfg.type, 0) + 1
        name = cfg.name or (cfg.type if sum(s.type == cfg.type for s in recipe.stages) == 1
                            else f"{cfg.type}{counts[cfg.type]}")
        planned.append(PlannedStage(i, name, cfg, current, out, target, where))
        last_target = target or last_target
        current = out
    threads = recipe.latency.threads or (last_target.threads if last_target else 2)
    batch = recipe.latency.batch or (last_target.batch if last_target else 1)
    return Plan(recipe, base_dir, planned, threads, batch)


# ---------------------------------------------------------------- run
class Reporter:
    """Progress sink; the CLI passes a rich one, the API a silent one."""

    def step(self, text: str) -> None: ...
    def log(self, text: str) -> None: ...
    def progress(self, description: str, total: int) -> Progress:
        return Progress()


@dataclass
class RunResult:
    run_dir: Path
    report: dict
    passed: bool
    gates: list[dict] = field(default_factory=list)

    @property
    def stages(self) -> list[dict]:
        return self.report["stages"]


class Runner:
    """The stage loop: for each planned stage, reuse a finished output (resume, cache) or run the
    handler into a temp folder that appears complete; then measure it against its FP32 baseline."""

    def __init__(self, the_plan: Plan, inputs: Inputs, folder: RunFolder, reporter: Reporter, *,
                 cache_root: Path, use_cache: bool, model_id: str, reuse_measurements: bool = False):
        self.plan, self.recipe, self.inputs, self.folder, self.reporter = the_plan, the_plan.recipe, inputs, folder, \
            reporter
        self.cache_root, self.use_cache, self.model_id = cache_root, use_cache, model_id
        # a sweep's points reuse each other's validations (measure_memo.py); in-memory models and metrics never
        self.reuse_measurements = reuse_measurements and use_cache and inputs.resumable
        self.machine = machine_info()
        self.resolved = Resolved(threads=the_plan.threads, batch=the_plan.batch, final_runtime=the_plan.final_runtime,
                                 batch_size=self.recipe.data.batch_size, seed=self.recipe.seed,
                                 higher_is_better=self.recipe.metric.higher_is_better,
                                 vnni=bool(self.machine.get("vnni")), high_precision=the_plan.high_precision)
        self.versions = library_versions()

    @property
    def run_dir(self) -> Path:
        return self.folder.path

    def run(self) -> dict:
        memo = MeasureMemo.for_run(self.cache_root / "measurements", self.recipe, self.plan.base_dir, self.model_id,
                                   self.resolved, self.machine, self.versions) if self.reuse_measurements else None
        measurer = Measurer(self.recipe, self.inputs, self.resolved, self.run_dir, self.reporter, memo=memo,
                            model_id=self.model_id)
        reference = measurer.reference()
        artifact, input_id, records = self.inputs.reference, self.model_id, []
        for planned in self.plan.stages:
            self.folder.stage_started(planned.index)
            self.reporter.step(f"stage {planned.index + 1}/{len(self.plan.stages)}: {planned.name} "
                               f"({planned.config.type})")
            started = time.perf_counter()
            key = self._stage_key(planned, artifact, input_id)
            output, details, reused = self._stage(planned, artifact, key, measurer)
            duration = time.perf_counter() - started
            input_id = cache.artifact_identity(output) if key is not None else None
            measurer.params = param_count(output) or measurer.params

            measurer.baseline(output)   # built (and reported) before the stage is validated against it
            self.reporter.step(f"validating {planned.name} on {output.runtime}")
            record = measurer.against_baseline(output, planned.name, self._speedup_thresholds(planned))
            record.update({
                "name": planned.name, "type": planned.config.type, "where": planned.where,
                "config": planned.config.model_dump(mode="json"), "details": details,
                "duration_s": round(duration, 2), "notes": list(output.notes), "cached": reused, "key": key,
            })
            if "reused" in record:
                record["notes"].append(f"validation reused from {record['reused']['run']}, an earlier point of this "
                                       "sweep (same artifact, eval data, settings and machine)")
            speedup = record["speedup"]
            if output.precision == "int8" and speedup["vs_fp32_same_runtime"] <= 1.0:
                record["notes"].append(
                    f"INT8 artifact is not faster than FP32 on {output.runtime} "
                    f"({speedup['vs_fp32_same_runtime']:.2f}x, 95% interval [{speedup['interval'][0]:.2f}, "
                    f"{speedup['interval'][1]:.2f}]; {record['latency']['p50_ms']:.3f} ms vs "
                    f"{record['baseline_latency_paired']['p50_ms']:.3f} ms p50, timed in paired rounds)")
            records.append(record)
            self.folder.stage_done(planned.index)
            artifact = output

        interrupt.check()   # a Ctrl-C a library swallowed ends the run here, before report.json exists
        gates = evaluate_gates(self.recipe, records[-1], reference, records)
        report = report_mod.assemble(
            recipe=self.recipe, plan=self.plan, run_dir=self.run_dir, started=self.folder.started,
            machine=self.machine, versions=self.versions, inputs=self.inputs, measurer=measurer, stages=records,
            gates=gates, schema_version=report_mod.SCHEMA_VERSION)
        report_mod.write(self.run_dir, report)
        return report

    def _speedup_thresholds(self, planned: PlannedStage) -> tuple[float, ...]:
        """The min_speedup gates that judge this stage's output: its own, and the recipe's for the last stage."""
        blocks = [planned.config.gates] + ([self.recipe.gates] if planned.index == len(self.plan.stages) - 1 else [])
        return tuple(g.min_speedup for g in blocks if g is not None and g.min_speedup is not None)

    # ------------------------------------------------------------ one stage
    def _stage(self, planned: PlannedStage, artifact: Artifact, key: str | None,
               measurer: Measurer) -> tuple[Artifact, dict, str | None]:
        stage_dir = self.run_dir / "stages" / f"{planned.index + 1:02d}-{planned.name}"
        stage_dir.parent.mkdir(exist_ok=True)
        found, reused = self._reuse(stage_dir, key)
        if found is not None:
            output, details = found
            self.reporter.log(f"{planned.name}: reused ({reused})")
            self._revalidate_checkpoints(details, stage_dir, planned.where, measurer)
            return output, details, reused
        inputs = self.inputs
        ctx = StageContext(where=planned.where, spec=inputs.spec, calibration=inputs.calibration,
                           resolved=self.resolved, target=planned.target, reference=inputs.reference,
                           eval=inputs.eval, train=inputs.train, log=self.reporter.log, run_dir=self.run_dir,
                           stage_dir=stage_dir, progress=self.reporter.progress,
                           validate=lambda a, label, adaptive=None: measurer.checkpoint(
                               a, label, self._speedup_thresholds(planned), adaptive=adaptive),
                           score=measurer.score, quick_latency=measurer.quick_latency,
                           judge=stage_judge(self.recipe, planned.config, measurer.reference_record,
                                             planned.index == len(self.plan.stages) - 1))
        ctx.details["stamp"] = {"recipe": self.recipe.name, "stage": planned.name,
                                "config": planned.config.model_dump(mode="json"), "versions": self.versions}
        with atomic_dir(stage_dir) as tmp:
            ctx.out_dir = tmp
            output = handler_for(planned.config).run(planned.config, artifact, ctx)
            if not isinstance(output, planned.output_type):
                raise StageError(f"stage {planned.name} returned {output.kind}, expected {planned.output_type.kind}")
            ctx.details.pop("stamp")
            if key is not None and output.path is not None:
                cache.write_stage_file(tmp, key, output, ctx.details)
        if output.path is not None and output.path.is_relative_to(tmp):
            output.path = stage_dir / output.path.relative_to(tmp)
        if key is not None and self.use_cache:
            cache.store(self.cache_root, key, stage_dir)
        return output, ctx.details, None

    def _stage_key(self, planned: PlannedStage, artifact: Artifact, input_id: str | None) -> str | None:
        """Hash of everything the stage's output depends on: its input, config (gates judge; they change
        nothing), target, data, seed, library versions, and the resolved values its handler reads.
        None when the input cannot be hashed (an in-memory artifact)."""
        if input_id is None:
            return None
        recipe, base = self.recipe, self.plan.base_dir
        reads = handler_for(planned.config).reads(planned.config)
        return cache.digest({
            "input": input_id, "input_kind": artifact.kind,
            "stage": planned.config.model_dump(mode="json", exclude={"gates"}),
            "target": planned.target.model_dump(mode="json") if planned.target else None,
            "data": cache.data_identity(recipe.data.calibration, recipe.data.transform, recipe.data.batch_size, base),
            # training data shapes what prune (fine-tune) and qat produce; eval data only their log lines
            "train": cache.data_identity(recipe.data.train, recipe.data.transform, recipe.data.batch_size, base)
            if recipe.data.train is not None else None,
            "seed": recipe.seed, "versions": self.versions,
            "reads": {name: getattr(self.resolved, name) for name in reads},
        })

    def _base_module(self):
        return self.inputs.reference.module if isinstance(self.inputs.reference, TorchModel) else None

    def _reuse(self, stage_dir: Path, key: str | None) -> tuple[tuple | None, str | None]:
        """A finished stage for `key`: in this run folder (resume), or in the cache."""
        if key is None:
            return None, None
        base = self._base_module()
        found = cache.read_stage(stage_dir, key, base)
        if found is not None:
            return found, "resumed"
        if self.use_cache and cache.fetch(self.cache_root, key, stage_dir, base):
            return cache.read_stage(stage_dir, key, base), "cache"
        return None, None

    def _revalidate_checkpoints(self, details: dict, stage_dir: Path, where: str, measurer: Measurer) -> None:
        """A reused stage's intermediate artifacts (QAT's PTQ start) are measured again, like its output."""
        for name, saved in details.get("checkpoints", {}).items():
            path = stage_dir / saved["path"]
            cls = ARTIFACT_TYPES.get(saved["artifact_type"])
            artifact = restore(cls, path, saved.get("state", {}), [], self._base_module()) \
                if cls is not None and path.is_file() else None
            if artifact is None:
                continue
            details["checkpoints"][name] = {**measurer.checkpoint(artifact, f"{where} {name}"), "path": saved["path"],
                                            "state": saved.get("state", {})}


def _execute(the_plan: Plan, out_dir: Path, *, model=None, metric=None, reporter: Reporter | None = None,
             resume_dir: Path | None = None, use_cache: bool = True, reuse_measurements: bool = False) -> RunResult:
    recipe, base = the_plan.recipe, the_plan.base_dir
    reporter = reporter or Reporter()
    out_dir = out_dir.absolute()   # stages may change directory (ORT writes temp files into the cwd)
    inputs = open_inputs(recipe, base, model=model, metric=metric)
    folder = RunFolder(recipe, [s.name for s in the_plan.stages],
                       {"base_dir": str(base), "out_dir": str(out_dir.resolve()), "resumable": inputs.resumable})
    model_id = cache.model_identity(recipe.model, base, recipe.seed, model)
    runner = Runner(the_plan, inputs, folder, reporter, cache_root=out_dir / ".cache", use_cache=use_cache,
                    model_id=model_id, reuse_measurements=reuse_measurements)
    # nothing between the folder's appearing (status running) and the try that records how the run ended
    if resume_dir is not None:
        folder.reopen(resume_dir)
    else:
        folder.create(out_dir)
    try:
        report = runner.run()
    except BaseException as exc:
        folder.ended(exc)
        raise
    folder.status("done", passed=report["passed"])
    return RunResult(folder.path, report, report["passed"], report["gates"])


def run(recipe: Recipe, *, base_dir: Path, out_dir: Path, model=None, metric=None,
        reporter: Reporter | None = None, use_cache: bool = True, reuse_measurements: bool = False) -> RunResult:
    the_plan = plan(recipe, base_dir, in_memory_model=model is not None)
    return _execute(the_plan, out_dir, model=model, metric=metric, reporter=reporter, use_cache=use_cache,
                    reuse_measurements=reuse_measurements)


def resume(run_dir: Path, *, model=None, metric=None, reporter: Reporter | None = None,
           use_cache: bool = True) -> RunResult:
    """Continue a killed or failed run in its own folder; finished stages are reused, not recomputed."""
    import json

    from .recipe import parse_recipe

    status_file = Path(run_dir) / "run.json"
    try:
        info = json.loads(status_file.read_text())
        data = yaml.safe_load((Path(run_dir) / "recipe.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise InputError(f"{run_dir} is not a run folder that can be resumed ({exc})",
                         hint="Pass the folder `compress run` created, e.g. runs/<name>-<timestamp>.") from exc
    if not info.get("resumable", True) and model is None:
        raise InputError(f"{run_dir} was run with an in-memory model or metric; resume it from Python with the "
                         "same objects")
    recipe = parse_recipe(data, source=str(Path(run_dir) / "recipe.yaml"))
    the_plan = plan(recipe, Path(info["base_dir"]), in_memory_model=model is not None)
    return _execute(the_plan, Path(info.get("out_dir", Path(run_dir).parent)), model=model, metric=metric,
                    reporter=reporter, resume_dir=Path(run_dir), use_cache=use_cache)
