"""Does 50% channel pruning make resnet18 faster where it runs? One process, alternating rounds.

Prunes a torchvision resnet18 (seeded random init; nothing is downloaded) with compress's prune
stage at ratio 0.5 (per layer, l1, round_to 8, the fc head kept), then times unpruned vs pruned
FP32 on ONNX Runtime and OpenVINO at batch 1 with pinned threads, interleaved, and prints the
ratios with the machine's ISA. Also reports the Fashion-MNIST accuracy target: the shipped
prune -> quantize recipe's top-1 drop after pruning + fine-tuning (2 epochs over the 60,000
shipped training images) and after INT8, on the shipped 2,000-image eval subset and, when the
Debian package dataset-fashion-mnist is installed, on the full 10,000-image test set; and the same
chain with NNCF's fast bias correction instead of compress's default full one.

    .venv/bin/python benchmarks/bench_prune.py [--threads 2] [--rounds 5] [--skip-fashion] [--seeds 0 1 2]

Targets (issue #4): >= 2x on ORT and OpenVINO at 50% pruning; Fashion-MNIST pruned+fine-tuned
(<= 2 epochs) loses <= 1.0 point, and the whole chain meets a 1.5-point gate.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import compress  # noqa: E402
from compress.artifacts import OnnxModel, OpenVinoModel  # noqa: E402
from compress.runtimes import open_session  # noqa: E402
from compress.validation import machine_info, paired_latency  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-fashion", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="recipe seeds for the Fashion-MNIST runs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="compress-prune-"))
    common = {
        "model": {"source": "torchvision", "name": "resnet18", "input": {"shape": [1, 3, 224, 224]}},
        "data": {"calibration": {"path": str(ROOT / "calibration_data/fashion_png"), "samples": 16},
                 "eval": {"path": str(ROOT / "calibration_data/fashion_png"), "samples": 50},
                 "transform": {"resize": 224, "center_crop": 224, "mean": [0.485, 0.456, 0.406],
                               "std": [0.229, 0.224, 0.225]}, "batch_size": 10},
        "metric": {"primary": "top1_agreement"},
        "latency": {"threads": args.threads, "warmup": 2, "runs": 5},
    }
    prune = {"type": "prune", "ratio": 0.5, "importance": "l1", "round_to": 8}
    ort = compress.run({**common, "name": "prune-ort", "stages": [prune, {"type": "export"}]}, out=work)
    ov = compress.run({**common, "name": "prune-ov",
                       "stages": [prune, {"type": "compile", "target": "x86-cpu-openvino"}]}, out=work)
    pairs = {
        "onnxruntime": (OnnxModel(path=ort.run_dir / "baselines/onnxruntime/fp32.onnx"),
                        OnnxModel(path=ort.run_dir / ort.stages[-1]["artifact"]["path"])),
        "openvino": (OpenVinoModel(path=ov.run_dir / "baselines/openvino/fp32.xml"),
                     OpenVinoModel(path=ov.run_dir / ov.stages[-1]["artifact"]["path"])),
    }
    import numpy as np

    feeds = {"input": np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    machine = machine_info()
    d = ort.stages[0]["details"]
    print(f"\nresnet18, 50% channels per layer: MACs {d['macs_before'] / 1e9:.2f}G -> {d['macs'] / 1e9:.2f}G, "
          f"params {d['params_before'] / 1e6:.1f}M -> {d['params'] / 1e6:.1f}M")
    print(f"batch 1, {args.threads} threads — {machine['cpu']}; ISA {', '.join(machine['isa'])}")
    for runtime, (base, pruned) in pairs.items():
        a = open_session(base, threads=args.threads, static_batch=1, inference_precision="f32")
        b = open_session(pruned, threads=args.threads, static_batch=1, inference_precision="f32")
        ours, theirs = [], []
        for _ in range(args.rounds):
            p, u, _ = paired_latency(lambda b=b: b, lambda a=a: a, feeds, warmup=3, runs=20, min_blocks=2, rounds_per_block=1,
                                     max_seconds=0)
            ours.append(p["p50_ms"])
            theirs.append(u["p50_ms"])
        up, pp = statistics.median(theirs), statistics.median(ours)
        print(f"{runtime:12s} unpruned {up:8.3f} ms  pruned {pp:8.3f} ms  speed-up {up / pp:5.2f}x  "
              f"{'PASS' if up / pp >= 2.0 else 'MISS'} (>= 2x)")
    if not args.skip_fashion:
        _fashion(work, args.seeds)


def _fashion(work: Path, seeds: list[int]) -> None:
    """The shipped prune -> quantize recipe, per seed, on the shipped eval subset and (with the Debian
    package) on the full test set; plus the same chain with NNCF's fast bias correction, for contrast."""
    recipe_path = ROOT / "recipes/prune-quantize-openvino.yaml"
    recipe = yaml.safe_load(recipe_path.read_text())
    test = _full_test_set(work)
    fast = [dict(stage, bias_correction="fast") if stage["type"] == "quantize" else stage for stage in recipe["stages"]]
    for seed in seeds:
        seeded = {**recipe, "seed": seed}
        evals = {"2,000-image eval subset (shipped)": seeded,
                 "2,000-image eval subset, quantize with bias_correction: fast": {**seeded, "stages": fast}}
        if test is not None:   # the same stages (from the stage cache), validated on all 10,000 test images
            evals["full 10,000-image test set (Debian dataset-fashion-mnist)"] = {
                **seeded, "data": {**recipe["data"], "eval": {"path": str(test)}}}
        for label, variant in evals.items():
            result = compress.run(variant, out=work, base_dir=recipe_path.parent)
            ref = result.report["reference"]["primary"]["value"]
            prune_drop = ref - result.stages[0]["primary"]["value"]
            chain_drop = ref - result.stages[-1]["primary"]["value"]
            print(f"\nFashion-MNIST CNN, seed {seed}, 50% channels + "
                  f"{len(result.stages[0]['details'].get('finetune', []))} epoch(s) fine-tune, {label}: top-1 "
                  f"{ref:.2f} -> {result.stages[0]['primary']['value']:.2f} (drop {prune_drop:.2f}; "
                  f"{'PASS' if prune_drop <= 1.0 else 'MISS'} <= 1.0); after INT8 + OpenVINO: "
                  f"{result.stages[-1]['primary']['value']:.2f} (drop {chain_drop:.2f}; "
                  f"{'PASS' if chain_drop <= 1.5 else 'MISS'} <= 1.5)")


def _full_test_set(work: Path) -> Path | None:
    """All 10,000 Fashion-MNIST test images as an .npz file, when the Debian package
    dataset-fashion-mnist is installed."""
    import gzip

    import numpy as np

    folder = Path("/usr/share/datasets/fashion-mnist")
    if not (folder / "t10k-images-idx3-ubyte.gz").is_file():
        return None
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz") as fh:
        images = np.frombuffer(fh.read(), np.uint8, offset=16)
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz") as fh:
        labels = np.frombuffer(fh.read(), np.uint8, offset=8)
    path = work / "fashion_mnist_t10k.npz"
    np.savez(path, x=images.reshape(-1, 1, 28, 28), y=labels.astype(np.int64))
    return path

if __name__ == "__main__":
    main()
