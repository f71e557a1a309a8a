"""Measuring: the FP32 reference and its outputs, the FP32 baseline on each runtime, validation of
any artifact (task metric, agreement with FP32, paired latency), and the primary metric. Every
stage, checkpoint and baseline is measured here, so their numbers are comparable."""
from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .artifacts import Artifact, OnnxModel, TorchModel
from .cache import digest
from .data import Head
from .errors import first_line
from .fsutil import atomic_dir
from .inputs import Inputs
from .measure_memo import MeasureMemo
from .recipe import Recipe
from .runtimes import open_session, runtime_for
from .stages import Resolved
from .validation import (
    EvalResult,
    default_primary,
    evaluate,
    latency_feeds,
    measure_latency,
    paired_latency,
    primary_metric,
)


def param_count(artifact: Artifact) -> int | None:
    """Parameters of a torch module, or float initializer elements of an FP32 .onnx file."""
    if isinstance(artifact, TorchModel):
        return int(sum(p.numel() for p in artifact.module.parameters()))
    if isinstance(artifact, OnnxModel) and artifact.precision == "fp32":
        import onnx

        proto = onnx.load(str(artifact.path), load_external_data=False)
        return int(sum(int(np.prod(t.dims)) for t in proto.graph.initializer
                       if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) > 0))
    return None


def artifact_info(artifact: Artifact, run_dir: Path) -> dict:
    if artifact.path is None:
        return {"type": artifact.kind, "runtime": artifact.runtime, "precision": artifact.precision, "path": None,
                "size_mb": None, "sha256": None}
    path = artifact.path
    return {
        "type": artifact.kind, "runtime": artifact.runtime, "precision": artifact.precision,
        "path": str(path.relative_to(run_dir)) if path.is_relative_to(run_dir) else str(path),
        "files": [str(p.name) for p in artifact.files()],
        "size_mb": round(artifact.size_bytes() / 1e6, 4),
        "sha256": artifact.sha256(),
    }


