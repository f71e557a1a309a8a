"""choose: build each precision the target declares (FP32, BF16, FP16, INT8), validate and time each on
the target's runtime exactly like a stage output, judge each with the gates that judge this stage, and
ship the best that passes them all.

Candidates are built from the existing stages: their configs (QuantizeConfig, CompileConfig) run through
their own handlers, so a candidate is what a recipe with those stages would ship. What a precision means
on a runtime is the `BUILDERS` table below; a runtime without an entry cannot be a choose target.
"""
from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable

from ..artifacts import Artifact, OnnxModel
from ..errors import ChainError, InputError
from ..recipe import STAGE_TYPES, ChooseConfig, CompileConfig, QuantizeConfig
from ..runtimes import for_target
from ..targets import Target
from . import PlanState, StageContext, handler_for, register


# ---------------------------------------------------------------- building candidates
def _sub(ctx: StageContext, name: str, step: str) -> StageContext:
    """A context for one step of one candidate: its own folder and details."""
    folder = ctx.out_dir / "candidates" / name / step
    folder.mkdir(parents=True)
    return dataclasses.replace(ctx, out_dir=folder, details={"stamp": ctx.details.get("stamp", {})},
                               where=f"{ctx.where}.candidates.{name}")


def _run(cfg, artifact: Artifact, ctx: StageContext, name: str, step: str) -> tuple[Artifact, dict]:
    sub = _sub(ctx, name, step)
    out = handler_for(cfg).run(cfg, artifact, sub)
    sub.details.pop("stamp", None)
    return out, sub.details


def _compile(cfg: ChooseConfig, artifact: Artifact, ctx: StageContext, name: str,
             inference_precision: str | None = None) -> tuple[Artifact, dict]:
    return _run(CompileConfig(type="compile", target=cfg.target, inference_precision=inference_precision),
                artifact, ctx, name, "compile")


def _int8(cfg: ChooseConfig, artifact: Artifact, ctx: StageContext, name: str,
          precision: str | None = None) -> tuple[Artifact, dict]:
    """The quantize stage with the target's first INT8 backend and its defaults (with `accuracy_control` for
    int8_fallback: the layers that cost the most kept in float), then compile."""
    fallback = {"accuracy_control": cfg.accuracy_control} if name == "int8_fallback" else {}
    quantize = QuantizeConfig(type="quantize", backend=ctx.target.quantize_backends[0], **fallback)
    quantized, details = _run(quantize, artifact, ctx, name, "quantize")
    out, compiled = _compile(cfg, quantized, ctx, name, precision)
    return out, {"quantize": details, "compile": compiled}


def _ov_hint(hint: str) -> Callable:
    def build(cfg: ChooseConfig, artifact: Artifact, ctx: StageContext, name: str):
        out, details = _compile(cfg, artifact, ctx, name, hint)
        out.precision = name
        return out, {"compile": details}
    return build


def _ov_available(hint: str) -> Callable[[], str | None]:
    def available() -> str | None:
        from ..runtimes.openvino_runtime import cpu_supports

        if cpu_supports(hint):
            return None
        need = {"bf16": "AVX512_BF16 or AMX-BF16", "f16": "AVX512_FP16 or AMX-FP16"}[hint]
        return f"this CPU lacks {need}: OpenVINO would run it in f32"
    return available


def _ort_fp16(cfg: ChooseConfig, artifact: OnnxModel, ctx: StageContext, name: str):
    """onnxconverter-common's float16 conversion (inputs and outputs stay float32), then compile."""
    import onnx
    from onnxconverter_common import float16

    from ..errors import backend_call

    sub = _sub(ctx, name, "convert")
    path = sub.out_dir / "model.onnx"
    with backend_call("onnxconverter-common cannot convert the model to FP16", where=ctx.where):
        converted = float16.convert_float_to_float16(onnx.load(str(artifact.path)), keep_io_types=True)
    onnx.save(converted, str(path))
    out, details = _compile(cfg, OnnxModel(path=path, precision="fp16"), ctx, name)
    out.precision = "fp16"
    return out, {"compile": details}


def _fp32(cfg: ChooseConfig, artifact: Artifact, ctx: StageContext, name: str):
    out, details = _compile(cfg, artifact, ctx, name, "f32" if ctx.target.runtime == "openvino" else None)
    return out, {"compile": details}


def _always() -> str | None:
    return None


