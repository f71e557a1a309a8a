"""`compress build --ray`: the build runs as a Ray task on the node with the target's resource, on a real local
Ray cluster (tests/ray_cluster.py: the worker node offers `jetson_orin_nano`, the head does not). On the worker
the real `compress.build.build` is replaced by tests/tensorrt_standin_build.py, a STAND-IN that builds with the
RecordingTensorRT stand-in (no TensorRT here): what is tested is the dispatch (placement, the content-addressed
store, files in and out, the atomic copy back), not TensorRT."""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from ftp_server import ftp_server
from ray_cluster import ray_cluster_fixture  # noqa: F401 (the fixture)

from conftest import cli

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("ray", path=str(Path(sys.executable).parent)) is None,
                                                   reason="Ray is not installed (compress[ray])")]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_folder(tmp: Path) -> Path:
    """A finished run folder for a TensorRT target, as `compress run` leaves it (the parts `build` reads)."""
    from test_tensorrt_engine import qdq_model

    project, run = tmp / "project", tmp / "run"
    (project / "data").mkdir(parents=True)
    (project / "metrics").mkdir()
    (project / "metrics" / "score.py").write_text("def score(outputs, targets):\n    return {'score': 1.0}\n")
    rng = np.random.default_rng(0)
    np.savez(project / "data" / "eval.npz", x=rng.standard_normal((8, 3, 8, 8)).astype(np.float32))
    compiled = run / "stages" / "03-compile"
    compiled.mkdir(parents=True)
    onnx.save(qdq_model(), str(compiled / "model.onnx"))
    (compiled / "build.json").write_text(json.dumps({"target": "jetson-orin-nano"}))
    (run / "report.json").write_text(json.dumps({"final_artifact": {"type": "TensorRTQDQModel",
                                                                    "path": "stages/03-compile/model.onnx"}}))
    (run / "run.json").write_text(json.dumps({"base_dir": str(project)}))
    (run / "recipe.yaml").write_text(yaml.safe_dump({"model": {"path": "missing.onnx"},
                                                     "data": {"calibration": {"path": "data/eval.npz"},
                                                              "eval": {"path": "data/eval.npz"}},
                                                     "metric": {"function": "metrics/score.py:score"}}))
    return run


@pytest.mark.parametrize("store_kind", ["folder", "fsspec-url"])
def test_build_runs_on_the_node_with_the_resource_and_comes_back_intact(tmp, ray_cluster, monkeypatch, store_kind):
    import ray
    import ray.cloudpickle
    import tensorrt_standin_build
    import test_tensorrt_engine

    from compress.dispatch import dispatch_build

    monkeypatch.setenv("HOME", str(tmp))   # as the cluster's nodes (see ray_cluster)
    for module in (tensorrt_standin_build, test_tensorrt_engine):   # the worker cannot import tests/: by value
        ray.cloudpickle.register_pickle_by_value(module)
    run = run_folder(tmp)
    with contextlib.ExitStack() as stack:
        if store_kind == "folder":
            store = tmp / "store"
            location = str(store)
        else:   # the files go through a remote file system the nodes reach by URL (FTP on loopback, via fsspec)
            store = tmp / "served" / "store"
            location = stack.enter_context(ftp_server(tmp / "served")) + "/store"
        try:
            result = dispatch_build(run, target_name=None, address=ray_cluster, store=location, runs=7,
                                    log=lambda _: None, build_fn=tensorrt_standin_build.standin_build)
            [device] = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("jetson_orin_nano")]
        finally:
            ray.shutdown()
            for module in (tensorrt_standin_build, test_tensorrt_engine):
                ray.cloudpickle.unregister_pickle_by_value(module)
    assert result["ray_node"] == device and result["standin"] == "RecordingTensorRT"
    assert result["target"] == "jetson-orin-nano" and result["runs"] == 7   # the run's build.json named it
    # what the worker read arrived intact: the QDQ model and the eval data the recipe names, byte for byte
    onnx_path, eval_path = run / "stages" / "03-compile" / "model.onnx", tmp / "project" / "data" / "eval.npz"
    assert result["onnx_sha256"] == sha(onnx_path) and result["eval_sha256"] == sha(eval_path)
    assert result["eval_path"] != str(eval_path) and result["eval_path"].endswith("/eval.npz")  # the worker's copy
    metric_path = tmp / "project" / "metrics" / "score.py"   # and every other file the recipe names (one table)
    assert result["metric_sha256"] == sha(metric_path) and result["metric_path"] != str(metric_path)
    # the engine folder is back in the run, each file content-addressed in the store under its digest
    folder = run / "engines" / "jetson-orin-nano"
    assert result["folder"] == str(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["build-report.json", "manifest.json", "model.engine"]
    assert (folder / "model.engine").read_bytes() == b"SERIALIZED-ENGINE"      # the stand-in's engine bytes
    for name, digest in result["files"].items():
        assert sha(folder / name) == digest and sha(store / "sha256" / digest) == digest
    for path in (onnx_path, eval_path, metric_path):
        assert (store / "sha256" / sha(path)).is_file()
    assert json.loads((folder / "manifest.json").read_text())["onnx_sha256"] == sha(onnx_path)
    assert [p.name for p in (run / "engines").iterdir()] == ["jetson-orin-nano"]   # no temp folder left


def test_a_missing_resource_or_tensorrt_is_a_clear_error(tmp, ray_cluster, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp))
    run = run_folder(tmp)
    started = time.perf_counter()
    result = cli("build", run, "--target", "jetson-agx-orin", "--ray", ray_cluster, "--store", tmp / "store",
                 timeout=120)
    assert result.returncode == 2, result.stderr
    assert "no node of the Ray cluster has jetson_agx_orin: 1" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and time.perf_counter() - started < 60
    assert not (run / "engines").exists()
    result = cli("build", run, "--target", "x86-nvidia-tensorrt", "--ray", ray_cluster, "--store", tmp / "store")
    assert result.returncode == 2 and "target x86-nvidia-tensorrt names no Ray resource" in result.stderr, result.stderr
    # the node exists, but has no TensorRT: the real build's own error comes back from the worker, as exit 2
    result = cli("build", run, "--ray", ray_cluster, "--store", tmp / "store", timeout=300)
    assert result.returncode == 2, result.stderr
    assert "on the Ray node for jetson-orin-nano: compress build: TensorRT is not installed here" in result.stderr
    assert "Traceback" not in result.stderr and not (run / "engines" / "jetson-orin-nano").exists()
