"""Gates decide shipping. The recipe's `gates:` judge the last stage's artifact (what ships); a
stage's own `gates:` judge that stage's output; each stage's handler adds its implicit gates
(a prune budget not met, a quantize stage that quantized nothing)."""
from __future__ import annotations

from .recipe import Gates, Recipe
from .stages import handler_for


def evaluate_gates(recipe: Recipe, final: dict, reference: dict, stages: list[dict] | None = None) -> list[dict]:
    gates = []
    for cfg, stage in zip(recipe.stages, stages or []):
        gates += handler_for(cfg).gates(stage)
        if cfg.gates is not None:
            gates += threshold_gates(cfg.gates, stage, reference, f"{stage['name']}.", f"after stage {stage['name']}: ")
    return gates + threshold_gates(recipe.gates, final, reference)


def threshold_gates(g: Gates, record: dict, reference: dict, prefix: str = "", context: str = "") -> list[dict]:
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
