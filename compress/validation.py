"""The one validation harness: task metric, agreement with the FP32 reference, latency, size.
(`compress.validation`; `compress.validate` is the API function.)

Every stage, every baseline and `compress bench` go through these functions, so their numbers
are comparable: same data order, same batch, same latency protocol, threads pinned and recorded.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import Dataset
from .errors import DataError, InputError
from .runtimes import Session, open_session


# ---------------------------------------------------------------- machine
def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_info() -> dict:
    import psutil

    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), model)
    except OSError:
        pass
    flags = cpu_flags()
    isa = [name for name, need in (
        ("AVX2", "avx2"), ("AVX512", "avx512f"), ("AVX-VNNI", "avx_vnni"), ("AVX512-VNNI", "avx512_vnni"),
        ("AVX512-BF16", "avx512_bf16"), ("AMX-INT8", "amx_int8"), ("AMX-BF16", "amx_bf16"),
    ) if need in flags]
    return {
        "cpu": model,
        "isa": isa,
        "vnni": bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------- metrics
@dataclass
class EvalResult:
    metrics: dict[str, float] = field(default_factory=dict)      # task metrics (top1, top5, ...), percent
    agreement: dict[str, dict] = field(default_factory=dict)     # per output name
    samples: int = 0
    outputs: list[list[np.ndarray]] | None = None                # per batch, when collected as reference
    # per eval sample, for confidence intervals: top1/top5 correct (labels), top1_agreement/cosine of the
    # first output vs the reference
    per_sample: dict[str, np.ndarray] = field(default_factory=dict)


def classification_output(outputs: list[np.ndarray]) -> int | None:
    """Index of the first output that looks like class scores [N, C>1]."""
    return next((i for i, o in enumerate(outputs) if o.ndim == 2 and o.shape[1] > 1), None)


class Agreement:
    """Streaming agreement of one output against the reference output."""

    def __init__(self):
        self.n = 0
        self.top1_same = 0
        self.cos_sum = 0.0
        self.cos_min = 1.0
        self.max_abs = 0.0
        self.sq_sum = 0.0
        self.count = 0
        self.classification = None
        self.same: list[np.ndarray] = []     # per sample: top-1 equals the reference's
        self.cosines: list[np.ndarray] = []  # per sample cosine

    def update(self, out: np.ndarray, ref: np.ndarray) -> None:
        if self.classification is None:  # top-1 agreement only for class scores [N, C], not maps or sequences
            self.classification = out.ndim == 2 and out.shape[1] > 1
        out = out.astype(np.float64).reshape(len(out), -1)
        ref = ref.astype(np.float64).reshape(len(ref), -1)
        if out.shape != ref.shape:
            raise DataError(f"output shape {list(out.shape)} differs from the reference {list(ref.shape)}")
        if self.classification:
            same = out.argmax(1) == ref.argmax(1)
            self.top1_same += int(same.sum())
            self.same.append(same)
        dot = (out * ref).sum(1)
        norms = np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1)
        cos = np.where(norms > 0, dot / np.maximum(norms, 1e-300), (np.abs(out - ref).max(1) == 0).astype(float))
        self.cos_sum += float(cos.sum())
        self.cosines.append(cos)
        self.cos_min = min(self.cos_min, float(cos.min()))
        diff = np.abs(out - ref)
        self.max_abs = max(self.max_abs, float(diff.max()) if diff.size else 0.0)
        self.sq_sum += float((diff ** 2).sum())
        self.count += diff.size
        self.n += len(out)

    def result(self) -> dict:
        res = {"cosine": self.cos_sum / max(self.n, 1), "cosine_min": self.cos_min,
               "max_abs_error": self.max_abs, "mse": self.sq_sum / max(self.count, 1)}
        if self.classification:
            res["top1_agreement"] = 100.0 * self.top1_same / max(self.n, 1)
        return res


class UserMetric:
    """A user's metric: a function(outputs, targets) -> dict called once on the whole eval set, or a
    class whose instances take update(outputs, targets) per batch and compute() -> dict (streaming).
    `outputs` maps output names to numpy arrays in model order, whatever the runtime."""

    def __init__(self, obj, ref: str, kwargs: dict | None = None):
        import inspect

        self.obj, self.ref, self.kwargs = obj, ref, dict(kwargs or {})
        self.streaming = inspect.isclass(obj)
        if not self.streaming and not callable(obj):
            raise InputError(f"metric {ref} is not callable", where="metric.function")

    def _fail(self, label: str, exc: Exception) -> InputError:
        return InputError(f"metric {self.ref} raised on {label}: {type(exc).__name__}: {exc}", where="metric.function")

    def start(self, label: str) -> None:
        self.label = label
        self.outputs: list[dict[str, np.ndarray]] = []
        self.targets: list = []
        if self.streaming:
            try:
                self.state = self.obj(**self.kwargs)
            except Exception as exc:
                raise self._fail(label, exc) from exc

    def update(self, named: dict[str, np.ndarray], targets) -> None:
        if self.streaming:
            try:
                self.state.update(named, targets)
            except Exception as exc:
                raise self._fail(self.label, exc) from exc
        else:
            self.outputs.append(named)
            self.targets.append(targets)

    def compute(self) -> dict[str, float]:
        try:
            if self.streaming:
                value = self.state.compute()
            else:
                named = {k: np.concatenate([o[k] for o in self.outputs]) for k in self.outputs[0]}
                value = self.obj(named, _join_targets(self.targets))
        except InputError:
            raise
        except Exception as exc:
            raise self._fail(self.label, exc) from exc
        finally:
            self.outputs, self.targets = [], []
        return _check_metric_values(value, self.ref, self.label)


def _join_targets(parts: list):
    """Per-batch targets -> the whole set: arrays concatenated, anything else (ragged lists) flattened."""
    if all(p is None for p in parts):
        return None
    if all(hasattr(p, "shape") for p in parts):
        arrays = [p.detach().cpu().numpy() if hasattr(p, "detach") else np.asarray(p) for p in parts]
        return np.concatenate(arrays)
    joined: list = []
    for p in parts:
        joined.extend(list(p))
    return joined


def _check_metric_values(value, ref: str, label: str) -> dict[str, float]:
    if not isinstance(value, dict) or not value:
        raise InputError(f"metric {ref} returned {type(value).__name__} on {label}; it must return a non-empty "
                         "dict of names to numbers", where="metric.function")
    out = {}
    for key, number in value.items():
        try:
            number = float(number.item() if hasattr(number, "item") else number)
        except (TypeError, ValueError):
            raise InputError(f"metric {ref} returned {key!r}: {type(number).__name__} on {label}; values must be "
                             "numbers", where="metric.function") from None
        if not np.isfinite(number):
            raise InputError(f"metric {ref} returned {key!r} = {number} on {label}; values must be finite",
                             where="metric.function")
        out[str(key)] = number
    return out


def evaluate(session: Session, dataset: Dataset, *, batch_size: int, output_names: list[str],
             reference: list[list[np.ndarray]] | None = None, collect: bool = False,
             metric: UserMetric | None = None, label: str = "") -> EvalResult:
    """Run `dataset` through `session`: top-1/top-5 when labels exist, agreement when a reference
    exists, and the user's metric when there is one."""
    result = EvalResult(outputs=[] if collect else None)
    if metric is not None:
        metric.start(label or session.runtime)
    correct1 = correct5 = 0
    hits1: list[np.ndarray] = []
    hits5: list[np.ndarray] = []
    agree = [Agreement() for _ in output_names]
    cls_index = None
    classes = 0
    for b, (feeds, labels) in enumerate(dataset.batches(batch_size)):
        outs = session.run(feeds)
        if len(outs) != len(output_names):
            raise DataError(f"{label or session.runtime} returned {len(outs)} outputs, expected {len(output_names)} "
                            f"({', '.join(output_names)})")
        if metric is not None:
            metric.update(dict(zip(output_names, outs)), labels)
        n = len(next(iter(feeds.values())))
        result.samples += n
        if collect:
            result.outputs.append(outs)
        if reference is not None:
            for name, a, out, ref in zip(output_names, agree, outs, reference[b]):
                if out.shape != ref.shape:
                    raise DataError(f"{label or session.runtime}: output '{name}' has shape {list(out.shape)}, "
                                    f"the FP32 reference {list(ref.shape)}")
                a.update(out, ref)
        if dataset.has_labels and labels is not None:
            if cls_index is None:
                cls_index = classification_output(outs)
                if cls_index is None:
                    raise DataError("the eval data has labels but no model output looks like class scores [N, C]",
                                    where="data.eval")
            scores = outs[cls_index]
            classes = scores.shape[1]
            if labels.max(initial=0) >= classes:
                raise DataError(f"eval labels out of range: found label {int(labels.max())} but the model "
                                f"outputs {classes} classes", where="data.eval")
            top = np.argsort(-scores, axis=1)[:, :5]
            hits1.append(top[:, 0] == labels)
            hits5.append((top == labels[:, None]).any(1))
            correct1 += int(hits1[-1].sum())
            correct5 += int(hits5[-1].sum())
    if result.samples == 0:
        raise DataError("the eval set produced no samples", where="data.eval")
    if hits1:
        result.per_sample.update(top1=np.concatenate(hits1), top5=np.concatenate(hits5))
    if reference is not None and agree:
        first = agree[0]
        result.per_sample["cosine"] = np.concatenate(first.cosines)
        if first.same:
            result.per_sample["top1_agreement"] = np.concatenate(first.same)
    if dataset.has_labels:
        result.metrics["top1"] = 100.0 * correct1 / result.samples
        if cls_index is not None and classes > 5:
            result.metrics["top5"] = 100.0 * correct5 / result.samples
    if reference is not None:
        result.agreement = {name: a.result() for name, a in zip(output_names, agree)}
    if metric is not None:
        result.metrics.update(metric.compute())
    return result