def delta_interval(name: str, ours: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict:
    """The 95% interval of the primary metric's change vs the FP32 reference, from the eval samples:
    paired bootstrap for top-1/top-5 with labels (and the exact McNemar p-value) and for cosine, the exact
    binomial interval for top-1 agreement. A metric of yours is one number per eval set: no interval."""
    from .stats import mcnemar_p, mean_interval, proportion_interval

    if name in ("top1", "top5") and name in ours and name in reference:
        mine, theirs = ours[name].astype(bool), reference[name].astype(bool)
        _, low, high = mean_interval(100.0 * (mine.astype(float) - theirs))
        lost, gained = int((theirs & ~mine).sum()), int((~theirs & mine).sum())
        return {"interval": [low, high], "samples": len(mine), "method": "paired bootstrap over samples",
                "lost": lost, "gained": gained, "mcnemar_p": mcnemar_p(lost, gained)}
    if name == "top1_agreement" and name in ours:
        same = ours[name]
        _, low, high = proportion_interval(int(same.sum()), len(same))
        return {"interval": [low - 100.0, high - 100.0], "samples": len(same),
                "method": "exact binomial (Clopper-Pearson)"}
    if name == "cosine" and name in ours:
        _, low, high = mean_interval(100.0 * (ours[name] - 1.0))
        return {"interval": [low, high], "samples": len(ours[name]), "method": "bootstrap over samples"}
    return {"interval": None, "method": "none: a metric of yours gives one number per eval set"}


class Measurer:
    def __init__(self, recipe: Recipe, inputs: Inputs, resolved: Resolved, run_dir: Path, reporter, *,
                 memo: MeasureMemo | None = None, model_id: str | None = None):
        self.recipe, self.inputs, self.resolved, self.run_dir, self.reporter = recipe, inputs, resolved, run_dir, \
            reporter
        self.memo, self.model_id = memo, model_id   # a sweep's reused validations (measure_memo.py)
        self.baselines: dict[str, dict] = {}      # runtime name -> FP32 record on it (the reference's included)
        self.reference_outputs: list | None = None
        self.primary: str | None = None
        self._latency_artifacts: dict = {}       # baseline label -> its artifact, for paired timing
        self.reference_per_sample: dict[str, np.ndarray] = {}   # the reference's per-sample hits (intervals)
        self.params = param_count(inputs.reference)   # of the latest model in the chain with countable parameters
        self.macs: int | None = None

    @property
    def higher_is_better(self) -> bool:
        return self.recipe.metric.higher_is_better

    # ------------------------------------------------------------ the FP32 reference
    def reference(self) -> dict:
        """Validate the FP32 model as given: its outputs become what agreement is measured against."""
        ref = self.inputs.reference
        self.reporter.step(f"FP32 reference on {ref.runtime}")
        record, result = self.validate(ref, "reference", collect=True)
        self.reference_outputs = result.outputs
        self.reference_per_sample = result.per_sample
        for i, name in enumerate(self.inputs.spec.outputs):
            peak = max(float(np.abs(batch[i]).max()) if batch[i].size else 0.0 for batch in result.outputs)
            if peak < 1e-6:
                ref.notes.append(f"the FP32 model's output '{name}' is near zero everywhere (max |x| {peak:.1e}): "
                                 "agreement with it is meaningless; is the model trained?")
        record.update(name=f"fp32-{ref.runtime}", label="reference", agreement={})
        user_names = [k for k in result.metrics if k not in ("top1", "top5")]
        self.primary = self.recipe.metric.primary or (
            user_names[0] if self.inputs.metric is not None and user_names
            else default_primary(self.inputs.eval.has_labels, result.outputs[0]))
        name, value = primary_metric(result, self.inputs.spec.outputs, self.primary)
        record["primary"] = {"name": name, "value": value, "higher_is_better": self.higher_is_better}
        self.baselines[ref.runtime] = record
        return record

    @property
    def reference_record(self) -> dict:
        return self.baselines[self.inputs.reference.runtime]

    # ------------------------------------------------------------ any artifact
    def _identity(self, artifact: Artifact) -> str | None:
        """What a validation of `artifact` depends on in itself: its content and state (None: in memory)."""
        if artifact is self.inputs.reference:
            return self.model_id
        sha = artifact.sha256() if artifact.path is not None else None
        return digest({"kind": artifact.kind, "sha256": sha, "state": artifact.state()}) if sha else None

    def validate(self, artifact: Artifact, label: str, *, collect: bool = False,
                 paired_with: str | None = None, thresholds: tuple[float, ...] = (),
                 adaptive: bool = True) -> tuple[dict, EvalResult]:
        key = None
        if self.memo is not None:
            what = self._identity(artifact)
            pair = self._identity(self._latency_artifacts[paired_with]) if paired_with is not None else "unpaired"
            if what is not None and pair is not None:
                key = self.memo.key(artifact=what, paired_with=pair, collect=collect, thresholds=list(thresholds),
                                    adaptive=adaptive)
                found = self.memo.get(key, collect=collect)
                if found is not None:
                    record, result = found
                    self.reporter.log(f"{label}: validation reused from {record['reused']['run']} (same artifact, "
                                      "data, settings and machine)")
                    record.update(artifact=artifact_info(artifact, self.run_dir), macs=self._macs(artifact),
                                  params=param_count(artifact) if isinstance(artifact, TorchModel) else self.params)
                    if paired_with is None:
                        self._latency_artifacts[label] = artifact
                    return record, result
        record, result = self._validate(artifact, label, collect=collect, paired_with=paired_with,
                                        thresholds=thresholds, adaptive=adaptive)
        if key is not None:
            try:
                self.memo.put(key, record, result, self.run_dir, datetime.now(UTC).isoformat(timespec="seconds"))
            except Exception as exc:   # another point wrote it at the same moment, a full disk: only a lost reuse
                self.reporter.log(f"{label}: validation not kept for reuse ({first_line(exc)[:200]})")
        return record, result

    def _validate(self, artifact: Artifact, label: str, *, collect: bool, paired_with: str | None,
                  thresholds: tuple[float, ...], adaptive: bool) -> tuple[dict, EvalResult]:
        threads, batch = self.resolved.threads, self.resolved.batch
        inputs = self.inputs
        session = open_session(artifact, threads=threads)
        self.reporter.log(f"{label}: evaluating on {len(inputs.eval)} samples ({session.runtime})")
        result = evaluate(session, inputs.eval, batch_size=self.recipe.data.batch_size,
                          output_names=inputs.spec.outputs, reference=self.reference_outputs, collect=collect,
                          metric=inputs.metric, label=f"{label} ({session.runtime})")
        del session   # only the timed session lives while timing (an idle one can hold threads and memory)
        def opener(what: Artifact = artifact):
            return lambda: open_session(what, threads=threads, static_batch=batch)

        latency_session = opener()()
        runtime, settings = latency_session.runtime, latency_session.settings
        self.reporter.log(f"{label}: timing batch {batch}, {threads} threads")
        feeds = latency_feeds(inputs.eval, batch)
        budget = self.recipe.latency
        paired = timing = None
        if paired_with is None:
            latency = measure_latency(latency_session, feeds, warmup=budget.warmup, runs=budget.runs)
            self._latency_artifacts[label] = artifact
        else:
            del latency_session   # each block of paired rounds opens both sessions afresh
            latency, paired, timing = paired_latency(
                opener(), opener(self._latency_artifacts[paired_with]), feeds, warmup=budget.warmup,
                runs=budget.runs, max_seconds=budget.max_seconds, rel_precision=budget.rel_precision,
                thresholds=thresholds, adaptive=adaptive)
            self.reporter.log(f"{label}: {timing['rounds']} paired rounds, speed-up {timing['speedup']:.3f}x "
                              f"[{timing['interval'][0]:.3f}, {timing['interval'][1]:.3f}] ({timing['stopped']})")
        record = {
            "runtime": runtime, "settings": settings,
            "artifact": artifact_info(artifact, self.run_dir),
            "params": param_count(artifact) if isinstance(artifact, TorchModel) else self.params,
            "macs": self._macs(artifact),
            "metrics": result.metrics, "agreement": result.agreement, "samples": result.samples,
            "latency": latency,
        }
        if paired is not None:
            record["baseline_latency_paired"] = paired
            record["timing"] = timing
        return record, result

    def baseline(self, artifact: Artifact) -> dict:
        """FP32 on the runtime of `artifact`, built from the reference model on first need."""
        entry = runtime_for(artifact)
        if entry.name in self.baselines:
            return self.baselines[entry.name]
        folder = self.run_dir / "baselines"
        folder.mkdir(exist_ok=True)
        self.reporter.step(f"FP32 baseline on {entry.name}")
        with atomic_dir(folder / entry.name) as tmp:
            built = entry.need("fp32_baseline")(self.inputs.reference, self.inputs.spec, tmp, entry.artifact)
        if built.path is not None and built.path.is_relative_to(tmp):
            built.path = folder / entry.name / built.path.relative_to(tmp)
        record, _ = self.validate(built, f"baseline {entry.name}")
        reference = self.reference_record
        record.update(name=f"fp32-{entry.name}", label=f"baseline {entry.name}",
                      params=reference["params"], macs=reference["macs"])   # the unpruned model's
        name, value = self.primary_of(record)
        record["primary"] = {"name": name, "value": value}
        self.baselines[entry.name] = record
        return record

    def against_baseline(self, artifact: Artifact, label: str, thresholds: tuple[float, ...] = (), *,
                         adaptive: bool | None = None) -> dict:
        """Validate `artifact`, timed in paired rounds with the FP32 baseline of its runtime until the
        speed-up's interval is tight or excludes `thresholds` (the min_speedup gates that judge it), and
        compare: primary metric and its delta vs the reference with a 95% interval, speed-ups vs that
        baseline (with its interval) and the reference. Timing adapts (more paired blocks until the
        interval is tight or decides the gates) when a gate judges the speed-up, or when `adaptive` says so
        (a stage comparing candidates); otherwise the first blocks give the figure and its interval."""
        baseline = self.baseline(artifact)
        record, result = self.validate(artifact, label, paired_with=baseline["label"], thresholds=thresholds,
                                       adaptive=bool(thresholds) if adaptive is None else adaptive)
        name, value = self.primary_of(record)
        reference = self.reference_record
        timing = record["timing"]
        record.update(primary={"name": name, "value": value, "delta": value - reference["primary"]["value"],
                               "higher_is_better": self.higher_is_better,
                               **delta_interval(name, result.per_sample, self.reference_per_sample)},
                      speedup={"vs_fp32_same_runtime": timing["speedup"], "interval": timing["interval"],
                               "vs_reference": reference["latency"]["p50_ms"] / record["latency"]["p50_ms"],
                               "baseline": baseline["name"]})
        return record

    def checkpoint(self, artifact: Artifact, label: str, thresholds: tuple[float, ...] = (), *,
                   adaptive: bool | None = None) -> dict:
        """An intermediate artifact a stage produces (QAT's PTQ start), measured like a stage output."""
        record = self.against_baseline(artifact, label, thresholds, adaptive=adaptive)
        record.pop("artifact")
        record.update(precision=artifact.precision, artifact_type=artifact.kind)
        return record

    def score(self, model, samples: int, metric: str | None = None) -> tuple[str, float]:
        """The recipe's primary metric (or built-in `metric`) on the first `samples` eval samples, untimed:
        `model` is a torch module or any artifact (run on its own runtime)."""
        artifact = model if isinstance(model, Artifact) else TorchModel(path=None, module=model)
        session = open_session(artifact, threads=self.resolved.threads)
        result = evaluate(session, Head(self.inputs.eval, samples), batch_size=self.recipe.data.batch_size,
                          output_names=self.inputs.spec.outputs, reference=self.reference_outputs,
                          metric=self.inputs.metric, label=f"in-stage check ({session.runtime})")
        return primary_metric(result, self.inputs.spec.outputs, metric or self.primary)

    def quick_latency(self, artifact: Artifact, runs: int = 20) -> float:
        """p50 ms of `artifact` at the recipe's latency batch and threads, a short run: to compare candidates
        inside a stage (the stage's output is timed properly, paired with its baseline)."""
        session = open_session(artifact, threads=self.resolved.threads, static_batch=self.resolved.batch)
        feeds = latency_feeds(self.inputs.eval, self.resolved.batch)
        return measure_latency(session, feeds, warmup=3, runs=runs)["p50_ms"]

    def primary_of(self, record: dict) -> tuple[str, float]:
        return primary_metric(EvalResult(metrics=record["metrics"], agreement=record["agreement"]),
                              self.inputs.spec.outputs, self.primary)

    def _macs(self, artifact: Artifact) -> int | None:
        """MACs per sample of the latest torch model in the chain (ONNX/OpenVINO artifacts inherit them)."""
        if isinstance(artifact, TorchModel):
            from .stages.prune import count_macs

            try:
                self.macs = count_macs(artifact.module, self.inputs.spec)[0]
            except Exception:  # a model Torch-Pruning cannot trace: MACs stay unknown, nothing else depends on them
                self.macs = None
        return self.macs
