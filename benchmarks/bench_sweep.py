"""A sweep's shared stage cache vs the same points as independent runs (issue #21).

These machines are shared and their load swings, so the comparison is interleaved, point by point:
each point runs once as the sweep runs it (`compress run`, into one folder whose stage cache every
point shares) and once alone (`compress run --no-cache`, its own process). Both pay the same
process start-up, so the ratio is the cache's alone (a real sweep also keeps its worker's imports:
it is a little faster still). Optionally (--sweep) the real `compress sweep` is timed first.

    .venv/bin/python benchmarks/bench_sweep.py [recipes/sweep-quickstart.yaml] [--points 12] [--sweep]
        [--ray-address local]

--points N takes the first N points (the quickstart's points come in groups of 4 that share their
pruning ratio, so 4 has the same structure as 12). With --ray-address the sweep is then run on Ray
and with the local executor, both on the warm cache, and the executor overhead per point is
printed: (sweep wall - the points' own run time) / points, for each; every point is a Ray task.
Target: the shared cache at least 2x faster than independent runs; Ray overhead under 2 s per point.
"""
from __future__ import annotations

import argparse
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


def overhead(folder: Path) -> tuple[float, float]:
    """(the sweep's own wall time, its overhead per point beyond the points' runs)."""
    report = json.loads((folder / "sweep.json").read_text())
    ran = [p for p in report["points"] if p["status"] == "done"]
    return report["wall_s"], (report["wall_s"] - sum(p["seconds"] for p in ran)) / max(len(ran), 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("file", nargs="?", default=str(ROOT / "recipes/sweep-quickstart.yaml"))
    parser.add_argument("--points", type=int, default=None)
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
        a = timed(["run", str(file), "--quiet", "--out", str(work / "shared")])
        b = timed(["run", str(file), "--quiet", "--no-cache", "--out", str(work / "independent")])
        shared, independent = shared + a, independent + b
        print(f"point {p.index} ({p.label}): shared cache {a:.1f} s, independent {b:.1f} s   load {os.getloadavg()}",
              flush=True)
    print(f"total: shared cache {shared:.1f} s, independent {independent:.1f} s -> {independent / shared:.2f}x", flush=True)
    if args.ray_address:
        folder = work / "warm" / sweep.name
        walls = {}
        for name, extra in (("local", []), ("ray", ["--executor", "ray", "--address", args.ray_address])):
            shutil.rmtree(folder / "points", ignore_errors=True)
            timed(["sweep", args.file, "--out", str(work / "warm"), *extra])
            walls[name] = overhead(folder)
            print(f"{name} executor: sweep {walls[name][0]:.1f} s, overhead {walls[name][1]:.2f} s per point   "
                  f"load {os.getloadavg()}", flush=True)
    print(f"folder: {work}")


if __name__ == "__main__":
    main()
