"""A sweep's shared stage cache vs the same points as independent runs (issue #21).

These machines are shared and their load swings, so the comparison is interleaved, point by point:
each point runs once as the sweep runs it (`compress.run(..., reuse_measurements=True)` in its own
process, into one folder whose stage cache and validations every point shares) and once alone
(`compress run --no-cache`, its own process). Both pay the same process start-up, so the ratio is
the sharing's alone (a real sweep also keeps its worker's imports:
it is a little faster still). Optionally (--sweep) the real `compress sweep` is timed first.

    .venv/bin/python benchmarks/bench_sweep.py [recipes/sweep-quickstart.yaml] [--points 12] [--sweep]
        [--ray-address local]

--points N takes the first N points (the quickstart's points come in groups of 4 that share their
pruning ratio, so 4 has the same structure as 12). With --ray-address the sweep is then run on Ray
and with the local executor, both on the warm cache, and for each: the fixed cost (sweep wall time
minus the span from the first point's start to the last one's end: connecting, the first worker's
start-up, the report) and the overhead per point (the idle gap between one point's end and the next
one's start, points running one after another on 2 cores); every point is a Ray task.
Target: the shared cache at least 2x faster than independent runs; Ray overhead under 2 s per point.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compress.sweep import load_sweep  # noqa: E402
from compress.sweep_report import rebase  # noqa: E402

PY = sys.executable


def timed(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([PY, "-m", "compress.cli", *args], cwd=ROOT, check=False, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def timed_point(file: Path, out: Path) -> float:
    """One point as `compress sweep` runs it (shared stage cache and validations), in its own process."""
    started = time.perf_counter()
    code = "import sys, compress; compress.run(sys.argv[1], out=sys.argv[2], reuse_measurements=True)"
    subprocess.run([PY, "-c", code, str(file), str(out)], cwd=ROOT, check=False, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def overhead(folder: Path) -> tuple[float, float, float]:
    """(the sweep's wall time, its fixed cost: connecting, the first worker's start-up, the report, and
    the overhead per point: the idle gap between one point's end and the next one's start in a worker)."""
    report = json.loads((folder / "sweep.json").read_text())
    ran = sorted((p for p in report["points"] if p["status"] == "done"), key=lambda p: p["started_at"])
    gaps = [b["started_at"] - a["finished_at"] for a, b in itertools.pairwise(ran) if b["started_at"] >= a["finished_at"]]
    per_point = sum(gaps) / len(gaps) if gaps else 0.0
    busy = ran[-1]["finished_at"] - ran[0]["started_at"]
    return report["wall_s"], report["wall_s"] - busy, per_point


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("file", nargs="?", default=str(ROOT / "recipes/sweep-quickstart.yaml"))
    parser.add_argument("--points", type=int, default=None, help="0: only the executor comparison")
    parser.add_argument("--sweep", dest="real_sweep", action="store_true", help="time the real `compress sweep` first")
    parser.add_argument("--ray-address", default=None)
    args = parser.parse_args()
    sweep = load_sweep(Path(args.file))
    points = [p for p in sweep.points() if p.error is None][:args.points]
    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    print(f"{len(points)} points of {args.file}; load before: {os.getloadavg()}", flush=True)
    if args.real_sweep:
        wall = timed(["sweep", args.file, "--out", str(work / "sweeps")])
        print(f"compress sweep ({len(sweep.points())} points): {wall:.1f} s   load {os.getloadavg()}", flush=True)
    shared = independent = 0.0
    for p in points:
        file = work / f"point{p.index:02d}.yaml"
        file.write_text(yaml.safe_dump(rebase(p.recipe, sweep.base_dir, work), sort_keys=False))
        a = timed_point(file, work / "shared")
        b = timed(["run", str(file), "--quiet", "--no-cache", "--out", str(work / "independent")])
        shared, independent = shared + a, independent + b
        print(f"point {p.index} ({p.label}): shared cache {a:.1f} s, independent {b:.1f} s   load {os.getloadavg()}",
              flush=True)
    if points:
        print(f"total: shared cache {shared:.1f} s, independent {independent:.1f} s -> {independent / shared:.2f}x",
              flush=True)
    if args.ray_address:
        folder = work / "warm" / sweep.name
        cold = timed(["sweep", args.file, "--out", str(work / "warm")])   # fills the cache: the runs below are warm
        print(f"compress sweep, cold cache, local executor: {cold:.1f} s   load {os.getloadavg()}", flush=True)
        for name, extra in (("local", []), ("ray", ["--executor", "ray", "--address", args.ray_address])):
            shutil.rmtree(folder / "points", ignore_errors=True)
            wall = timed(["sweep", args.file, "--out", str(work / "warm"), *extra])
            _, fixed, per_point = overhead(folder)
            report = json.loads((folder / "sweep.json").read_text())
            span = report["wall_s"] - fixed
            print(f"{name} executor, warm cache: command {wall:.1f} s, of which points {span:.1f} s; fixed "
                  f"{wall - span:.1f} s (process start, connecting or starting the cluster, the first worker, the "
                  f"report); overhead {per_point:.3f} s per point   load {os.getloadavg()}", flush=True)
    print(f"folder: {work}")


if __name__ == "__main__":
    main()
