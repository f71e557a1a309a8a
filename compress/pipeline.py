"""Runs a recipe: plan (static checks) -> baseline -> stages, each validated -> gates -> report."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from . import cache, interrupt
from . import report as report_mod
from .artifacts import Artifact, OnnxModel, OpenVinoModel, TorchModel
from .convert import save_openvino, to_openvino, torch_to_onnx
from .data import Dataset, Head, open_dataset
from .errors import ChainError, CompressError, DataError, InputError, StageError
from .fsutil import atomic_dir, atomic_write_json, atomic_write_text
from .models import ModelSpec, import_callable, load_model
from .recipe import CompileConfig, Gates, MetricConfig, Recipe
from .runtimes import open_session
from .stages import Progress, StageContext, handler_for, output_type
from .targets import Target, resolve_target
from .validation import (EvalResult, UserMetric, default_primary, evaluate, latency_feeds, machine_info,
                         measure_latency, paired_latency, primary_metric)

SCHEMA_VERSION = 1
LIBRARIES = ("compress", "torch", "torchvision", "onnx", "onnxruntime", "openvino", "nncf", "numpy",
             "torchao", "torch-pruning", "pydantic")


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
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

    def describe(self) -> list[dict]:
        return [{"stage": s.name, "type": s.config.type, "takes": s.input_type.kind, "gives": s.output_type.kind,
                 "target": s.target.name if s.target else None} for s in self.stages]


def plan(recipe: Recipe, base_dir: Path, *, in_memory_model: bool = False) -> Plan:
    current: type = OnnxModel if recipe.model.source == "onnx" and not in_memory_model else TorchModel
    planned, counts, last_target, quantized_at, quantized_by = [], {}, None, None, None
    for i, cfg in enumerate(recipe.stages):
        where = f"stages[{i}]"
        if cfg.type == "prune" and cfg.finetune is not None and recipe.data.train is None:
            raise ChainError("fine-tuning needs training data", where=f"{where}.finetune",
                             hint="Add data.train (same formats as calibration/eval).")
        if cfg.type == "qat" and recipe.data.train is None:
            raise ChainError("quantization-aware training needs training data: the recipe has no data.train",
                             where=where, hint="Add data.train (same formats as calibration/eval), or use a "
                                               "`quantize` stage (post-training, calibration data only).")
        if cfg.type == "prune" and quantized_at is not None:
            raise ChainError(f"prune before quantizing: {quantized_at} already quantized the model", where=where)
        if cfg.type in ("export", "compile") and quantized_by == "torch":
            raise ChainError(f"{quantized_at} quantized the model with torchao (backend torch), which cannot be "
                             "exported to ONNX or OpenVINO", where=where,
                             hint="For ONNX Runtime or OpenVINO, put `export` first and quantize with backend "
                                  "onnxruntime or openvino; backend torch is for models that ship as torch.")
        if cfg.type in ("quantize", "qat"):
            if quantized_at is not None:
                raise ChainError(f"the model is already quantized by {quantized_at}; quantize once",
                                 where=where, hint="Remove one of the quantize stages.")
            quantized_at, quantized_by = where, cfg.backend
        target = None
        if isinstance(cfg, CompileConfig):
            target = resolve_target(cfg.target, base_dir=base_dir, where=f"{where}.target")
            missing = target.missing_requirements()
            if missing:
                raise InputError(f"target {target.name} needs {', '.join(missing)}", where=f"{where}.target",
                                 hint="Install the project with `make install`.")
            last_target = target
        out = output_type(cfg, current, target, where)
        counts[cfg.type] = counts.get(cfg.type, 0) + 1
        name = cfg.name or (cfg.type if sum(s.type == cfg.type for s in recipe.stages) == 1
                            else f"{cfg.type}{counts[cfg.type]}")
        planned.append(PlannedStage(i, name, cfg, current, out, target, where))
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


def _artifact_info(artifact: Artifact, run_dir: Path) -> dict:
    return {
        "type": artifact.kind, "runtime": artifact.runtime, "precision": artifact.precision,
        "path": str(artifact.path.relative_to(run_dir)) if artifact.path and artifact.path.is_relative_to(run_dir)
        else (str(artifact.path) if artifact.path else None),
        "files": [str(p.name) for p in artifact.files()],
        "size_mb": round(artifact.size_bytes() / 1e6, 4) if artifact.path else None,
        "sha256": artifact.sha256(),
    }


def _param_count(artifact: Artifact) -> int | None:
    """Parameters of a torch module, or float initializer elements of an FP32 .onnx file."""
    if isinstance(artifact, TorchModel):
        return int(sum(p.numel() for p in artifact.module.parameters()))
    if isinstance(artifact, OnnxModel) and artifact.precision == "fp32":
        import numpy as np
        import onnx

        proto = onnx.load(str(artifact.path), load_external_data=False)
        return int(sum(int(np.prod(t.dims)) for t in proto.graph.initializer
                       if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) > 0))
    return None


class _Runner:
    def __init__(self, the_plan: Plan, out_dir: Path, *, model=None, metric=None, reporter: Reporter | None = None,
                 resume_dir: Path | None = None, use_cache: bool = True):
        self.plan = the_plan
        self.resume_dir = resume_dir
        self.use_cache = use_cache
        out_dir = out_dir.absolute()   # stages may change directory (ORT writes temp files into the cwd)
        self.cache_root = out_dir / ".cache"
        self.user_metric = metric
        self.recipe = the_plan.recipe
        self.out_dir = out_dir
        self.user_model = model
        self.reporter = reporter or Reporter()
        self.baselines: dict[str, dict] = {}
        self.reference_outputs = None
        self.latency_sessions: dict = {}   # baseline label -> its open latency session, for paired timing
        self.params = None   # of the latest model in the chain that has countable parameters
        self.macs = None

    # -- helpers
    def _validate(self, artifact: Artifact, label: str, *, collect: bool = False,
                  inference_precision: str | None = None, paired_with: str | None = None) -> tuple[dict, EvalResult]:
        threads, batch = self.plan.threads, self.plan.batch
        session = open_session(artifact, threads=threads, inference_precision=inference_precision)
        self.reporter.log(f"{label}: evaluating on {len(self.eval)} samples ({session.runtime})")
        result = evaluate(session, self.eval, batch_size=self.recipe.data.batch_size, output_names=self.spec.outputs,
                          reference=self.reference_outputs, collect=collect, metric=self.metric,
                          label=f"{label} ({session.runtime})")
        latency_session = open_session(artifact, threads=threads, static_batch=batch,
                                       inference_precision=inference_precision)
        self.reporter.log(f"{label}: timing batch {batch}, {threads} threads")
        feeds = latency_feeds(self.eval, batch)
        warmup, runs = self.recipe.latency.warmup, self.recipe.latency.runs
        paired = None
        if paired_with is None:
            latency = measure_latency(latency_session, feeds, warmup=warmup, runs=runs)
            self.latency_sessions[label] = latency_session
        else:
            latency, paired = paired_latency(latency_session, self.latency_sessions[paired_with], feeds,
                                             warmup=warmup, runs=runs)
        record = {
            "runtime": session.runtime, "settings": latency_session.settings,
            "artifact": _artifact_info(artifact, self.run_dir) if artifact.path else
            {"type": artifact.kind, "runtime": artifact.runtime, "precision": artifact.precision, "path": None,
             "size_mb": None, "sha256": None},
            "params": _param_count(artifact) if isinstance(artifact, TorchModel) else self.params,
            "macs": self._macs(artifact),
            "metrics": result.metrics, "agreement": result.agreement, "samples": result.samples,
            "latency": latency,
        }
        if paired is not None:
            record["baseline_latency_paired"] = paired
        return record, result

    def _baseline(self, runtime: str) -> dict:
        """FP32 on `runtime`, from the reference model; built on first need."""
        if runtime in self.baselines:
            return self.baselines[runtime]
        ref = self.reference
        folder = self.run_dir / "baselines"
        folder.mkdir(exist_ok=True)
        self.reporter.step(f"FP32 baseline on {runtime}")
        if runtime == ref.runtime:
            artifact = ref
        elif runtime == "onnxruntime":
            with atomic_dir(folder / "onnxruntime") as tmp:
                torch_to_onnx(ref.module, self.spec, tmp / "fp32.onnx")
            artifact = OnnxModel(path=folder / "onnxruntime" / "fp32.onnx")
        elif runtime == "openvino":
            with atomic_dir(folder / "openvino") as tmp:
                save_openvino(to_openvino(ref, self.spec), tmp / "fp32.xml", {"baseline": "fp32"})
            artifact = OpenVinoModel(path=folder / "openvino" / "fp32.xml", inference_precision="f32")
        else:
            raise StageError(f"no FP32 baseline for runtime {runtime}")
        record, _ = self._validate(artifact, f"baseline {runtime}", inference_precision="f32"
                                   if runtime == "openvino" else None)
        record["name"] = f"fp32-{runtime}"
        record["label"] = f"baseline {runtime}"
        record["params"], record["macs"] = self.baselines[self.reference.runtime]["params"], \
            self.baselines[self.reference.runtime]["macs"]   # the unpruned model, whatever stages ran before
        name, value = self._primary(record)
        record["primary"] = {"name": name, "value": value}
        self.baselines[runtime] = record
        return record

    def _checkpoint_record(self, artifact: Artifact, label: str) -> dict:
        """Validate an intermediate artifact a stage produces (e.g. QAT's PTQ starting point) exactly
        like a stage's output: metric and delta vs the reference, agreement, latency paired with the
        FP32 baseline on its runtime. The stage stores the record in its details."""
        record = self._validate_against_baseline(artifact, label)
        record.pop("artifact")
        record.update(precision=artifact.precision, artifact_type=artifact.kind)
        return record

    def _validate_against_baseline(self, artifact: Artifact, label: str) -> dict:
        """Validate `artifact`, timed in alternating rounds with the FP32 baseline of its runtime, and
        compare: primary metric and its delta vs the reference, speed-ups vs that baseline and the reference."""
        baseline = self._baseline(artifact.runtime)
        record, _ = self._validate(artifact, label, inference_precision=getattr(artifact, "inference_precision", None),
                                   paired_with=baseline["label"])
        name, value = self._primary(record)
        reference = self.baselines[self.reference.runtime]
        record.update(primary={"name": name, "value": value, "delta": value - reference["primary"]["value"],
                               "higher_is_better": self.higher_is_better},
                      speedup={"vs_fp32_same_runtime": record["baseline_latency_paired"]["p50_ms"]
                               / record["latency"]["p50_ms"],
                               "vs_reference": reference["latency"]["p50_ms"] / record["latency"]["p50_ms"],
                               "baseline": baseline["name"]})
        return record

    def _revalidate_checkpoints(self, details: dict, stage_dir: Path, where: str) -> None:
        """A reused stage's intermediate artifacts (QAT's PTQ start) are validated again, like its output."""
        from .artifacts import ARTIFACT_TYPES

        ptq = details.get("ptq")
        if ptq is None or not (stage_dir / ptq["path"]).is_file():
            return
        artifact = ARTIFACT_TYPES[ptq["artifact_type"]](path=stage_dir / ptq["path"], precision=ptq["precision"])
        details["ptq"] = {**self._checkpoint_record(artifact, f"{where} PTQ start"), "path": ptq["path"]}

    def _score(self, module, samples: int) -> tuple[str, float]:
        """The recipe's primary metric for a torch module on the first `samples` eval samples, untimed."""
        session = open_session(TorchModel(path=None, module=module), threads=self.plan.threads)
        result = evaluate(session, Head(self.eval, samples), batch_size=self.recipe.data.batch_size,
                          output_names=self.spec.outputs, reference=self.reference_outputs, metric=self.metric,
                          label="in-stage check (torch)")
        return primary_metric(result, self.spec.outputs, self.primary)

    def _primary(self, record: dict) -> tuple[str, float]:
        return primary_metric(EvalResult(metrics=record["metrics"], agreement=record["agreement"]), self.spec.outputs,
                              self.primary)

    def _status(self, stages_status: list[dict], status: str, **extra) -> None:
        atomic_write_json(self.run_dir / "run.json", {
            "schema_version": SCHEMA_VERSION, "status": status, "recipe": self.recipe.name,
            "started": self.started, "updated": datetime.now().isoformat(timespec="seconds"),
            **self.run_info, "stages": stages_status, **extra})

    # -- the run
    def run(self) -> RunResult:
        recipe, base = self.recipe, self.plan.base_dir
        self.reference, self.spec = load_model(recipe.model, base, recipe.seed, module=self.user_model)
        self.metric = load_metric(recipe.metric, base, self.user_metric)
        self.higher_is_better = recipe.metric.higher_is_better
        self.calibration = open_dataset(recipe.data.calibration, recipe.data.transform, self.spec, base_dir=base,
                                        seed=recipe.seed, where="data.calibration")
        data_notes = [f"calibration: {n}" for n in self.calibration.notes]
        if recipe.data.eval is not None:
            self.eval = open_dataset(recipe.data.eval, recipe.data.transform, self.spec, base_dir=base,
                                     seed=recipe.seed, where="data.eval")
            data_notes += [f"eval: {n}" for n in self.eval.notes]
        else:
            self.eval = self.calibration
            data_notes.append("no eval set: metrics are measured on the calibration data")
        self.train = None
        if recipe.data.train is not None:
            self.train = open_dataset(recipe.data.train, recipe.data.transform, self.spec, base_dir=base,
                                      seed=recipe.seed, where="data.train")
            data_notes += [f"train: {n}" for n in self.train.notes]
        if recipe.metric.primary in ("top1", "top5") and not self.eval.has_labels:
            raise InputError(f"metric.primary '{recipe.metric.primary}' needs labels in the eval data",
                             where="metric.primary", hint="Add labels (array 'y' in the .npz, or class subfolders).")
        classes, top = self.spec.classes(), self.eval.max_label()
        if top is not None and classes is not None and top >= classes:
            raise InputError(f"eval labels out of range: found label {top} but the model outputs {classes} classes",
                             where="data.eval")
        # touch one batch of each before any folder exists: bad data fails here, cheaply
        for name, dataset in (("data.calibration", self.calibration), ("data.eval", self.eval)):
            if next(dataset.batches(1), None) is None:
                raise DataError("the data yielded no samples", where=name)

        self.machine = machine_info()
        self.started = datetime.now().isoformat(timespec="seconds")
        self.run_info = {"base_dir": str(self.plan.base_dir), "out_dir": str(self.out_dir.resolve()),
                         "resumable": self.user_model is None and self.user_metric is None}
        stages_status = [{"name": s.name, "status": "pending"} for s in self.plan.stages]
        if self.resume_dir is not None:
            self.run_dir = self.resume_dir
            cache.clean_stale_temps(self.run_dir)
            self._write_run_files(stages_status)
        else:
            self._make_run_dir(stages_status)
        try:
            report = self._run_stages(stages_status, data_notes)
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            for s in stages_status:
                if s["status"] == "running":
                    s["status"] = "failed"
            message = exc.render() if isinstance(exc, CompressError) else f"{type(exc).__name__}: {exc}"
            self._status(stages_status, status, error=message)
            raise
        self._status(stages_status, "done", passed=report["passed"])
        return RunResult(self.run_dir, report, report["passed"], report["gates"])

    def _macs(self, artifact: Artifact) -> int | None:
        """MACs per sample of the latest torch model in the chain (ONNX/OpenVINO artifacts inherit them)."""
        if isinstance(artifact, TorchModel):
            from .stages.prune import count_macs

            try:
                self.macs = count_macs(artifact.module, self.spec)[0]
            except Exception:  # a model Torch-Pruning cannot trace: MACs stay unknown, nothing else depends on them
                self.macs = None
        return self.macs

    def _stage_key(self, planned: PlannedStage, artifact: Artifact, input_id: str | None, versions: dict) -> str | None:
        """Hash of everything the stage's output depends on; None when the input cannot be hashed."""
        if input_id is None:
            return None
        recipe = self.recipe
        return cache.digest({
            "input": input_id, "input_kind": artifact.kind,
            "stage": planned.config.model_dump(mode="json", exclude={"gates"}),   # gates judge; they change nothing
            "target": planned.target.model_dump(mode="json") if planned.target else None,
            "data": cache.data_identity(recipe.data.calibration, recipe.data.transform, recipe.data.batch_size,
                                        self.plan.base_dir),
            # training data shapes what prune (fine-tune) and qat produce; eval data only their log lines
            "train": cache.data_identity(recipe.data.train, recipe.data.transform, recipe.data.batch_size,
                                         self.plan.base_dir) if recipe.data.train is not None else None,
            "seed": recipe.seed, "versions": versions,
            "vnni": self.machine.get("vnni"),
        })

    def _reuse(self, stage_dir: Path, key: str | None) -> tuple[tuple | None, str | None]:
        """A finished stage for `key`: in this run folder (resume), or in the cache."""
        if key is None:
            return None, None
        base = self.reference.module if isinstance(self.reference, TorchModel) else None
        found = cache.read_stage(stage_dir, key, base)
        if found is not None:
            return found, "resumed"
        if self.use_cache and cache.fetch(self.cache_root, key, stage_dir, base):
            return cache.read_stage(stage_dir, key, base), "cache"
        return None, None

    def _make_run_dir(self, stages_status: list[dict]) -> Path:
        """A new run folder that appears with its recipe.yaml and run.json already inside."""
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            for n in range(1000):
                path = self.out_dir / (f"{self.recipe.name}-{stamp}" + (f"-{n}" if n else ""))
                if path.exists():
                    continue
                with atomic_dir(path) as tmp:
                    self.run_dir = tmp
                    self._write_run_files(stages_status)
                self.run_dir = path
                return path
        except OSError as exc:
            raise InputError(f"cannot create the run folder under {self.out_dir}: {exc.strerror or exc}",
                             hint="Pass a writable folder with --out.") from None
        raise InputError(f"cannot find a free run folder name under {self.out_dir}")

    def _write_run_files(self, stages_status: list[dict]) -> None:
        atomic_write_text(self.run_dir / "recipe.yaml",
                          yaml.safe_dump(self.recipe.model_dump(mode="json"), sort_keys=False))
        self._status(stages_status, "running")

    def _run_stages(self, stages_status: list[dict], data_notes: list[str]) -> dict:
        recipe = self.recipe
        versions = library_versions()
        self.params = _param_count(self.reference)
        self.reporter.step(f"FP32 reference on {self.reference.runtime}")
        ref_record, ref_result = self._validate(self.reference, "reference", collect=True)
        self.reference_outputs = ref_result.outputs
        for i, name in enumerate(self.spec.outputs):
            peak = max(float(np.abs(batch[i]).max()) if batch[i].size else 0.0 for batch in ref_result.outputs)
            if peak < 1e-6:
                self.reference.notes.append(
                    f"the FP32 model's output '{name}' is near zero everywhere (max |x| {peak:.1e}): agreement "
                    "with it is meaningless; is the model trained?")
        ref_record["name"] = f"fp32-{self.reference.runtime}"
        ref_record["label"] = "reference"
        ref_record["agreement"] = {}
        user_names = [k for k in ref_result.metrics if k not in ("top1", "top5")]
        self.primary = recipe.metric.primary or (user_names[0] if self.metric is not None and user_names
                                                 else default_primary(self.eval.has_labels, ref_result.outputs[0]))
        name, value = primary_metric(ref_result, self.spec.outputs, self.primary)
        ref_record["primary"] = {"name": name, "value": value, "higher_is_better": self.higher_is_better}
        self.baselines[self.reference.runtime] = ref_record

        artifact = self.reference
        input_id = cache.model_identity(recipe.model, self.plan.base_dir, recipe.seed, self.user_model)
        records = []
        for planned, status in zip(self.plan.stages, stages_status):
            status["status"] = "running"
            self._status(stages_status, "running")
            self.reporter.step(f"stage {planned.index + 1}/{len(self.plan.stages)}: {planned.name} ({planned.config.type})")
            stage_dir = self.run_dir / "stages" / f"{planned.index + 1:02d}-{planned.name}"
            stage_dir.parent.mkdir(exist_ok=True)
            ctx = StageContext(recipe=recipe, base_dir=self.plan.base_dir, spec=self.spec,
                               calibration=self.calibration, machine=self.machine, where=planned.where,
                               target=planned.target, reference=self.reference, log=self.reporter.log,
                               eval=self.eval, train=self.train, threads=self.plan.threads, batch=self.plan.batch,
                               final_runtime=self.plan.stages[-1].output_type.runtime, run_dir=self.run_dir,
                               progress=self.reporter.progress, validate=self._checkpoint_record,
                               score=self._score, stage_dir=stage_dir)
            key = self._stage_key(planned, artifact, input_id, versions)
            started = time.perf_counter()
            output, reused = self._reuse(stage_dir, key)
            if output is not None:
                ctx.details = output[1]
                output = output[0]
                self.reporter.log(f"{planned.name}: reused ({reused})")
                self._revalidate_checkpoints(ctx.details, stage_dir, planned.where)
            else:
                reused = None
                ctx.details["stamp"] = {"recipe": recipe.name, "stage": planned.name,
                                        "config": planned.config.model_dump(mode="json"), "versions": versions}
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
            duration = time.perf_counter() - started
            input_id = cache.artifact_identity(output) if key is not None else None
            self.params = _param_count(output) or self.params

            self._baseline(output.runtime)   # built (and reported) before the stage is validated against it
            self.reporter.step(f"validating {planned.name} on {output.runtime}")
            record = self._validate_against_baseline(output, planned.name)
            record.update({
                "name": planned.name, "type": planned.config.type, "where": planned.where,
                "config": planned.config.model_dump(mode="json"), "details": ctx.details,
                "duration_s": round(duration, 2), "notes": list(output.notes), "cached": reused, "key": key,
            })
            if output.precision == "int8" and record["speedup"]["vs_fp32_same_runtime"] <= 1.0:
                record["notes"].append(
                    f"INT8 artifact is not faster than FP32 on {output.runtime} "
                    f"({record['latency']['p50_ms']:.3f} ms vs {record['baseline_latency_paired']['p50_ms']:.3f} ms p50, "
                    "timed in alternating rounds)")
            records.append(record)
            status["status"] = "done"
            artifact = output

        interrupt.check()   # last point before report.json and "done": a Ctrl-C a library swallowed ends the run here
        gates = evaluate_gates(recipe, records[-1], ref_record, records)
        report = {
            "schema_version": SCHEMA_VERSION, "name": recipe.name, "run_dir": str(self.run_dir),
            "started": self.started, "finished": datetime.now().isoformat(timespec="seconds"),
            "machine": self.machine, "versions": versions,
            "settings": {"threads": self.plan.threads, "batch": self.plan.batch, "warmup": recipe.latency.warmup,
                         "runs": recipe.latency.runs, "eval_batch_size": recipe.data.batch_size,
                         "eval_samples": len(self.eval), "calibration_samples": len(self.calibration)},
            "model": {"source": recipe.model.source, "inputs": [s.model_dump() for s in self.spec.inputs],
                      "outputs": self.spec.outputs, "notes": list(self.reference.notes)},
            "data_notes": data_notes,
            "reference": ref_record,
            "baselines": self.baselines,
            "stages": records,
            "gates": gates,
            "passed": all(g["passed"] for g in gates),
            "final_artifact": records[-1]["artifact"],
            "recipe": recipe.model_dump(mode="json"),
        }
        report_mod.write(self.run_dir, report)
        return report


