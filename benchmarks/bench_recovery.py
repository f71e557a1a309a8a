"""Accuracy recovery: plain INT8 vs `accuracy_control` on torchvision mobilenet_v2 and mobilenet_v3_small.

Seeded random weights with BatchNorm statistics re-estimated (benchmarks/torchvision_bn.py: no download),
real images (the shipped Fashion-MNIST PNGs, resized to 224 RGB), top-1 agreement with FP32 as the metric.
One run per model and runtime (OpenVINO: NNCF's quantize_with_accuracy_control; ONNX Runtime: greedy
nodes_to_exclude from the sensitivity ranking). Prints FP32 / plain INT8 / recovered agreement on the ranking
samples, the layers kept in float (with their PyTorch modules), and the p50 latencies.

    .venv/bin/python benchmarks/bench_recovery.py [--models mobilenet_v2 mobilenet_v3_small] [--eval 100]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import compress  # noqa: E402
from compress.validation import machine_info  # noqa: E402


def recipe(name: str, runtime: str, samples: int, budget: int) -> dict:
    stages = [{"type": "quantize", "backend": runtime,
               "accuracy_control": {"max_drop": 1.0, "max_fallback_layers": budget, "metric": "top1_agreement",
                                    "samples": samples}}]
    if runtime == "onnxruntime":
        stages.insert(0, {"type": "export"})
        stages[-1]["scheme"] = "u8s8"
    return {
        "name": f"recovery-{name}-{runtime}",
        "model": {"source": "python", "factory": str(ROOT / "benchmarks" / "torchvision_bn.py") + ":bn_recalibrated",
                  "kwargs": {"name": name}, "input": {"shape": [1, 3, 224, 224]}},
        "data": {"calibration": {"path": str(ROOT / "calibration_data" / "fashion_png"), "samples": 100},
                 "eval": {"path": str(ROOT / "calibration_data" / "fashion_png"), "samples": samples},
                 "transform": {"resize": 224, "center_crop": 224, "mean": [0.485, 0.456, 0.406],
                               "std": [0.229, 0.224, 0.225]}, "batch_size": 16},
        "metric": {"primary": "top1_agreement"},
        "stages": stages,
        "latency": {"warmup": 5, "runs": 30},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2", "mobilenet_v3_small"])
    parser.add_argument("--runtimes", nargs="+", default=["openvino", "onnxruntime"])
    parser.add_argument("--eval", type=int, default=100, help="eval images (ranking and the drop check)")
    parser.add_argument("--budget", type=int, default=6)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="compress-recovery-"))
    info = machine_info()
    print(f"machine: {info.get('cpu')}, ISA {info.get('isa')}")
    for name in args.models:
        for runtime in args.runtimes:
            result = compress.run(recipe(name, runtime, args.eval, args.budget), out=work)
            stage = result.stages[-1]
            fb = stage["details"]["fallback"]
            lat = fb["latency_ms"]
            kept = ", ".join(f"{s['node']} ({s['module']})" for s in fb["steps"] if s.get("kept", True)) or "none"
            print(f"{name} on {runtime}: top-1 agreement FP32 {fb['baseline']:.1f}, plain INT8 {fb['plain_int8']:.1f}, "
                  f"with fallback {fb['metric_after']:.1f} ({'met' if fb['met'] else 'not met'}, max drop "
                  f"{fb['max_drop']}); kept in float: {kept}; p50 ms FP32 {lat['fp32']:.2f}, plain INT8 "
                  f"{lat['plain_int8']:.2f}, final {stage['latency']['p50_ms']:.2f}")


if __name__ == "__main__":
    main()