# runtime -> candidate -> (builder(cfg, fp32 artifact, ctx, name) -> (artifact, details), why-not-here or None).
# int8_fallback is the quantize stage with accuracy_control; it ranks every layer, so it is built only when a
# recipe lists it, on targets that offer int8.
BUILDERS: dict[str, dict[str, tuple[Callable, Callable[[], str | None]]]] = {
    "openvino": {"fp32": (_fp32, _always), "bf16": (_ov_hint("bf16"), _ov_available("bf16")),
                 "fp16": (_ov_hint("f16"), _ov_available("f16")), "int8": (_int8, _always),
                 "int8_fallback": (_int8, _always)},
    "onnxruntime": {"fp32": (_fp32, _always), "fp16": (_ort_fp16, _always), "int8": (_int8, _always),
                    "int8_fallback": (_int8, _always)},
}
ON_REQUEST = ("int8_fallback",)   # offered wherever the target offers int8, built only when listed


# ---------------------------------------------------------------- plan
def _accepts(cfg: ChooseConfig, target: Target | None) -> dict[type, type]:
    entry = for_target(target.runtime, target.format)
    return dict.fromkeys(entry.compiles_from, entry.artifact)


def wanted(cfg: ChooseConfig, target: Target) -> list[str]:
    return list(cfg.candidates or target.candidates)


def _check(cfg: ChooseConfig, state: PlanState) -> None:
    target = state.target
    builders = BUILDERS.get(target.runtime)
    if not target.candidates or builders is None:
        ready = ", ".join(sorted(BUILDERS))
        raise ChainError(f"target {target.name} declares no candidates for `choose` (runtime {target.runtime}; "
                         f"choose builds candidates for: {ready})", where=f"{state.where}.target",
                         hint="Pick a target whose file lists `candidates:`, or compile with a fixed precision.")
    offered = [*target.candidates, *(n for n in ON_REQUEST if "int8" in target.candidates)]
    for name in wanted(cfg, target):
        if name not in offered or name not in builders:
            raise ChainError(f"candidate {name} is not offered by target {target.name} "
                             f"(it offers: {', '.join(offered)})", where=f"{state.where}.candidates",
                             hint="Remove it from `candidates:`.")
        if name in ON_REQUEST and state.recipe.data.eval is None:
            raise ChainError(f"candidate {name} ranks layers on held-out data, and the recipe has no data.eval",
                             where=f"{state.where}.candidates", hint="Add data.eval, or drop the candidate.")
    for before in state.previous:
        if handler_for(before.config).quantizes(before.config) is not None:
            raise ChainError(f"{before.where} quantizes; `choose` builds its own INT8 candidate from the FP32 model",
                             where=state.where, hint="Remove the quantize/qat stage, or the choose stage.")


def _forbids_after(cfg: ChooseConfig) -> dict[str, tuple[str, str | None]]:
    rule = ("{at} chooses what ships; it must be the last stage", "Move the choose stage to the end.")
    return dict.fromkeys(STAGE_TYPES, rule)


# ---------------------------------------------------------------- judging
def _accuracy(record: dict) -> float:
    primary = record["primary"]
    return primary["value"] if primary.get("higher_is_better", True) else -primary["value"]


def pick(candidates: dict[str, dict], objective: str) -> tuple[str, str]:
    """(winner, one sentence why) among built candidates; each record has `passed`, `gates`, `speedup`
    (with `interval`), `size_mb` and `primary`. With none passing: (closest, why it is the closest)."""
    built = {n: r for n, r in candidates.items() if "primary" in r}
    passing = {n: r for n, r in built.items() if r["passed"]}
    if not passing:
        def shortfall(item):
            failed = [g for g in item[1]["gates"] if not g["passed"]]
            return len(failed), sum(_miss(g) for g in failed)
        name, record = min(built.items(), key=shortfall)
        failed = [g for g in record["gates"] if not g["passed"]]
        return name, (f"no candidate passes every gate; closest: {name} (fails "
                      + "; ".join(f"{g['gate']}: {g['detail']}" for g in failed) + ")")
    if objective == "size":
        best = min(passing, key=lambda n: (passing[n]["size_mb"], -_accuracy(passing[n])))
        r = passing[best]
        return best, f"{best}: the smallest candidate that passes every gate ({r['size_mb']:.3f} MB)"
    fastest = max(passing, key=lambda n: passing[n]["speedup"]["vs_fp32_same_runtime"])
    low = passing[fastest]["speedup"]["interval"][0]
    tied = [n for n in passing if passing[n]["speedup"]["interval"][1] >= low]   # as fast within the interval
    best = max(tied, key=lambda n: (_accuracy(passing[n]), passing[n]["speedup"]["vs_fp32_same_runtime"]))
    r = passing[best]
    speed = f"{r['speedup']['vs_fp32_same_runtime']:.2f}x [{r['speedup']['interval'][0]:.2f}, " \
            f"{r['speedup']['interval'][1]:.2f}]"
    if best == fastest:
        others = [n for n in tied if n != best]
        tail = f"; {', '.join(others)} as fast within the interval but not more accurate" if others else ""
        return best, f"{best}: the fastest candidate that passes every gate ({speed}){tail}"
    f = passing[fastest]
    gain = _accuracy(r) - _accuracy(f)
    return best, (f"{best}: as fast as {fastest} here within the interval ({speed} vs "
                  f"{f['speedup']['vs_fp32_same_runtime']:.2f}x), and {gain:.2f} points more accurate")