def evaluate_gates(recipe: Recipe, final: dict, reference: dict, stages: list[dict] | None = None) -> list[dict]:
    """The recipe's gates judge the last stage's artifact: what ships; a stage's own `gates:` judge
    that stage's output. A quantize stage that quantized nothing always fails (the recipe asked for
    INT8 and did not get it)."""
    gates = []
    for cfg, stage in zip(recipe.stages, stages or []):
        budget = stage["details"].get("budget")
        if budget is not None and not budget["met"]:
            reached = budget["reached"]
            got = (f"{reached['macs_fraction']:.2f} of the MACs" if "macs" in budget["target"] else
                   f"{reached.get('latency_ms', float('nan')):.3f} ms, {reached.get('speedup', float('nan')):.2f}x on "
                   f"{budget['runtime']}")
            gates.append({"gate": "prune_budget", "threshold": budget["target"], "value": reached, "passed": False,
                          "detail": f"stage {stage['name']} could not meet {budget['target']} within max_ratio; "
                                    f"best reached: {got} (that model was kept and validated)"})
        if stage["type"] in ("quantize", "qat") and stage["details"].get("quantize_ops") == 0:
            gates.append({"gate": "quantized", "threshold": "> 0 quantized ops", "value": 0, "passed": False,
                          "detail": f"stage {stage['name']} quantized no layer: {'; '.join(stage['notes'])}"})
        if cfg.gates is not None:
            gates += _threshold_gates(cfg.gates, stage, reference, f"{stage['name']}.", f"after stage {stage['name']}: ")
    return gates + _threshold_gates(recipe.gates, final, reference)


