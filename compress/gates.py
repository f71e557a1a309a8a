"""Gates decide shipping. The recipe's `gates:` judge the last stage's artifact (what ships); a
stage's own `gates:` judge that stage's output; each stage's handler adds its implicit gates
(a prune budget not met, a quantize stage that quantized nothing).

Measured gates carry the 95% interval of what they judge and a verdict: `pass` (the whole interval
clears the threshold), `fail` (none of it does) or `inconclusive` (it straddles the threshold after
the timing budget, or the eval set is too small: `needed_samples` says how many it would take).
`policy` decides what an inconclusive gate does: point (default) judges by the point estimate,
conservative fails it (exit 3)."""
from __future__ import annotations

from .recipe import Gates, Recipe
from .stages import handler_for
from .stats import needed_samples, verdict

DEFAULT_POLICY = "point"


def evaluate_gates(recipe: Recipe, final: dict, reference: dict, stages: list[dict] | None = None) -> list[dict]:
    gates = []
    policy = recipe.gates.policy or DEFAULT_POLICY
    for cfg, stage in zip(recipe.stages, stages or []):
        gates += [with_verdict(g) for g in handler_for(cfg).gates(stage)]
        if cfg.gates is not None:
            gates += threshold_gates(cfg.gates, stage, reference, f"{stage['name']}.", f"after stage {stage['name']}: ",
                                     policy=cfg.gates.policy or policy)
    return gates + threshold_gates(recipe.gates, final, reference, policy=policy)


def stage_judge(recipe: Recipe, cfg, reference: dict, last: bool):
    """The gates that judge a stage's output (its own; the recipe's too when it is the last stage), as a
    function of a validation record: a stage that picks among artifacts judges each candidate with it."""
    policy = recipe.gates.policy or DEFAULT_POLICY

    def judge(record: dict) -> list[dict]:
        gates = []
        if cfg.gates is not None:
            gates += threshold_gates(cfg.gates, record, reference, policy=cfg.gates.policy or policy)
        return gates + (threshold_gates(recipe.gates, record, reference, policy=policy) if last else [])
    return judge


def with_verdict(gate: dict) -> dict:
    """A handler's implicit gate (no interval): its verdict is its pass/fail."""
    return {"verdict": "pass" if gate["passed"] else "fail", **gate}


def _decide(gate: dict, point_passes: bool, policy: str) -> dict:
    gate["policy"] = policy
    gate["passed"] = gate["verdict"] == "pass" or (gate["verdict"] == "inconclusive" and policy == "point"
                                                   and point_passes)
    return gate


def _interval_text(interval) -> str:
    return "" if interval is None else f" [95% CI {interval[0]:.2f}, {interval[1]:.2f}]"


def threshold_gates(g: Gates, record: dict, reference: dict, prefix: str = "", context: str = "",
                    policy: str | None = None) -> list[dict]:
    policy = policy or g.policy or DEFAULT_POLICY
    gates = []
    if g.max_accuracy_drop is not None:
        primary = record["primary"]
        sign = 1 if primary.get("higher_is_better", True) else -1
        drop = sign * (reference["primary"]["value"] - primary["value"])
        delta_ci = primary.get("interval")
        interval = None if delta_ci is None else sorted([-sign * delta_ci[0] + 0.0, -sign * delta_ci[1] + 0.0])
        point_passes = drop <= g.max_accuracy_drop
        gate = {"gate": prefix + "max_accuracy_drop", "threshold": g.max_accuracy_drop, "value": round(drop, 4),
                "interval": None if interval is None else [round(v, 4) for v in interval],
                "verdict": verdict(*interval, g.max_accuracy_drop, at_least=False) if interval is not None
                else ("pass" if point_passes else "fail")}
        detail = (f"{context}{primary['name']} dropped {drop:.2f} points{_interval_text(interval)} "
                  f"({reference['primary']['value']:.2f} -> {primary['value']:.2f}"
                  f"{', ' + str(primary['samples']) + ' eval samples' if primary.get('samples') else ''}); "
                  f"allowed {g.max_accuracy_drop}")
        if gate["verdict"] == "inconclusive":
            need = needed_samples(primary.get("samples") or 0, interval[0], interval[1], drop, g.max_accuracy_drop)
            gate["needed_samples"] = need
            detail += ("; the eval set is too small to tell" + (f": about {need} samples would resolve it"
                                                                 if need else " (the estimate sits on the threshold)"))
        gate["detail"] = detail
        gates.append(_decide(gate, point_passes, policy))
    if g.min_speedup is not None:
        speedup = record["speedup"]["vs_fp32_same_runtime"]
        interval = record["speedup"].get("interval")
        point_passes = speedup >= g.min_speedup
        timing = record.get("timing") or {}
        gate = {"gate": prefix + "min_speedup", "threshold": g.min_speedup, "value": round(speedup, 4),
                "interval": None if interval is None else [round(v, 4) for v in interval],
                "verdict": verdict(*interval, g.min_speedup, at_least=True) if interval is not None
                else ("pass" if point_passes else "fail")}
        detail = f"{context}{speedup:.2f}x{_interval_text(interval)} vs {record['speedup']['baseline']}"
        if timing:
            detail += f" ({timing['rounds']} paired rounds, {timing['runs']} runs each side"
            detail += ", machine busy: other processes used " \
                      f"{timing['load']['other_cores']} cores)" if timing["load"]["busy"] else ")"
        detail += f"; required {g.min_speedup}x"
        if gate["verdict"] == "inconclusive":
            detail += "; the timing budget ran out before the interval cleared the threshold"
        gate["detail"] = detail
        gates.append(_decide(gate, point_passes, policy))
    if g.max_size_mb is not None:
        size = record["artifact"]["size_mb"]
        passed = size is not None and size <= g.max_size_mb
        gates.append({"gate": prefix + "max_size_mb", "threshold": g.max_size_mb, "value": size,
                      "interval": None if size is None else [size, size], "verdict": "pass" if passed else "fail",
                      "policy": policy, "passed": passed,
                      "detail": f"{context}{size} MB; allowed {g.max_size_mb} MB"})
    return gates
