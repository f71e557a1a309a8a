"""`compress sweep` with the local executor: axes validated against the base recipe, points sharing
the stage cache, failed points recorded, Ctrl-C then --resume, the Pareto report, and the recommended
recipe reproducing its point when run alone."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from compress.errors import InputError, RecipeError
from compress.executors import connect, worker_count
from compress.sweep import load_sweep
from compress.sweep_report import pareto, rebase, recommend

from conftest import ROOT, cli, fashion_recipe

STAGES = [{"type": "quantize", "backend": "openvino", "method": "minmax"}, {"type": "compile", "target": "x86-cpu-openvino"}]


def write_sweep(folder: Path, axes: dict, base: dict | None = None, **extra) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "base": base or fashion_recipe(STAGES), "axes": axes, **extra},
                                   sort_keys=False))
    return path


# ---------------------------------------------------------------- fast: the sweep file, the report's logic
def test_axis_path_that_does_not_exist_names_the_closest_valid_one(tmp):
    for wrong, closest in (("stages[0].methd", "stages[0].method"), ("stages[2].method", "stages[0].method"),
                           ("gates.max_acuracy_drop", "gates.max_accuracy_drop")):
        with pytest.raises(RecipeError) as info:
            load_sweep(write_sweep(tmp, {wrong: [1, 2]}))
        assert f"'{wrong}' is not a path in the base recipe" in str(info.value)
        assert f"closest valid path is {closest}" in str(info.value)
    with pytest.raises(RecipeError, match="not a path like"):
        load_sweep(write_sweep(tmp, {"stages[0]..method": [1]}))


def test_axes_expand_to_points_target_shorthand_and_zipped_paths(tmp):
    sweep = load_sweep(write_sweep(tmp, {
        "stages[0].method": ["minmax", "entropy"],
        "stages[0].backend, target": [["openvino", "x86-cpu-openvino"], ["onnxruntime", "x86-cpu-onnxruntime"]]}))
    points = sweep.points()
    assert len(points) == 4
    assert points[3].overrides == {"stages[0].method": "entropy", "stages[0].backend": "onnxruntime",
                                   "stages[1].target": "x86-cpu-onnxruntime"}
    assert points[3].recipe["stages"][1]["target"] == "x86-cpu-onnxruntime" and points[3].error is None
    assert "entropy" in points[2].error and points[1].error is None   # NNCF has no entropy: that point fails
    assert len({p.key for p in points}) == 4
    target = load_sweep(write_sweep(tmp, {"target": ["x86-cpu-openvino"]})).axes[0]
    assert target.paths == ["stages[1].target"]


def test_a_targets_resources_go_with_its_points(tmp):
    device = tmp / "orin-box.yaml"
    spec = yaml.safe_load((ROOT / "targets" / "x86-cpu-openvino.yaml").read_text())
    device.write_text(yaml.safe_dump({**spec, "name": "orin-box", "resources": {"jetson_orin": 1}}))
    points = load_sweep(write_sweep(tmp, {"target": ["x86-cpu-openvino", str(device)]},
                                    resources={"num_cpus": 1})).points()
    assert points[0].resources == {"num_cpus": 1, "resources": {}}
    assert points[1].resources == {"num_cpus": 1, "resources": {"jetson_orin": 1}}


def test_pareto_front_and_recommendation():
    def rec(key, value, p50, size, passed=True):
        return {"key": key, "value": value, "p50_ms": p50, "size_mb": size, "passed": passed, "status": "done"}

    records = [rec("a", 92.0, 1.0, 1.0), rec("b", 91.0, 0.5, 1.0), rec("c", 90.0, 0.6, 1.0),   # c: b dominates
               rec("d", 89.0, 0.2, 2.0, passed=False), rec("e", 92.0, 1.0, 0.5)]                # e dominates a
    assert sorted(r["key"] for r in pareto(records)) == ["b", "d", "e"]
    assert recommend(records)["key"] == "b"     # fastest that passed; d is faster but failed its gates
    assert recommend([rec("x", 1, 1, 1, passed=False)]) is None


def test_rebase_keeps_the_recipes_files(tmp):
    base = ROOT / "recipes"
    recipe = yaml.safe_load((base / "quickstart.yaml").read_text())
    moved = rebase(recipe, base, tmp)
    assert (tmp / moved["model"]["weights"]).resolve() == (ROOT / "calibration_data/fashion_cnn.pt").resolve()
    assert (tmp / moved["model"]["factory"].rpartition(":")[0]).resolve().is_file()
    assert moved["stages"] == recipe["stages"]


def test_local_workers_get_disjoint_cores():
    cpus = len(os.sched_getaffinity(0))
    workers, sets = worker_count(threads=1, jobs=100)
    assert workers == cpus and sorted(c for s in sets for c in s) == sorted(os.sched_getaffinity(0))
    workers, sets = worker_count(threads=cpus, jobs=100)
    assert workers == 1
    assert worker_count(threads=1, jobs=1)[0] == 1


def test_ray_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(InputError, match=r"compress\[ray\]"):
        connect("auto")


def test_unreachable_ray_address_fails_within_the_timeout():
    import socket

    with socket.socket() as s:   # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.perf_counter()
    with pytest.raises(InputError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        connect(f"127.0.0.1:{port}", timeout=2)
    assert time.perf_counter() - started < 10
    with pytest.raises(InputError, match="is not host:port"):
        connect("nonsense", timeout=1)


# ---------------------------------------------------------------- slow: real sweeps
@pytest.mark.slow
def test_sweep_shares_the_cache_records_failures_and_recommends_a_reproducible_recipe(tmp):
    import compress

    # 4 points: entropy is not an NNCF method (2 failed points); the gate axis changes no stage, so the
    # second minmax point takes both stages from the first one's cache; min_speedup 1000 fails its gate.
    spec = write_sweep(tmp, {"stages[0].method": ["minmax", "entropy"], "gates.min_speedup": [1.01, 1000]})
    result = cli("sweep", spec, "--out", tmp / "sweeps")
    assert result.returncode == 0, result.stderr
    assert "[4/4]" in result.stderr and "failed" in result.stderr
    folder = tmp / "sweeps" / "t"
    report = json.loads((folder / "sweep.json").read_text())
    assert report["counts"] == {"done": 2, "failed": 2, "not run": 0}
    points = {p["index"]: p for p in report["points"]}
    assert all("entropy" in points[i]["error"] and points[i]["exit_code"] == 2 for i in (2, 3))
    assert points[0]["passed"] and not points[1]["passed"]
    assert points[0]["cached"] == [] and points[1]["cached"] == ["quantize", "compile"]   # one cache for all points
    assert report["recommended"] == points[0]["key"] and report["pareto"]["x86-cpu-openvino"]
    page = (folder / "sweep.html").read_text()
    assert page.count("<svg") == 2 and "src=" not in page      # both plots inlined, nothing linked
    assert "| 0 | method=minmax, min_speedup=1.01 |" in (folder / "sweep.md").read_text()

    again = cli("sweep", spec, "--out", tmp / "sweeps")   # the folder holds a sweep: --resume, or elsewhere
    assert again.returncode == 2 and "--resume" in again.stderr

    # the recommendation, alone, in a fresh folder (no cache): the same stages, and its gates pass
    alone = compress.run(folder / "recommended.yaml", out=tmp / "alone", cache=False)
    assert alone.passed
    assert [s["config"] for s in alone.stages] == [s["config"] for s in points[0]["stages"]]
    gates = alone.report["recipe"]["gates"]
    assert gates["min_speedup"] == 1.01 and gates["max_accuracy_drop"] is None and gates["max_size_mb"] is None


@pytest.mark.slow
def test_ctrl_c_stops_the_sweep_and_resume_skips_finished_points(tmp):
    spec = write_sweep(tmp, {"stages[0].method": ["minmax", "percentile"], "gates.min_speedup": [1.01, 1.02]})
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "compress.cli", "sweep", str(spec), "--out", str(tmp / "sweeps")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    points = tmp / "sweeps" / "t" / "points"
    deadline = time.time() + 300
    while not list(points.glob("*.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:   # say where it stood (once seen in a full CI run, not reproduced since)
        proc.kill()
        _, stderr = proc.communicate()
        pytest.fail(f"the sweep did not stop within 60 s of Ctrl-C; its stderr:\n{stderr[-3000:]}")
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr
    finished = len(list(points.glob("*.json")))
    assert 1 <= finished < 4
    resumed = cli("sweep", spec, "--out", tmp / "sweeps", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads((tmp / "sweeps" / "t" / "sweep.json").read_text())
    assert report["counts"]["done"] == 4 and report["ran_now"] == 4 - finished


@pytest.mark.slow
def test_a_killed_worker_is_tried_once_more_then_recorded(tmp):
    log = tmp / "pids.txt"
    killer = {"source": "python", "factory": f"{ROOT}/tests/data/killed_model.py:KilledWhileLoading",
              "kwargs": {"log": str(log)}, "input": {"shape": [1, 1, 28, 28]}}
    spec = write_sweep(tmp, {"model": [fashion_recipe(STAGES)["model"], killer]})
    result = cli("sweep", spec, "--out", tmp / "sweeps")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp / "sweeps" / "t" / "sweep.json").read_text())
    killed = report["points"][1]
    assert killed["status"] == "failed" and "worker process died" in killed["error"] and "tried 2 time" in killed["error"]
    assert len(log.read_text().split()) == 2        # two attempts, two processes
    assert report["points"][0]["status"] == "done"


@pytest.mark.slow
def test_ctrl_c_stops_the_pool_and_multiprocessing_sees_its_workers_gone(monkeypatch):
    """What the sweep's Ctrl-C does to its local pool: workers busy, the call queue full. Each worker must be
    dead *to multiprocessing* afterwards; one reaped behind its back (psutil did that) stays "alive" to it, and
    Python 3.11's executor then spins in shutdown_workers forever, so the sweep never exits."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import psutil

    from compress.executors import _stop_pool

    waited = []   # psutil reaps children it waits for: whether it wins the race with the executor is chance
    real_wait = psutil.wait_procs
    monkeypatch.setattr(psutil, "wait_procs", lambda procs, **kw: (waited.extend(p.pid for p in procs),
                                                                    real_wait(procs, **kw))[1])
    pool = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"))
    futures = [pool.submit(time.sleep, 60) for _ in range(6)]
    deadline = time.time() + 60
    while sum(f.running() for f in futures) < 3 and time.time() < deadline:   # 2 sleeping, the queue filled
        time.sleep(0.05)
    time.sleep(2)   # the workers have started their sleeps
    workers = list(pool._processes.values())
    assert len(workers) == 2
    _stop_pool(pool)
    assert not {w.pid for w in workers} & set(waited), "pool workers must be joined by multiprocessing, not psutil"
    assert not any(w.is_alive() for w in workers)
    manager = pool._executor_manager_thread
    if manager is not None:
        manager.join(30)
        assert not manager.is_alive(), "the executor's manager thread is stuck"
