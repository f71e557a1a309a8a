"""`compress sweep --executor ray` against a real Ray cluster on 127.0.0.1 (tests/ray_cluster.py: a head node
and one worker node offering custom resources that stand in for a Jetson). Bounded in time; nothing is left
running."""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest
import yaml
from ray_cluster import free_port, ray_cluster_fixture  # noqa: F401 (the fixture)

from conftest import ROOT, cli, fashion_recipe

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("ray", path=str(Path(sys.executable).parent)) is None,
                                                   reason="Ray is not installed (compress[ray])")]

STAGES = [{"type": "quantize", "backend": "openvino", "method": "minmax"}, {"type": "compile", "target": "x86-cpu-openvino"}]


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
    result = cli("sweep", spec, "--out", tmp, "--executor", "ray", "--address", f"127.0.0.1:{free_port()}",
                 "--connect-timeout", "3", timeout=120)
    assert result.returncode == 2 and "cannot reach the Ray cluster at 127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr and time.perf_counter() - started < 60
