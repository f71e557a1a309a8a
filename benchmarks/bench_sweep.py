"""A sweep with its shared stage cache vs the same points as independent runs (issue #21).

Runs `compress sweep <file>` (local executor) into a fresh folder, then each point alone as
`compress run <point>.yaml --no-cache` in its own process, and prints both wall times and their
ratio, with the load average before and after (these machines are shared and noisy).

    .venv/bin/python benchmarks/bench_sweep.py [recipes/sweep-quickstart.yaml] [--ray-address local]

With --ray-address it then runs the sweep again with the local executor and with Ray, both on the
cache the first sweep filled, and prints the Ray executor's overhead per point: (Ray wall - local
wall) / points, each the sweep's own wall time in sweep.json (Ray's connect excluded).
Target: the sweep at least 2x faster than the independent runs; Ray overhead under 2 s per point.
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


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("sweep", nargs="?", default=str(ROOT / "recipes/sweep-quickstart.yaml"))
    parser.add_argument("--ray-address", default=None)
    args = parser.parse_args()
    sweep = load_sweep(Path(args.sweep))
    points = [p for p in sweep.points() if p.error is None]
    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    py = sys.executable
    print(f"load before: {os.getloadavg()}")
    shared = timed([py, "-m", "compress.cli", "sweep", args.sweep, "--out", str(work / "sweeps")])
    print(f"sweep, shared cache ({len(points)} points): {shared:.1f} s   load {os.getloadavg()}")
    independent = 0.0
    for p in points:
        file = work / f"point{p.index:02d}.yaml"
        file.write_text(yaml.safe_dump(rebase(p.recipe, sweep.base_dir, work), sort_keys=False))
        independent += timed([py, "-m", "compress.cli", "run", str(file), "--no-cache", "--quiet",
                              "--out", str(work / "independent")])
    print(f"{len(points)} independent runs: {independent:.1f} s   load {os.getloadavg()}")
    print(f"ratio: {independent / shared:.2f}x")
    if args.ray_address:
        folder = work / "sweeps" / sweep.name
        walls = {}
        for name in ("local", "ray"):   # every stage now comes from the cache the first sweep filled
            shutil.rmtree(folder / "points")
            extra = ["--executor", "ray", "--address", args.ray_address] if name == "ray" else []
            timed([py, "-m", "compress.cli", "sweep", args.sweep, "--out", str(work / "sweeps"), *extra])
            # the sweep's own wall time: from the first point submitted to the last result (no connect, no imports)
            walls[name] = json.loads((folder / "sweep.json").read_text())["wall_s"]
        print(f"warm cache: local {walls['local']:.1f} s, ray {walls['ray']:.1f} s -> Ray overhead "
              f"{(walls['ray'] - walls['local']) / len(points):.2f} s per point   load {os.getloadavg()}")
    print(f"folder: {work}")


if __name__ == "__main__":
    main()