def default_primary(has_labels: bool, reference_outputs: list[np.ndarray]) -> str:
    """top1 with labels; else agreement with FP32: top-1 agreement for class scores, cosine otherwise."""
    if has_labels:
        return "top1"
    return "top1_agreement" if classification_output(reference_outputs[:1]) == 0 else "cosine"


def primary_metric(result: EvalResult, output_names: list[str], wanted: str) -> tuple[str, float]:
    """The figure gates and deltas use: built-ins in points (percent), a user's metric in its own units."""
    if wanted not in ("top1", "top5", "top1_agreement", "cosine"):
        if wanted not in result.metrics:
            raise InputError(f"metric.primary '{wanted}' is not among the names the metric returned "
                             f"({', '.join(result.metrics) or 'none'})", where="metric.primary")
        return wanted, result.metrics[wanted]
    if wanted in ("top1", "top5"):
        if wanted not in result.metrics:
            raise DataError(f"metric.primary '{wanted}' needs integer labels in the eval data and class scores "
                            f"[N, C]{' with C > 5' if wanted == 'top5' else ''}", where="metric.primary")
        return wanted, result.metrics[wanted]
    first = result.agreement.get(output_names[0])
    if first is None:
        return wanted, 100.0  # the reference agrees with itself
    if wanted == "top1_agreement":
        if "top1_agreement" not in first:
            raise DataError("metric.primary 'top1_agreement' needs a first output of class scores [N, C]",
                            where="metric.primary")
        return wanted, first["top1_agreement"]
    return "cosine", 100.0 * first["cosine"]


