"""A real Ray cluster on 127.0.0.1 for the tests that use Ray: a head node and one worker node that offers the
custom resources `jetson_orin` and `jetson_orin_nano` (standing in for a Jetson), both started with `ray start`
for the test module and stopped after it (only the processes of this cluster: every one of them runs under the
module's own --temp-dir; `ray start` would stop every cluster of the machine). Bounded in time."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

WORKER_RESOURCES = {"jetson_orin": 1, "jetson_orin_nano": 1}


def free_port() -> int:
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


@pytest.fixture(scope="module", name="ray_cluster")
def ray_cluster_fixture():
    """The cluster's GCS address (host:port)."""
    ray = str(Path(sys.executable).parent / "ray")
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))   # short: Ray's socket paths must stay < 108 chars
    port = free_port()
    # HOME: Ray keeps an auth token in ~/.ray; a token another cluster left there must not reach this one
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", HOME=str(temp))
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", f"--temp-dir={temp}", "--disable-usage-stats"]
    try:
        for args in (["--head", f"--port={port}", "--include-dashboard=false"],
                     [f"--address=127.0.0.1:{port}", f"--resources={json.dumps(WORKER_RESOURCES)}"]):
            started = subprocess.run([ray, "start", *args, *common], capture_output=True, text=True, timeout=180, env=env)
            assert started.returncode == 0, f"ray start {args[0]} failed:\n{started.stdout[-2000:]}\n{started.stderr[-2000:]}"
        yield f"127.0.0.1:{port}"
    finally:
        _stop(temp)
        left = [p for p in _cluster_processes(temp) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"Ray processes left running: {[p.pid for p in left]}"


