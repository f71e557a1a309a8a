"""Precision chosen from evidence: `choose` builds the target's candidates through the existing stage
handlers, validates and times each, and ships the best that passes every gate (exit 3 naming the
closest when none does). The picking rule and the plan-time rules are fast; runs are slow."""
from __future__ import annotations

import json

import pytest

import compress
from compress.errors import ChainError, RecipeError
from compress.stages.choose import pick

from conftest import cli, fashion_recipe, write_recipe


def _cand(speedup, interval, value, passed=True, size=1.0, gates=()):
    return {"primary": {"name": "top1_agreement", "value": value, "higher_is_better": True},
            "speedup": {"vs_fp32_same_runtime": speedup, "interval": list(interval)}, "size_mb": size,
            "passed": passed, "gates": list(gates)}


def test_the_fastest_passing_candidate_wins_and_a_tie_within_the_interval_goes_to_the_more_accurate():
    records = {"fp32": _cand(1.0, (0.97, 1.03), 100.0), "bf16": _cand(2.9, (2.7, 3.1), 97.0),
               "int8": _cand(3.0, (2.8, 3.2), 93.0), "skipped": {"skipped": "no AMX"}}
    winner, why = pick(records, "latency")
    assert winner == "bf16"
    assert why.startswith("bf16: as fast as int8 here within the interval") and "4.00 points more accurate" in why
    records["bf16"] = _cand(2.0, (1.9, 2.1), 97.0)          # clearly slower now: int8 wins on speed
    winner, why = pick(records, "latency")
    assert winner == "int8" and "the fastest candidate that passes every gate" in why
    records["int8"]["passed"] = False                         # int8 fails a gate: the next fastest passing one
    assert pick(records, "latency")[0] == "bf16"
    assert pick(records, "size")[0] in ("fp32", "bf16")


def test_size_objective_ships_the_smallest_passing_candidate():
    records = {"fp32": _cand(1.0, (0.9, 1.1), 100.0, size=14.0), "int8": _cand(1.1, (1.0, 1.2), 95.0, size=3.6)}
    winner, why = pick(records, "size")
    assert winner == "int8" and "smallest" in why and "3.600 MB" in why


def test_with_no_candidate_passing_the_closest_is_named_with_its_failed_gates():
    fail = {"gate": "min_speedup", "threshold": 2.0, "value": 1.5, "passed": False, "detail": "1.50x; required 2.0x"}
    far = {"gate": "min_speedup", "threshold": 2.0, "value": 0.5, "passed": False, "detail": "0.50x; required 2.0x"}
    acc = {"gate": "max_accuracy_drop", "threshold": 1.0, "value": 5.0, "passed": False, "detail": "dropped 5"}
    records = {"fp32": _cand(1.0, (0.9, 1.1), 100.0, passed=False, gates=[far]),
               "int8": _cand(1.5, (1.4, 1.6), 90.0, passed=False, gates=[fail]),
               "fp16": _cand(0.5, (0.4, 0.6), 99.0, passed=False, gates=[far, acc])}
    winner, why = pick(records, "latency")
    assert winner == "int8"
    assert why.startswith("no candidate passes every gate; closest: int8") and "1.50x; required 2.0x" in why


@pytest.mark.parametrize(("stages", "match"), [
    ([{"type": "export"}, {"type": "choose", "target": "android-arm64-ort"}], "declares no candidates"),
    ([{"type": "choose", "target": "x86-cpu-onnxruntime"}], "takes OnnxModel"),
    ([{"type": "export"}, {"type": "choose", "target": "x86-cpu-onnxruntime", "candidates": ["bf16"]}],
     "candidate bf16 is not offered by target x86-cpu-onnxruntime"),
    ([{"type": "quantize", "backend": "openvino"}, {"type": "choose", "target": "x86-cpu-openvino"}],
     "builds its own INT8"),
    ([{"type": "choose", "target": "x86-cpu-openvino"}, {"type": "compile", "target": "x86-cpu-openvino"}],
     "must be the last stage"),
])
def test_choose_is_checked_at_plan_time(stages, match):
    with pytest.raises(ChainError, match=match) as info:
        compress.validate(fashion_recipe(stages))
    assert info.value.exit_code == 2


