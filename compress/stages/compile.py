"""compile: an artifact -> the target's deployable format. What each runtime does is the
`compile` entry of the runtime table; this stage resolves the target to its entry."""
from __future__ import annotations

from ..errors import ChainError
from ..recipe import CompileConfig
from ..runtimes import for_target
from ..targets import Target
from . import PlanState, StageContext, check_notes, register


def _accepts(cfg: CompileConfig, target: Target | None) -> dict[type, type]:
    entry = for_target(target.runtime, target.format)
    return dict.fromkeys(entry.compiles_from, entry.artifact)


def _check(cfg: CompileConfig, state: PlanState) -> None:
    entry = for_target(state.target.runtime, state.target.format)
    if cfg.inference_precision is not None and cfg.inference_precision not in entry.inference_precisions:
        allowed = ", ".join(entry.inference_precisions) or "none"
        raise ChainError(f"inference_precision '{cfg.inference_precision}' does not apply to target "
                         f"{state.target.name} (runtime {entry.name} takes: {allowed})",
                         where=f"{state.where}.inference_precision",
                         hint="Remove it, or compile for a target whose runtime has that precision.")


def _notes(record: dict) -> list[str]:
    d = record["details"]
    notes = []
    if "inference_precision" in d:
        notes.append(f"OpenVINO runs non-INT8 layers in {d['inference_precision']}")
    if "graph_optimization" in d:
        notes.append(f"ONNX Runtime graph optimisation '{d['graph_optimization']}' saved into the file")
    notes += check_notes(record)
    if "build" in d:
        notes.append(f"engine build on the device: `compress build <run folder>`; equivalent: {d['build']['trtexec']}")
    if "ort_format" in d:
        fmt = d["ort_format"]
        notes.append(f"ORT format (.ort), optimizations fixed for {fmt['platform']}; the reduced-size build's "
                     f"operator config is written beside it: {', '.join(fmt['operator_config'])}")
    return notes


def _gates(record: dict) -> list[dict]:
    """A check the artifact failed (polygraphy's lint, say) fails the run: the device would refuse it."""
    failed = [row for row in record["details"].get("tensorrt_checks", []) if row["passed"] is False]
    return [{"gate": "artifact_checks", "threshold": "every check passes", "value": row["check"], "passed": False,
             "detail": f"stage {record['name']}: {row['check']} failed: {row['detail']}"} for row in failed]


@register(CompileConfig, accepts=_accepts, check=_check, target=lambda cfg: cfg.target, notes=_notes, gates=_gates)
def compile_stage(cfg: CompileConfig, artifact, ctx: StageContext):
    entry = for_target(ctx.target.runtime, ctx.target.format)
    ctx.log(f"compiling for {ctx.target.name} ({entry.name}, {entry.format})")
    ctx.details["target"] = ctx.target.name
    return entry.need("compile")(cfg, artifact, ctx, entry.artifact)
