"""`method: auto`: calibration settings chosen by evidence.

Each candidate is a complete quantization by the backend's own library (NNCF, ONNX Runtime,
ModelOpt) with one set of settings; it is scored with the recipe's primary metric on the first
eval samples, on the runtime the artifact runs on, and timed briefly. Round one tries the range
estimators the backend offers; round two tries the library's accuracy-preserving options on the
best of round one (channel alignment, bias correction, SmoothQuant, symmetric activations...).
The best by the metric is kept (ties keep the earlier, more default candidate); every candidate
goes into the stage's details for the report. A candidate the library itself fails on (e.g. NNCF 3.4's
channel alignment on depthwise networks) is recorded with the library's error and skipped; only when every
candidate fails does the stage fail.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from ..artifacts import Artifact
from ..errors import StageError, first_line
from . import StageContext

RANKING_SAMPLES = 300


def _size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def search(ctx: StageContext, first: list[tuple[str, dict]], variants: Callable[[dict], list[tuple[str, dict]]],
           build: Callable[[dict, Path], Artifact], out_dir: Path) -> tuple[Artifact, dict]:
    """Build and score `first`, then `variants(best settings)`; move the winner's files into `out_dir`."""
    if ctx.score is None or ctx.quick_latency is None:
        raise StageError("method auto needs the runner's scoring (run it through compress run)", where=ctx.where)
    batch = ctx.resolved.batch_size
    samples = -(-RANKING_SAMPLES // batch) * batch   # scoring takes whole eval batches
    if ctx.eval is not None:
        samples = min(samples, len(ctx.eval))
    work = out_dir / "candidates"
    tried: list[dict] = []
    built: dict[int, Artifact] = {}
    sign = 1 if ctx.resolved.higher_is_better else -1

    def attempt(name: str, settings: dict) -> None:
        if any(t["settings"] == settings for t in tried):
            return
        folder = work / str(len(tried))
        folder.mkdir(parents=True)
        try:
            artifact = build(settings, folder)
        except StageError as exc:   # one library option failing does not end the search
            ctx.log(f"candidate {name}: failed ({first_line(exc)})")
            tried.append({"name": name, "settings": dict(settings), "metric": {}, "latency_ms": None, "size_mb": None,
                          "chosen": False, "error": str(exc)})
            return
        metric, value = ctx.score(artifact, samples)
        latency = ctx.quick_latency(artifact)
        ctx.log(f"candidate {name}: {metric} {value:.2f}, {latency:.3f} ms")
        built[len(tried)] = artifact
        tried.append({"name": name, "settings": dict(settings), "metric": {metric: value}, "latency_ms": latency,
                      "size_mb": round(_size_mb(folder), 3), "chosen": False})

    def best() -> int:
        scored = [i for i, t in enumerate(tried) if t["metric"]]
        if not scored:
            raise StageError("method auto: every calibration candidate failed; the first: "
                             + tried[0]["error"], where=ctx.where,
                             hint="Set method to one the library runs on this model (minmax, percentile, ...).")
        return max(scored, key=lambda i: (sign * next(iter(tried[i]["metric"].values())), -i))   # first of equals

    for name, settings in first:
        attempt(name, settings)
    for name, settings in variants(tried[best()]["settings"]):
        attempt(name, settings)
    winner = best()
    tried[winner]["chosen"] = True
    artifact = built[winner]
    folder = artifact.path.parent
    for item in folder.iterdir():
        item.rename(out_dir / item.name)
    artifact.path = out_dir / artifact.path.name
    shutil.rmtree(work)
    values = {next(iter(t["metric"].values())) for t in tried if t["metric"]}
    ctx.details["calibration_candidates"] = tried
    ctx.details["calibration_ranking"] = {"samples": samples, "metric": next(iter(tried[winner]["metric"])),
                                          "separated": len(values) > 1}
    return artifact, tried[winner]["settings"]
