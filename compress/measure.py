"""Measuring: the FP32 reference and its outputs, the FP32 baseline on each runtime, validation of
any artifact (task metric, agreement with FP32, paired latency), and the primary metric. Every
stage, checkpoint and baseline is measured here, so their numbers are comparable."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .artifacts import Artifact, OnnxModel, TorchModel
from .data import Head
from .fsutil import atomic_dir
from .inputs import Inputs
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


class Measurer:
    def __init__(self, recipe: Recipe, inputs: Inputs, resolved: Resolved, run_dir: Path, reporter):
        self.recipe, self.inputs, self.resolved, self.run_dir, self.reporter = recipe, inputs, resolved, run_dir, \
            reporter
        self.baselines: dict[str, dict] = {}      # runtime name -> FP32 record on it (the reference's included)
        self.reference_outputs: list | None = None
        self.primary: str | None = None
        self._latency_sessions: dict = {}        # baseline label -> its open session, for paired timing
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
    def validate(self, artifact: Artifact, label: str, *, collect: bool = False,
                 paired_with: str | None = None) -> tuple[dict, EvalResult]:
        threads, batch = self.resolved.threads, self.resolved.batch
        inputs = self.inputs
        session = open_session(artifact, threads=threads)
        self.reporter.log(f"{label}: evaluating on {len(inputs.eval)} samples ({session.runtime})")
        result = evaluate(session, inputs.eval, batch_size=self.recipe.data.batch_size,
                          output_names=inputs.spec.outputs, reference=self.reference_outputs, collect=collect,
                          metric=inputs.metric, label=f"{label} ({session.runtime})")
        latency_session = open_session(artifact, threads=threads, static_batch=batch)
        self.reporter.log(f"{label}: timing batch {batch}, {threads} threads")
        feeds = latency_feeds(inputs.eval, batch)
        warmup, runs = self.recipe.latency.warmup, self.recipe.latency.runs
        paired = None
        if paired_with is None:
            latency = measure_latency(latency_session, feeds, warmup=warmup, runs=runs)
            self._latency_sessions[label] = latency_session
        else:
            latency, paired = paired_latency(latency_session, self._latency_sessions[paired_with], feeds,
                                             warmup=warmup, runs=runs)
        record = {
            "runtime": session.runtime, "settings": latency_session.settings,
            "artifact": artifact_info(artifact, self.run_dir),
            "params": param_count(artifact) if isinstance(artifact, TorchModel) else self.params,
            "macs": self._macs(artifact),
            "metrics": result.metrics, "agreement": result.agreement, "samples": result.samples,
            "latency": latency,
        }
        if paired is not None:
            record["baseline_latency_paired"] = paired
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

    def against_baseline(self, artifact: Artifact, label: str) -> dict:
        """Validate `artifact`, timed in alternating rounds with the FP32 baseline of its runtime, and
        compare: primary metric and its delta vs the reference, speed-ups vs that baseline and the reference."""
        baseline = self.baseline(artifact)
        record, _ = self.validate(artifact, label, paired_with=baseline["label"])
        name, value = self.primary_of(record)
        reference = self.reference_record
        record.update(primary={"name": name, "value": value, "delta": value - reference["primary"]["value"],
                               "higher_is_better": self.higher_is_better},
                      speedup={"vs_fp32_same_runtime": record["baseline_latency_paired"]["p50_ms"]
                               / record["latency"]["p50_ms"],
                               "vs_reference": reference["latency"]["p50_ms"] / record["latency"]["p50_ms"],
                               "baseline": baseline["name"]})
        return record

    def checkpoint(self, artifact: Artifact, label: str) -> dict:
        """An intermediate artifact a stage produces (QAT's PTQ start), measured like a stage output."""
        record = self.against_baseline(artifact, label)
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