def _miss(gate: dict) -> float:
    """How far a failed gate's value is from its threshold, relative to the threshold."""
    try:
        return abs(float(gate["value"]) - float(gate["threshold"])) / max(abs(float(gate["threshold"])), 1e-9)
    except (TypeError, ValueError):
        return 1.0


# ---------------------------------------------------------------- the stage
@register(ChooseConfig, accepts=_accepts, check=_check, target=lambda cfg: cfg.target, forbids_after=_forbids_after,
          reads=lambda cfg: ("threads", "batch", "vnni"),
          gates=lambda record: _gates(record), notes=lambda record: _notes(record),
          sections=lambda record: _sections(record))
def choose(cfg: ChooseConfig, artifact: Artifact, ctx: StageContext):
    if artifact.precision != "fp32":
        raise InputError(f"choose takes the FP32 model, got {artifact.precision}", where=ctx.where)
    builders = BUILDERS[ctx.target.runtime]
    records: dict[str, dict] = {}
    artifacts: dict[str, Artifact] = {}
    for name in wanted(cfg, ctx.target):
        build, available = builders[name]
        why_not = available()
        if why_not is not None:
            ctx.log(f"candidate {name}: skipped ({why_not})")
            records[name] = {"skipped": why_not}
            continue
        ctx.log(f"candidate {name}: building")
        out, details = build(cfg, artifact, ctx, name)
        record = ctx.validate(out, f"{ctx.where} {name}", adaptive=True)   # candidates are compared by speed
        record.update(size_mb=round(out.size_bytes() / 1e6, 4), path=str(out.path.relative_to(ctx.out_dir)),
                      precision=out.precision, build=details,
                      artifact={"size_mb": round(out.size_bytes() / 1e6, 4)})
        record["gates"] = ctx.judge(record) if ctx.judge is not None else []
        record["passed"] = all(g["passed"] for g in record["gates"])
        records[name], artifacts[name] = record, out
    if not artifacts:
        raise InputError("no candidate can be built here: " + "; ".join(f"{n}: {r['skipped']}"
                                                                          for n, r in records.items()),
                         where=f"{ctx.where}.candidates")
    winner, why = pick(records, cfg.objective)
    ctx.details.update(candidates=records, chosen=winner, why=why, objective=cfg.objective,
                       passed=records[winner]["passed"])
    ctx.log(why)
    chosen = artifacts[winner]
    for part in chosen.files():   # the shipped artifact sits at the top of the stage folder, like any stage's
        shutil.copyfile(part, ctx.out_dir / part.name)
    return dataclasses.replace(chosen, path=ctx.out_dir / chosen.path.name, notes=[*chosen.notes, f"chosen: {why}"])


def _gates(record: dict) -> list[dict]:
    d = record["details"]
    if d.get("passed", True):
        return []
    return [{"gate": "choose", "threshold": "a candidate passes every gate", "value": d["chosen"], "passed": False,
             "detail": d["why"]}]


def _notes(record: dict) -> list[str]:
    return [f"{n}: skipped, {r['skipped']}" for n, r in record["details"].get("candidates", {}).items()
            if "skipped" in r]


def _ci(interval) -> str:
    return "–" if not interval else f"[{interval[0]:.2f}, {interval[1]:.2f}]"


def _sections(record: dict) -> list[str]:
    d = record["details"]
    if "candidates" not in d:
        return []
    lines = [f"## Candidates ({record['name']}, objective {d['objective']})", "",
             f"**Chosen: {d['chosen']}** — {d['why']}", "",
             "| candidate | metric | Δ pts | Δ 95% CI | speed-up | speed-up 95% CI | p50 ms | size MB | "
             "gates (verdict) | passes |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in d["candidates"].items():
        if "skipped" in r:
            lines.append(f"| {name} | – | – | – | – | – | – | – | skipped: {r['skipped']} | – |")
            continue
        p, s = r["primary"], r["speedup"]
        gates = ", ".join(f"{g['gate']} {g.get('verdict', '')}" for g in r["gates"]) or "–"
        lines.append(f"| {name}{' (chosen)' if name == d['chosen'] else ''} | {p['name']} {p['value']:.2f} | "
                     f"{p['delta']:+.2f} | {_ci(p.get('interval'))} | {s['vs_fp32_same_runtime']:.2f}x | "
                     f"{_ci(s.get('interval'))}x | {r['latency']['p50_ms']:.3f} | {r['size_mb']:.3f} | {gates} | "
                     f"{'yes' if r['passed'] else 'no'} |")
    return [*lines, ""]