def test_a_candidate_listed_twice_or_unknown_is_a_recipe_error():
    for candidates in (["fp32", "fp32"], ["int4"]):
        with pytest.raises(RecipeError, match=r"stages\[0\]\.candidates"):
            compress.validate(fashion_recipe([{"type": "choose", "target": "x86-cpu-openvino",
                                               "candidates": candidates}]))


@pytest.mark.slow
def test_choose_on_onnxruntime_ships_the_winner_and_lists_every_candidate(tmp):
    """Fashion CNN on ONNX Runtime: FP32, FP16 and INT8 are built and judged; the winner is the stage's
    artifact, the report has the candidate table; an impossible gate gives exit 3 naming the closest."""
    stages = [{"type": "export"}, {"type": "choose", "target": "x86-cpu-onnxruntime"}]
    recipe = fashion_recipe(stages, gates={"max_accuracy_drop": 2.0},
                            latency={"warmup": 2, "runs": 9, "max_seconds": 2})
    result = compress.run(recipe, out=tmp / "runs")
    details = result.stages[-1]["details"]
    assert set(details["candidates"]) == {"fp32", "fp16", "int8"}
    for name, record in details["candidates"].items():
        assert record["precision"] == name and record["speedup"]["interval"][0] <= record["speedup"]["interval"][1]
        assert [g["gate"] for g in record["gates"]] == ["max_accuracy_drop"]
    chosen = details["candidates"][details["chosen"]]
    assert result.passed and chosen["passed"]
    assert result.report["final_artifact"]["precision"] == details["chosen"]
    assert (result.run_dir / result.report["final_artifact"]["path"]).is_file()
    text = (result.run_dir / "report.md").read_text()
    assert f"**Chosen: {details['chosen']}**" in text and "| fp16 " in text and "| int8" in text

    impossible = fashion_recipe(stages, gates={"min_speedup": 50.0},
                                latency={"warmup": 2, "runs": 9, "max_seconds": 2})
    path = write_recipe(tmp, impossible)
    proc = cli("run", path, "--out", tmp / "runs2", "--json")
    assert proc.returncode == 3, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    gate = next(g for g in report["gates"] if g["gate"] == "choose")
    assert "no candidate passes every gate; closest: " in gate["detail"] and not gate["passed"]


@pytest.mark.slow
def test_int8_fallback_is_a_candidate_built_by_the_quantize_stage_with_accuracy_control(tmp):
    """Listed on request: INT8 with the layers that cost the most kept in float, judged like the others."""
    stages = [{"type": "export"}, {"type": "choose", "target": "x86-cpu-onnxruntime",
                                   "candidates": ["int8", "int8_fallback"],
                                   "accuracy_control": {"max_drop": 0.0001, "max_fallback_layers": 1,
                                                        "metric": "cosine", "samples": 64}}]
    recipe = fashion_recipe(stages, gates={"max_accuracy_drop": 2.0},
                            latency={"warmup": 2, "runs": 9, "max_seconds": 2})
    result = compress.run(recipe, out=tmp / "runs")
    candidates = result.stages[-1]["details"]["candidates"]
    assert set(candidates) == {"int8", "int8_fallback"}
    fallback = candidates["int8_fallback"]["build"]["quantize"]["fallback"]
    assert "fallback" not in candidates["int8"]["build"]["quantize"]
    assert fallback["plain_int8"] < fallback["baseline"] and len(fallback["kept_fp32"]) <= 1
    assert fallback["metric_after"] >= fallback["plain_int8"]
    assert [g["gate"] for g in candidates["int8_fallback"]["gates"]] == ["max_accuracy_drop"]


def test_int8_fallback_needs_eval_data_and_a_target_with_int8():
    stages = [{"type": "export"}, {"type": "choose", "target": "x86-cpu-onnxruntime", "candidates": ["int8_fallback"]}]
    compress.validate(fashion_recipe(stages))        # offered on request wherever int8 is
    recipe = fashion_recipe(stages)
    del recipe["data"]["eval"]
    with pytest.raises(ChainError, match=r"no data\.eval"):
        compress.validate(recipe)
