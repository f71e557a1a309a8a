"""Does QAT win back what post-training quantization loses? One run per backend.

Runs recipes/qat-openvino.yaml (a width-4 Fashion-MNIST CNN where PTQ loses several points) as
shipped, and the same recipe with `backend: onnxruntime` compiled for ONNX Runtime. Each run
validates the PTQ starting point and the QAT result on the target runtime, so the FP32 -> PTQ ->
QAT numbers come from one report. Prints top-1, the share of the PTQ loss QAT recovers, the
INT8 vs FP32 latency ratio and the machine's ISA.

    .venv/bin/python benchmarks/bench_qat.py [--epochs 1]

Target (issue #5): where PTQ loses more than 1 point top-1, QAT of at most 3 epochs recovers
at least half of the loss.
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import compress  # noqa: E402
from compress.validation import machine_info  # noqa: E402

RECIPE = ROOT / "recipes" / "qat-openvino.yaml"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="compress-qat-"))
    base = yaml.safe_load(RECIPE.read_text())
    base["stages"][0]["finetune"]["epochs"] = args.epochs
    ort = copy.deepcopy(base)
    ort["name"] += "-onnxruntime"
    ort["stages"] = [{**base["stages"][0], "backend": "onnxruntime"},
                     {"type": "compile", "target": "x86-cpu-onnxruntime"}]
    machine = machine_info()
    print(f"{machine['cpu']}; ISA {', '.join(machine['isa'])}")
    for recipe in (base, ort):
        result = compress.run(recipe, out=work, base_dir=RECIPE.parent, cache=False)
        qat = result.stages[0]
        fp32 = result.report["reference"]["primary"]["value"]
        ptq = qat["details"]["checkpoints"]["PTQ start"]["primary"]["value"]
        final = result.stages[-1]
        loss = fp32 - ptq
        recovered = (final["primary"]["value"] - ptq) / loss if loss > 0 else float("nan")
        print(f"{final['runtime']:12s} top-1 FP32 {fp32:.2f} -> PTQ {ptq:.2f} ({-loss:+.2f}) -> QAT "
              f"{final['primary']['value']:.2f} ({final['primary']['delta']:+.2f}) after {args.epochs} epoch(s): "
              f"recovers {recovered:.0%} of the PTQ loss "
              f"({'PASS' if loss > 1 and recovered >= 0.5 else 'MISS'}: PTQ loss > 1 point, >= 50% recovered); "
              f"INT8 {final['speedup']['vs_fp32_same_runtime']:.2f}x vs FP32 on {final['runtime']} "
              f"(QAT stage {qat['duration_s']:.0f} s)")


if __name__ == "__main__":
    main()
