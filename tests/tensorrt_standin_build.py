"""STAND-IN for `compress.build.build`, for the Ray dispatch test only: it runs on the Ray worker in place of
the real build, builds with `RecordingTensorRT` (the RECORDING STAND-IN for the `tensorrt` module, see
tests/test_tensorrt_engine.py) and writes the engine folder the real build writes (model.engine, manifest.json,
build-report.json). Its "engine" is the stand-in's bytes, b"SERIALIZED-ENGINE"; it measures no accuracy or latency.

It cannot be used by accident in production: it lives in tests/ (not in the `compress` package, not shipped
to Ray workers), and the only way in is the `build_fn=` keyword of `compress.dispatch.dispatch_build`, which
the CLI never passes; the test ships it to the worker by value (cloudpickle.register_pickle_by_value).
Its build-report says `"standin": "RecordingTensorRT"`.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml
from test_tensorrt_engine import RecordingTensorRT  # shipped by value with this module (see the test)


def standin_build(source, *, target_name, runs, log):
    import onnx

    from compress.build import locate
    from compress.cache import file_digest
    from compress.fsutil import atomic_dir
    from compress.tensorrt.engine import build_engine, derive_profile, device_facts, write_manifest
    from compress.tensorrt.rules import dynamic_axes

    run_dir, onnx_path, plan = locate(Path(source))
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    base = Path(json.loads((run_dir / "run.json").read_text())["base_dir"])   # where the worker's copies lie
    eval_data = base / recipe["data"]["eval"]["path"]     # rewritten by the dispatch to the worker's copy
    metric_file = base / recipe["metric"]["function"].rpartition(":")[0]
    trt = RecordingTensorRT.v10()
    profile = derive_profile(dynamic_axes(onnx.load(str(onnx_path))), batch=1, max_batch=4)
    folder = run_dir / "engines" / target_name
    folder.parent.mkdir(exist_ok=True)
    result = {"target": target_name, "standin": "RecordingTensorRT", "plan": plan, "runs": runs,
              "onnx_sha256": file_digest(onnx_path), "eval_path": str(eval_data), "eval_sha256": file_digest(eval_data),
              "metric_path": str(metric_file), "metric_sha256": file_digest(metric_file)}
    with atomic_dir(folder) as tmp:
        result["int8"] = build_engine(trt, onnx_path, tmp / "model.engine", profile=profile, workspace_mb=64,
                                      timing_cache_path=folder.parent / f"{target_name}.timing.cache", log=log)
        write_manifest(tmp / "manifest.json", facts=device_facts(trt), onnx_sha256=result["onnx_sha256"],
                       profile=profile, precision="int8", dla_core=None, gates=[], build=result["int8"])
        (tmp / "build-report.json").write_text(json.dumps(result, indent=2, default=str))
    result["folder"] = str(folder)
    return result
