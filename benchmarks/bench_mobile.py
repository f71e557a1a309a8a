"""Mobile artifacts side by side, in one process, as ratios: FP32 .pte, INT8 .pte (ExecuTorch,
XNNPACK) and INT8 .ort (ONNX Runtime Mobile, converted for amd64 so x86 runs its fast kernels;
the arm build is what ships) plus ONNX Runtime FP32 .onnx for scale. Every artifact is made by
compress's own recipes and run by its real runtime on this CPU (not a phone), batch 1, pinned
threads, interleaved rounds (median of per-round p50s). Accuracy: agreement with torch FP32 on
real images (Fashion-MNIST product photos at 224 px; seeded random-init networks with BatchNorm
statistics re-estimated so activations are O(1) as in a trained network; nothing is downloaded).

    .venv/bin/python benchmarks/bench_mobile.py [--models resnet18 mobilenet_v2] [--threads 2] [--rounds 5]

Targets (issue #18): INT8 .pte of resnet18 >= 2x its FP32 .pte, agreement >= 99%; mobilenet_v2
through both mobile paths, its figures reported, including where INT8 is not faster.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import compress  # noqa: E402
from compress.runtimes import open_session  # noqa: E402
from compress.validation import Agreement, latency_feeds, machine_info, measure_latency  # noqa: E402


def recipe(model: str, stages: list[dict], threads: int) -> dict:
    return {
        "name": f"bench-mobile-{model}",
        "model": {"source": "python", "factory": str(ROOT / "benchmarks" / "torchvision_bn.py") + ":bn_recalibrated",
                  "kwargs": {"name": model}, "input": {"shape": [1, 3, 224, 224]}},
        "data": {"calibration": {"path": str(ROOT / "calibration_data/fashion_png"), "samples": 64},
                 "eval": {"path": str(ROOT / "calibration_data/fashion_png"), "samples": 50},
                 "transform": {"resize": 224, "center_crop": 224, "mean": [0.485, 0.456, 0.406],
                               "std": [0.229, 0.224, 0.225]},
                 "batch_size": 8},
        "metric": {"primary": "cosine"},
        "stages": stages,
        "latency": {"threads": threads, "warmup": 2, "runs": 3},
    }


def artifacts(model: str, threads: int, out: Path) -> dict:
    """Each variant as compress makes it: the last stage's artifact of a small recipe."""
    from compress.artifacts import ARTIFACT_TYPES

    def final(stages, state=None):
        result = compress.run(recipe(model, stages, threads), out=out)
        info = result.stages[-1]["artifact"]
        return ARTIFACT_TYPES[info["type"]](path=result.run_dir / info["path"], precision=info["precision"])

    amd64 = out / "android-amd64-ort.yaml"
    amd64.write_text((ROOT / "targets" / "android-arm64-ort.yaml").read_text()
                     .replace("name: android-arm64-ort", "name: android-amd64-ort").replace("platform: arm",
                                                                                          "platform: amd64"))
    return {
        "ort fp32 .onnx": final([{"type": "export"}]),
        "pte fp32": final([{"type": "export", "format": "executorch"}]),
        "pte int8": final([{"type": "quantize", "backend": "executorch"}]),
        "ort int8 .ort (amd64)": final([{"type": "export"}, {"type": "quantize", "backend": "onnxruntime",
                                                               "scheme": "s8s8"},
                                        {"type": "compile", "target": str(amd64)}]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    machine = machine_info()
    print(f"machine: {machine['cpu']}; ISA {', '.join(machine['isa'])}; {args.threads} threads, batch 1")
    results = {}
    for model in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            made = artifacts(model, args.threads, Path(tmp))
            parsed, base = compress.load(recipe(model, [{"type": "export"}], args.threads))
            from compress.inputs import open_inputs

            inputs = open_inputs(parsed, base)
            feeds = latency_feeds(inputs.eval, 1)
            reference = open_session(inputs.reference, threads=args.threads)
            batches = list(inputs.eval.input_batches(8))
            want = [reference.run(b)[0] for b in batches]
            sessions = {name: open_session(a, threads=args.threads) for name, a in made.items()}
            agree = {}
            for name, session in sessions.items():
                a = Agreement()
                for batch, ref in zip(batches, want):
                    a.update(session.run(batch)[0], ref)
                agree[name] = a.result()
            p50s = {name: [] for name in sessions}
            for _ in range(args.rounds):
                for name, session in sessions.items():
                    p50s[name].append(measure_latency(session, feeds, warmup=3, runs=20)["p50_ms"])
            p50 = {name: statistics.median(v) for name, v in p50s.items()}
            sizes = {name: round(a.size_bytes() / 1e6, 2) for name, a in made.items()}
            print(f"\n{model}")
            for name in sessions:
                print(f"  {name:24s} p50 {p50[name]:8.3f} ms  size {sizes[name]:7.2f} MB  "
                      f"top-1 agreement {agree[name].get('top1_agreement', float('nan')):6.2f}%  "
                      f"cosine {agree[name]['cosine']:.4f}")
            ratio = p50["pte fp32"] / p50["pte int8"]
            print(f"  INT8 .pte vs FP32 .pte: {ratio:.2f}x"
                  + ("" if ratio > 1 else "  <- INT8 is NOT faster here"))
            print(f"  INT8 .ort vs FP32 .pte: {p50['pte fp32'] / p50['ort int8 .ort (amd64)']:.2f}x;  "
                  f"ORT FP32 .onnx vs FP32 .pte: {p50['pte fp32'] / p50['ort fp32 .onnx']:.2f}x")
            results[model] = {"p50_ms": p50, "size_mb": sizes, "agreement": agree, "int8_vs_fp32_pte": ratio}
    print("\n" + json.dumps({"machine": {k: machine[k] for k in ("cpu", "isa")}, "results": results}, default=str))


if __name__ == "__main__":
    main()
