"""Accuracy recovery: plain INT8 vs `accuracy_control` on torchvision mobilenet_v2 and mobilenet_v3_small.

Two cases per architecture, top-1 agreement with FP32 as the metric:
- `trained-<arch>`: torchvision's architecture trained on the shipped Fashion-MNIST data
  (calibration_data/fashion_tv_*.pt, the model resizes 28x28 to 64x64), 2000 eval images;
- `<arch>`: seeded random weights with BatchNorm statistics re-estimated (benchmarks/torchvision_bn.py: no
  download), real images (the shipped Fashion-MNIST PNGs, resized to 224 RGB), `--eval` images.
One run per model and runtime (OpenVINO: NNCF's quantize_with_accuracy_control; ONNX Runtime: greedy
nodes_to_exclude from the sensitivity ranking). Prints FP32 / plain INT8 / recovered agreement on the ranking
samples, the layers kept in float (with their PyTorch modules), the p50 latencies of FP32, plain INT8 and the
final model (timed the same way, one after the other, at `--batch`) and how much of plain INT8's speed-up the
final model keeps.

    .venv/bin/python benchmarks/bench_recovery.py [--models trained-mobilenet_v2 mobilenet_v3_small] [--batches 1 16]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import compress  # noqa: E402
from compress.validation import machine_info  # noqa: E402


def trained_recipe(name: str, runtime: str, budget: int, batch: int) -> dict:
    arch = name.removeprefix("trained-")
    data = ROOT / "calibration_data"
    r = recipe(name, runtime, 2000, budget, batch)
    r["model"] = {"source": "python", "factory": str(ROOT / "recipes/models/fashion_mobile.py") + ":FashionTorchvision",
                  "kwargs": {"arch": arch, "size": 64, "width_mult": 0.5 if arch == "mobilenet_v2" else 1.0},
                  "weights": str(data / f"fashion_tv_{arch}.pt"), "input": {"shape": [1, 1, 28, 28]}}
    r["data"] = {"calibration": {"path": str(data / "fashion_mnist_calib.npz"), "samples": 300},
                 "eval": {"path": str(data / "fashion_mnist_eval.npz")},
                 "transform": {"mean": [0.2860], "std": [0.3530]}, "batch_size": 64}
    return r


def recipe(name: str, runtime: str, samples: int, budget: int, batch: int) -> dict:
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
        "latency": {"warmup": 5, "runs": 30, "batch": batch},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["trained-mobilenet_v2", "trained-mobilenet_v3_small",
                                                         "mobilenet_v2", "mobilenet_v3_small"])
    parser.add_argument("--runtimes", nargs="+", default=["openvino", "onnxruntime"])
    parser.add_argument("--eval", type=int, default=100, help="eval images (ranking and the drop check)")
    parser.add_argument("--budget", type=int, default=6)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="latency batches (timed alike)")
    parser.add_argument("--method", help="calibration method of both quantizations (e.g. auto: calibration chosen "
                        "by evidence first, then the fallback); default: the backend's")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds of FP32, plain INT8, final")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="compress-recovery-"))
    info = machine_info()
    print(f"machine: {info.get('cpu')}, ISA {info.get('isa')}")
    for name in args.models:
        for runtime in args.runtimes:
            r = (trained_recipe(name, runtime, args.budget, args.batches[0]) if name.startswith("trained-")
                 else recipe(name, runtime, args.eval, args.budget, args.batches[0]))
            if args.method:
                r["stages"][-1]["method"] = args.method
            result = compress.run(r, out=work)
            stage = result.stages[-1]
            fb = stage["details"]["fallback"]
            kept = ", ".join(f"{s['node']} ({s['module']})" for s in fb["steps"] if s.get("kept", True)) or "none"
            plain_recipe = dict(r, name=r["name"] + "-plain", stages=[dict(st) for st in r["stages"]])
            plain_recipe["stages"][-1].pop("accuracy_control")
            plain = compress.run(plain_recipe, out=work)
            files = {"fp32": baseline_file(result, runtime), "plain INT8": artifact_file(plain),
                     "final": artifact_file(result)}
            timings = []
            for batch in args.batches:
                p50, gain = interleaved(files, batch, args.rounds)
                share = (f"{100 * (gain['final'] - 1) / (gain['plain INT8'] - 1):.0f}% of the plain INT8 speed-up"
                         if gain["plain INT8"] >= 1.05 else "plain INT8 is not faster")
                timings.append(f"batch {batch}: FP32 {p50['fp32']:.3f}, plain INT8 {p50['plain INT8']:.3f} "
                               f"({gain['plain INT8']:.2f}x), final {p50['final']:.3f} ({gain['final']:.2f}x, {share})")
            print(f"{name} on {runtime}: top-1 agreement FP32 {fb['baseline']:.2f}, plain INT8 {fb['plain_int8']:.2f}, "
                  f"with fallback {fb['metric_after']:.2f} ({'met' if fb['met'] else 'not met'}, max drop "
                  f"{fb['max_drop']}, {fb['samples']} images); kept in float: {kept}; p50 ms, median of "
                  f"{args.rounds} interleaved rounds, {'; '.join(timings)}", flush=True)

def artifact_file(result) -> Path:
    return result.run_dir / result.stages[-1]["artifact"]["path"]


def baseline_file(result, runtime: str) -> Path:
    return result.run_dir / result.report["baselines"][runtime]["artifact"]["path"]


def interleaved(files: dict[str, Path], batch: int, rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """p50 of every file in `rounds` rounds, the files one after the other in each (fresh session each time):
    the median p50 per file, and the median per-round speed-up over the first file."""
    p50: dict[str, list[float]] = {k: [] for k in files}
    for _ in range(rounds):
        for label, path in files.items():
            p50[label].append(compress.bench(path, threads=2, batch=batch, warmup=10, runs=100)["latency"]["p50_ms"])
    first = next(iter(files))
    gains = {k: statistics.median(a / b for a, b in zip(p50[first], v)) for k, v in p50.items()}
    return {k: statistics.median(v) for k, v in p50.items()}, gains


if __name__ == "__main__":
    main()