# ---------------------------------------------------------------- latency
def _time_calls(session: Session, feeds: dict[str, np.ndarray], count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        session.run(feeds)
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def _stats(times: list[float], threads: int | None, feeds: dict[str, np.ndarray], warmup: int) -> dict:
    t = np.asarray(times)
    return {
        "p50_ms": float(np.percentile(t, 50)), "p90_ms": float(np.percentile(t, 90)),
        "p99_ms": float(np.percentile(t, 99)), "mean_ms": float(t.mean()),
        "min_ms": float(t.min()), "runs": len(t), "warmup": warmup,
        "batch": int(next(iter(feeds.values())).shape[0]),
        "threads": threads,
    }


def measure_latency(session: Session, feeds: dict[str, np.ndarray], *, warmup: int, runs: int) -> dict:
    """Warm up, then time `runs` single calls. Milliseconds; threads come from the session."""
    _time_calls(session, feeds, warmup)
    return _stats(_time_calls(session, feeds, runs), session.settings.get("threads"), feeds, warmup)


class LoadMeter:
    """CPU time other processes used while we timed (system busy time minus ours, psutil), in cores."""

    def __init__(self, threads: int | None):
        import psutil

        self.threads = threads or 1
        self.process = psutil.Process()
        self.cores = psutil.cpu_count() or 1
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        import psutil

        system = psutil.cpu_times()
        busy = system.user + system.nice + system.system + getattr(system, "irq", 0.0) + \
            getattr(system, "softirq", 0.0) + getattr(system, "steal", 0.0)
        own = self.process.cpu_times()
        return time.perf_counter(), busy, own.user + own.system

    def result(self) -> dict:
        wall0, busy0, own0 = self._start
        wall1, busy1, own1 = self._sample()
        wall = max(wall1 - wall0, 1e-9)
        others = max(0.0, (busy1 - busy0) - (own1 - own0)) / wall
        # busy: other processes took more than the cores our timing left free (at least half a core)
        limit = max(0.5, self.cores - self.threads)
        return {"other_cores": round(others, 2), "cores": self.cores, "busy": others > limit,
                "limit_cores": limit}


def paired_latency(open_session_: Callable[[], Session], open_baseline: Callable[[], Session],
                   feeds: dict[str, np.ndarray], *, warmup: int, runs: int, max_seconds: float = 30.0,
                   rel_precision: float = 0.1, thresholds: tuple[float, ...] = (), min_blocks: int = 3,
                   rounds_per_block: int = 4, adaptive: bool = True) -> tuple[dict, dict, dict]:
    """Time an artifact and its baseline in paired rounds, so machine noise hits both alike: each
    round times one then the other (the order flips every round, so each block of four is balanced:
    neither side goes first more often). Rounds come in blocks, and each
    block opens both sessions afresh: two sessions of one model can differ by several percent for
    their whole life (where their memory landed), which rounds within one session cannot reveal.
    The speed-up is the geometric mean of the rounds' median ratios; its 95% interval is a t-interval
    over the blocks. The first `min_blocks` blocks take about `runs` calls per side; more blocks follow
    until the interval is narrower than `rel_precision` of the speed-up or excludes every threshold,
    or `max_seconds` of timing are spent (`adaptive=False`: the first blocks only). Returns (our
    stats, the baseline's stats, the speed-up and how it was reached)."""
    from .stats import converged

    per_round = max(1, -(-runs // (min_blocks * rounds_per_block)))
    ours: list[float] = []
    theirs: list[float] = []
    blocks: list[tuple[list[float], list[float]]] = []   # per block: the rounds' medians (baseline, ours)
    meter = LoadMeter(None)
    started = time.perf_counter()
    stopped = "budget"
    while True:
        session, baseline = open_session_(), open_baseline()
        threads = (session.settings.get("threads"), baseline.settings.get("threads"))
        meter.threads = threads[0] or 1
        _time_calls(session, feeds, warmup)
        _time_calls(baseline, feeds, warmup)
        block: tuple[list[float], list[float]] = ([], [])
        for r in range(rounds_per_block):
            first, second = (session, baseline) if r % 2 == len(blocks) % 2 else (baseline, session)
            times = {id(first): _time_calls(first, feeds, per_round)}
            times[id(second)] = _time_calls(second, feeds, per_round)
            ours += times[id(session)]
            theirs += times[id(baseline)]
            block[0].append(float(np.median(times[id(baseline)])))
            block[1].append(float(np.median(times[id(session)])))
        blocks.append(block)
        del session, baseline
        point, low, high = block_interval(blocks)
        if not adaptive and len(blocks) >= min_blocks:
            stopped = "first blocks (nothing gates it)"
            break
        if len(blocks) >= min_blocks and converged(low, high, point, rel_precision, list(thresholds)):
            stopped = "precision" if (high - low) / point <= rel_precision else "threshold excluded"
            break
        if time.perf_counter() - started >= max_seconds and len(blocks) >= 2:
            break
    timing = {"speedup": point, "interval": [low, high], "blocks": len(blocks),
              "rounds": len(blocks) * rounds_per_block, "runs_per_round": per_round, "runs": len(ours),
              "seconds": round(time.perf_counter() - started, 3), "stopped": stopped,
              "rel_precision": rel_precision, "max_seconds": max_seconds, "load": meter.result()}
    return _stats(ours, threads[0], feeds, warmup), _stats(theirs, threads[1], feeds, warmup), timing


def block_interval(blocks: list[tuple[list[float], list[float]]]) -> tuple[float, float, float]:
    """Speed-up over all rounds (geometric mean of median ratios) and its interval over blocks."""
    from .stats import speedup_interval

    per_block = [speedup_interval(base, ours)[0] for base, ours in blocks]
    point = speedup_interval([b for base, _ in blocks for b in base], [o for _, ours in blocks for o in ours])[0]
    _, low, high = speedup_interval(per_block, [1.0] * len(per_block))
    return point, low, high


def latency_feeds(dataset: Dataset, batch: int) -> dict[str, np.ndarray]:
    """A real batch of `batch` samples (repeated if the set is smaller) for timing."""
    feeds, _ = next(dataset.batches(batch))
    feeds = {k: v[:batch] for k, v in feeds.items()}
    n = len(next(iter(feeds.values())))
    if n < batch:
        reps = -(-batch // n)
        feeds = {k: np.concatenate([v] * reps)[:batch] for k, v in feeds.items()}
    return feeds


# ---------------------------------------------------------------- bench a file
def _random_feeds(shapes: list[tuple[str, list, str]], batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for name, dims, dtype in shapes:
        if any(d is None for d in dims[1:]):
            raise InputError(f"input '{name}' has dynamic dimensions {dims}; bench needs static ones after the batch")
        shape = [batch, *dims[1:]]
        kind = np.dtype(dtype).kind
        feeds[name] = (rng.standard_normal(shape).astype(dtype) if kind == "f"
                       else rng.integers(0, 2, shape).astype(dtype))
    return feeds


def bench_file(path: Path, *, threads: int, batch: int, warmup: int, runs: int, inference_precision: str) -> dict:
    """Time a model file on the runtime its suffix belongs to (the runtime table), random inputs."""
    from .runtimes import for_suffix, runtimes

    if not path.is_file():
        raise InputError(f"{path} does not exist")
    entry = for_suffix(path.suffix)
    if entry is None or entry.input_shapes is None:
        known = ", ".join(sorted({s for r in runtimes() if r.input_shapes for s in r.suffixes}))
        raise InputError(f"{path.name}: bench takes a model file of a runtime it knows ({known})")
    shapes = entry.input_shapes(path)
    state = {"inference_precision": inference_precision} if "inference_precision" in \
        {f.name for f in dataclasses.fields(entry.artifact)} else {}
    artifact = entry.artifact(path=path, **state)
    session = open_session(artifact, threads=threads, static_batch=batch)
    latency = measure_latency(session, _random_feeds(shapes, batch), warmup=warmup, runs=runs)
    return {"model": str(path), "runtime": session.runtime, "settings": session.settings, "latency": latency,
            "machine": machine_info(), "inputs": "random normal (floats) / 0-1 (integers), seed 0"}
