"""Runs that survive reruns and interruption: stage cache, --resume after SIGINT/SIGKILL, determinism."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import compress

from conftest import ROOT, cli, fashion_recipe, write_recipe

ORT_CHAIN = [{"type": "export"}, {"type": "quantize", "backend": "onnxruntime", "samples": 64},
             {"type": "compile", "target": "x86-cpu-onnxruntime"}]


def _small(stages, **kw) -> dict:
    recipe = fashion_recipe(stages, **kw)
    recipe["data"]["eval"]["samples"] = 100
    recipe["latency"] = {"warmup": 1, "runs": 2}
    return recipe


def _summary(report: dict) -> list[tuple]:
    return [(s["name"], s["artifact"]["sha256"], round(s["primary"]["value"], 6)) for s in report["stages"]]


def test_rerun_reuses_stages_and_a_changed_stage_recomputes_from_there(tmp):
    recipe = _small(ORT_CHAIN)
    first = compress.run(recipe, out=tmp)
    assert [s["cached"] for s in first.stages] == [None, None, None]
    again = compress.run(recipe, out=tmp)
    assert [s["cached"] for s in again.stages] == ["cache", "cache", "cache"]
    assert _summary(again.report) == _summary(first.report)
    changed = _small([ORT_CHAIN[0], {**ORT_CHAIN[1], "method": "percentile"}, ORT_CHAIN[2]])
    third = compress.run(changed, out=tmp)
    assert [s["cached"] for s in third.stages] == ["cache", None, None]
    fresh = compress.run(recipe, out=tmp, cache=False)
    assert [s["cached"] for s in fresh.stages] == [None, None, None]
    gated = _small([{**ORT_CHAIN[0], "gates": {"max_accuracy_drop": 5.0}}, *ORT_CHAIN[1:]])
    judged = compress.run(gated, out=tmp)   # a stage's gates judge its output; they do not change it
    assert [s["cached"] for s in judged.stages] == ["cache", "cache", "cache"]
    assert [g["gate"] for g in judged.gates] == [f"{judged.stages[0]['name']}.max_accuracy_drop"]


def test_same_recipe_and_seed_give_identical_artifacts_and_metrics(tmp):
    """Both backends are bitwise deterministic here; latency is the only figure that varies."""
    for stages in (ORT_CHAIN, [{"type": "quantize", "backend": "openvino", "samples": 64}]):
        a = compress.run(_small(stages), out=tmp / "a", cache=False)
        b = compress.run(_small(stages), out=tmp / "b", cache=False)
        assert _summary(a.report) == _summary(b.report)


def _start(recipe: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "compress.cli", "run", str(recipe), "--out", str(out), "-q"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_kill_at_random_points_then_resume_matches_an_uninterrupted_run(tmp):
    recipe = write_recipe(tmp, _small(ORT_CHAIN))
    started = time.perf_counter()
    clean = cli("run", recipe, "--out", tmp / "clean", "--json")
    duration = time.perf_counter() - started
    assert clean.returncode == 0, clean.stderr
    expected = _summary(json.loads(clean.stdout))

    rng = random.Random(7)
    outcomes = []
    for i in range(20):
        out = tmp / f"kill{i}"
        sig = signal.SIGINT if i % 2 == 0 else signal.SIGKILL
        proc = _start(recipe, out)
        time.sleep(rng.uniform(0.2, duration * 0.95))
        proc.send_signal(sig)
        proc.wait(timeout=120)
        runs = [p for p in out.glob("*") if p.is_dir() and not p.name.startswith(".")] if out.exists() else []
        assert len(runs) <= 1
        assert not any((p / "report.json").exists() and json.loads((p / "run.json").read_text())["status"] != "done"
                       for p in runs), "a killed run must not look complete"
        if runs:
            status = json.loads((runs[0] / "run.json").read_text())["status"]
            result = cli("run", "--resume", runs[0], "--json")
            outcomes.append(status)
        else:  # killed before the run folder existed: nothing to resume, run again
            result = cli("run", recipe, "--out", out, "--json")
            outcomes.append("no folder")
        assert result.returncode == 0, result.stderr
        assert _summary(json.loads(result.stdout)) == expected, f"kill {i} ({sig.name})"
    assert len(outcomes) == 20