def _threshold_gates(g: Gates, record: dict, reference: dict, prefix: str = "", context: str = "") -> list[dict]:
    gates = []
    if g.max_accuracy_drop is not None:
        drop = reference["primary"]["value"] - record["primary"]["value"]
        if not record["primary"].get("higher_is_better", True):
            drop = -drop
        gates.append({"gate": prefix + "max_accuracy_drop", "threshold": g.max_accuracy_drop, "value": round(drop, 4),
                      "passed": drop <= g.max_accuracy_drop,
                      "detail": f"{context}{record['primary']['name']} dropped {drop:.2f} points "
                                f"({reference['primary']['value']:.2f} -> {record['primary']['value']:.2f}); "
                                f"allowed {g.max_accuracy_drop}"})
    if g.min_speedup is not None:
        speedup = record["speedup"]["vs_fp32_same_runtime"]
        gates.append({"gate": prefix + "min_speedup", "threshold": g.min_speedup, "value": round(speedup, 4),
                      "passed": speedup >= g.min_speedup,
                      "detail": f"{context}{speedup:.2f}x vs {record['speedup']['baseline']} (p50); "
                                f"required {g.min_speedup}x"})
    if g.max_size_mb is not None:
        size = record["artifact"]["size_mb"]
        gates.append({"gate": prefix + "max_size_mb", "threshold": g.max_size_mb, "value": size,
                      "passed": size is not None and size <= g.max_size_mb,
                      "detail": f"{context}{size} MB; allowed {g.max_size_mb} MB"})
    return gates


