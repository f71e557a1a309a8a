"""Peak memory of calibration on an image folder: 5,000 samples vs 500 (data must stream, not pile up).

Builds a temporary folder of 5,000 distinct PNGs in class subfolders from the shipped Fashion-MNIST
arrays (1,000 calibration + 2,000 eval images, each also flipped left-right), then runs
`compress.run(...)` twice, each in a fresh subprocess: the same recipe (FashionCNN, NNCF static INT8
for OpenVINO) with `samples: 500` and with `samples: 5000`, in `data.calibration` and in the quantize
stage. Evaluation uses a small separate .npz so the runs differ only in calibration. Each child reports
`ru_maxrss` (peak RSS) after its imports and at the end of the run.

    .venv/bin/python benchmarks/bench_memory.py [--model fashion|resnet18] [--small 500] [--large 5000]

Target: peak RSS with 5,000 samples at most 1.15x the peak with 500. Exits 1 above it.
`--model resnet18` (torchvision, input [1, 3, 224, 224], resize 224) is slower: minutes per run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "calibration_data"
TARGET_RATIO = 1.15


def build_image_folder(folder: Path, count: int) -> int:
    """`count` distinct 28x28 PNGs in class subfolders; returns how many were written."""
    from PIL import Image

    xs, ys = [], []
    for name in ("fashion_mnist_calib.npz", "fashion_mnist_eval.npz"):
        with np.load(DATA / name) as f:
            xs.append(f["x"][:, 0])
            ys.append(f["y"])
    x, y = np.concatenate(xs), np.concatenate(ys)
    variants = [("orig", lambda a: a), ("fliplr", np.fliplr), ("rot90", np.rot90), ("flipud", np.flipud)]
    written = 0
    for tag, fn in variants:
        for i in range(len(x)):
            if written == count:
                return written
            sub = folder / f"class{int(y[i])}"
            sub.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(fn(x[i]))).save(sub / f"{i:04d}-{tag}.png")
            written += 1
    return written


def recipe(model: str, images: Path, samples: int, out_eval: Path) -> dict:
    if model == "resnet18":
        spec = {"source": "torchvision", "name": "resnet18", "input": {"shape": [1, 3, 224, 224]}}
        transform = {"resize": 224, "center_crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
        evaluation = {"path": str(DATA / "fashion_png"), "samples": 50}
    else:
        spec = {"source": "python", "factory": str(ROOT / "recipes/models/fashion_cnn.py") + ":FashionCNN",
                "weights": str(DATA / "fashion_cnn.pt"), "input": {"shape": [1, 1, 28, 28]}}
        transform = {"mean": [0.2860], "std": [0.3530]}
        evaluation = {"path": str(out_eval)}
    return {
        "name": f"memory-{model}-{samples}",
        "model": spec,
        "data": {"calibration": {"path": str(images), "samples": samples}, "eval": evaluation,
                 "transform": transform, "batch_size": 32},
        "stages": [{"type": "quantize", "backend": "openvino", "samples": samples}],
        "latency": {"warmup": 1, "runs": 5},
    }


def child(recipe_json: str, out: str) -> None:
    """One run in this (fresh) process; prints one JSON line with peak RSS figures."""
    import nncf  # noqa: F401  (imports first, so the figure after them is the floor)
    import openvino  # noqa: F401
    import torch  # noqa: F401

    import compress

    after_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    result = compress.run(json.loads(recipe_json), out=out, cache=False)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stage = result.stages[0]
    print(json.dumps({"peak_kb": peak, "after_imports_kb": after_imports, "seconds": seconds,
                      "calibration_samples": stage["details"].get("samples"),
                      "fake_quantize_ops": stage["details"].get("fake_quantize_ops")}))


def measure(rec: dict, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(rec), str(out)], cwd=ROOT,
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"run {rec['name']} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["fashion", "resnet18"], default="fashion")
    parser.add_argument("--small", type=int, default=500)
    parser.add_argument("--large", type=int, default=5000)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        tmp = Path(tmp)
        images = tmp / "images"
        written = build_image_folder(images, args.large)
        with np.load(DATA / "fashion_mnist_eval.npz") as f:   # a small eval set: the runs differ in calibration only
            np.savez(tmp / "eval.npz", x=f["x"][:200], y=f["y"][:200])
        print(f"image folder: {written} PNGs in {len(list(images.iterdir()))} class folders "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
        figures = {}
        for samples in (args.small, args.large):
            figures[samples] = measure(recipe(args.model, images, samples, tmp / "eval.npz"), tmp / f"runs-{samples}")
            f = figures[samples]
            print(f"{samples:>6} samples: peak RSS {f['peak_kb'] / 1024:8.1f} MiB "
                  f"(after imports {f['after_imports_kb'] / 1024:.1f} MiB, calibration+run adds "
                  f"{(f['peak_kb'] - f['after_imports_kb']) / 1024:.1f} MiB), run {f['seconds']:.1f} s, "
                  f"NNCF used {f['calibration_samples']} samples", flush=True)
    small, large = figures[args.small]["peak_kb"], figures[args.large]["peak_kb"]
    ratio = large / small
    verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"
    print(f"ratio {args.large}/{args.small}: {ratio:.3f} (target <= {TARGET_RATIO}) {verdict}; "
          f"total {time.perf_counter() - t0:.1f} s")
    sys.exit(0 if ratio <= TARGET_RATIO else 1)


if __name__ == "__main__":
    main()
