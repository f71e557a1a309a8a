"""`compress sweep --executor ray` against a real Ray cluster on 127.0.0.1: a head node and one worker
node that offers the custom resource `jetson_orin` (standing in for a Jetson), both started with
`ray start` for this module and stopped after it (only the processes of this cluster: every one of
them runs under this module's own --temp-dir). Bounded in time; nothing is left running."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from conftest import ROOT, cli, fashion_recipe

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("ray", path=str(Path(sys.executable).parent)) is None,
                                                   reason="Ray is not installed (compress[ray])")]

STAGES = [{"type": "quantize", "backend": "openvino", "method": "minmax"}, {"type": "compile", "target": "x86-cpu-openvino"}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster_processes(temp: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(temp) in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _stop(temp: Path) -> None:
    """Stop this cluster's processes by pid (`ray stop` would stop every Ray cluster of this machine)."""
    procs = _cluster_processes(temp)
    for proc in procs:
        proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=15)
    for proc in alive:
        proc.kill()
    psutil.wait_procs(alive, timeout=10)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = str(Path(sys.executable).parent / "ray")
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))   # short: Ray's socket paths must stay < 108 chars
    port = _free_port()
    # HOME: Ray keeps an auth token in ~/.ray; a token another cluster left there must not reach this one
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", HOME=str(temp))
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", f"--temp-dir={temp}", "--disable-usage-stats"]
    try:
        for args in (["--head", f"--port={port}", "--include-dashboard=false"],
                     [f"--address=127.0.0.1:{port}", '--resources={"jetson_orin": 1}']):
            started = subprocess.run([ray, "start", *args, *common], capture_output=True, text=True, timeout=180, env=env)
            assert started.returncode == 0, f"ray start {args[0]} failed:\n{started.stdout[-2000:]}\n{started.stderr[-2000:]}"
        yield f"127.0.0.1:{port}"
    finally:
        _stop(temp)
        left = [p for p in _cluster_processes(temp) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"Ray processes left running: {[p.pid for p in left]}"


def _target(folder: Path, name: str, resources: dict) -> str:
    spec = yaml.safe_load((ROOT / "targets" / "x86-cpu-openvino.yaml").read_text())
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**spec, "name": name, "resources": resources}))
    return str(path)


def test_points_run_as_ray_tasks_with_their_resources(tmp, ray_cluster, monkeypatch):
    log = tmp / "pids.txt"
    killer = {"source": "python", "factory": f"{ROOT}/tests/data/killed_model.py:KilledWhileLoading",
              "kwargs": {"log": str(log)}, "input": {"shape": [1, 1, 28, 28]}}
    spec = tmp / "sweep.yaml"
    base = fashion_recipe(STAGES, latency={"threads": 1, "warmup": 2, "runs": 5})   # one CPU per point (the default)
    spec.write_text(yaml.safe_dump({"name": "r", "base": base, "axes": {
        "target": ["x86-cpu-openvino", _target(tmp, "orin-box", {"jetson_orin": 1}), _target(tmp, "npu-box", {"npu_x": 1})],
        "model": [base["model"], killer]}}, sort_keys=False))
    monkeypatch.setenv("HOME", str(tmp))   # as the cluster's nodes (see ray_cluster)
    result = cli("sweep", spec, "--out", tmp / "sweeps", "--executor", "ray", "--address", ray_cluster, timeout=900)
    assert result.returncode == 0, result.stderr
    points = json.loads((tmp / "sweeps" / "r" / "sweep.json").read_text())["points"]
    cpu, cpu_killed, orin, orin_killed, npu, npu_killed = points
    assert cpu["status"] == "done" and orin["status"] == "done", (cpu, orin)
    # orin-box's points hold the worker node's jetson_orin (its target's resources); the others do not
    assert orin["ray_resources"].get("jetson_orin") == 1 and "jetson_orin" not in cpu["ray_resources"]
    for point in (npu, npu_killed):   # no node has the resource: failed before submitting, the rest finished
        assert point["status"] == "failed" and "no node of the Ray cluster has npu_x: 1" in point["error"]
    for point in (cpu_killed, orin_killed):   # the worker died: retried once (max_retries=1), then recorded
        assert point["status"] == "failed" and "retried once" in point["error"], point
    assert len(log.read_text().split()) == 4   # two points, two attempts each


def test_unreachable_address_is_a_clear_error_within_the_timeout(tmp):
    spec = tmp / "sweep.yaml"
    spec.write_text(yaml.safe_dump({"name": "u", "base": fashion_recipe(STAGES), "axes": {"stages[0].method": ["minmax"]}}))
    started = time.perf_counter()
    result = cli("sweep", spec, "--out", tmp, "--executor", "ray", "--address", f"127.0.0.1:{_free_port()}",
                 "--connect-timeout", "3", timeout=120)
    assert result.returncode == 2 and "cannot reach the Ray cluster at 127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr and time.perf_counter() - started < 60