def load_metric(cfg: MetricConfig, base_dir: Path, override=None) -> UserMetric | None:
    """The user's metric: an in-memory object (API) or the recipe's `metric.function`."""
    if override is not None:
        return UserMetric(override, getattr(override, "__name__", type(override).__name__), cfg.kwargs)
    if cfg.function is None:
        return None
    obj = import_callable(cfg.function, base_dir, where="metric.function", error=InputError)
    return UserMetric(obj, cfg.function, cfg.kwargs)


def run(recipe: Recipe, *, base_dir: Path, out_dir: Path, model=None, metric=None,
        reporter: Reporter | None = None, use_cache: bool = True) -> RunResult:
    the_plan = plan(recipe, base_dir, in_memory_model=model is not None)
    return _Runner(the_plan, out_dir, model=model, metric=metric, reporter=reporter, use_cache=use_cache).run()


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
                         hint="Pass the folder `compress run` created, e.g. runs/<name>-<timestamp>.") from None
    if not info.get("resumable", True) and model is None:
        raise InputError(f"{run_dir} was run with an in-memory model or metric; resume it from Python with the same objects")
    recipe = parse_recipe(data, source=str(Path(run_dir) / "recipe.yaml"))
    base_dir = Path(info["base_dir"])
    the_plan = plan(recipe, base_dir, in_memory_model=model is not None)
    return _Runner(the_plan, Path(info.get("out_dir", Path(run_dir).parent)), model=model, metric=metric,
                   reporter=reporter, resume_dir=Path(run_dir), use_cache=use_cache).run()
