"""Where a sweep's points run: `local` (a process pool on this machine) or `ray` (one task per point).

Both take the points as jobs (`sweep.run_point` arguments) and call `on_result(record)` as each one
ends. Neither schedules anything itself: the local one is `concurrent.futures`, the other Ray.

Latency in the local pool: every worker is pinned (`sched_setaffinity`) to its own set of cores, as
many as the points time with (the target's threads), and there are only as many workers as such
disjoint sets fit on the machine. So timing never shares a core with another point; on a machine
with 2 cores and 2-thread targets that is one worker: the points run one after the other. (Memory
bandwidth and the last-level cache are still shared between workers on bigger machines.)
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from urllib.parse import urlparse

from .errors import InputError, first_line
from .sweep import failed, run_point

CONNECT_TIMEOUT_S = 10.0


# ---------------------------------------------------------------- local: a process pool
def _pin_worker(core_sets) -> None:
    import multiprocessing

    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the driver's: it stops the pool
    # a spawned worker inherits "spawn" as its own default; the libraries' helper processes (OpenVINO's and
    # NNCF's telemetry start one per event) would each start a whole interpreter: 2 s more per point, measured.
    # The worker's children start as in a plain `compress run`.
    multiprocessing.set_start_method("fork", force=True)
    cores = core_sets.get()
    if cores:
        os.sched_setaffinity(0, cores)


def worker_count(threads: int, jobs: int) -> tuple[int, list[list[int]]]:
    """Workers and their disjoint core sets: as many sets of `threads` cores as this machine has."""
    cpus = sorted(os.sched_getaffinity(0))
    workers = max(1, min(len(cpus) // max(threads, 1), jobs))
    sets = [cpus[i * threads:(i + 1) * threads] for i in range(workers)] if len(cpus) >= threads else [cpus]
    return workers, sets


def local(jobs: list[dict], on_result: Callable[[dict], None], *, threads: int) -> None:
    """A process pool of pinned workers. A point whose worker process dies (killed, out of memory) is
    tried once more in a fresh pool, then recorded as failed (a dead worker breaks the whole pool, so
    the points running beside it are tried again too)."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    attempts = {job["key"]: 0 for job in jobs}
    remaining = list(jobs)
    while remaining:
        workers, core_sets = worker_count(threads, len(remaining))
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        for cores in core_sets:
            queue.put(cores)
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_pin_worker, initargs=(queue,))
        pending = {pool.submit(run_point, job): job for job in remaining}
        remaining = []
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    job = pending.pop(future)
                    try:
                        on_result(future.result())
                        continue
                    except BrokenProcessPool as exc:
                        error, died = f"the worker process died ({first_line(exc)})", True
                    except Exception as exc:   # e.g. a result that cannot be sent back
                        error, died = f"{type(exc).__name__}: {first_line(exc)}", False
                    attempts[job["key"]] += 1
                    if died and attempts[job["key"]] < 2:
                        remaining.append(job)
                    else:
                        on_result(failed(job, f"{error}; tried {attempts[job['key']]} time(s)"))
        except KeyboardInterrupt:
            _stop_pool(pool)
            raise
        pool.shutdown(wait=True, cancel_futures=True)


def _stop_pool(pool) -> None:
    """Ctrl-C: terminate the pool's workers and their own children, so points in progress stop. The workers are
    joined through multiprocessing, never waited for with psutil: a worker reaped behind multiprocessing's back
    stays "alive" to it, and Python 3.11's ProcessPoolExecutor then spins in shutdown_workers forever (seen once:
    a Ctrl-C'd sweep at 100 % CPU for half an hour, never exiting)."""
    import psutil

    workers = list((pool._processes or {}).values())   # no public handle on them
    grandchildren = []
    for worker in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            grandchildren += psutil.Process(worker.pid).children(recursive=True)
    for child in grandchildren:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.join(10)
    psutil.wait_procs(grandchildren, timeout=10)   # not this process's children: polled, not reaped
    pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------- ray: one task per point
def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise InputError("the ray executor needs Ray, which is not installed",
                         hint="Install the extra: pip install 'compress[ray]'.") from exc
    return ray


def _reachable(address: str, timeout: float) -> None:
    """A TCP connect to host:port within `timeout`, so a wrong address fails in seconds, not minutes."""
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if parsed.hostname is None or parsed.port is None:
        raise InputError(f"Ray address {address!r} is not host:port, ray://host:port, auto or local")
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=timeout):
            pass
    except OSError as exc:
        raise InputError(f"cannot reach the Ray cluster at {address} within {timeout:.0f} s: {exc.strerror or exc}",
                         hint="Check the address (ray status on the head node prints it), or use --address local.") \
            from exc


def connect(address: str, *, timeout: float = CONNECT_TIMEOUT_S):
    """ray.init for `auto` (a cluster started on this machine with `ray start`), `local` (a cluster
    in this process), `host:port` (the GCS) or `ray://host:port` (Ray Client)."""
    import threading

    ray = _import_ray()
    if ray.is_initialized():
        return ray
    kwargs = {"logging_level": "ERROR", "log_to_driver": False, "runtime_env": _runtime_env()}
    if address == "local":   # starting a cluster in this process: no network to wait for, no bound
        ray.init(include_dashboard=False, **kwargs)
        return ray
    if address != "auto":
        _reachable(address, timeout)
    kwargs["address"] = address
    failure: list[BaseException] = []

    def init() -> None:
        try:
            ray.init(**kwargs)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=init, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise InputError(f"the Ray cluster at {address} did not answer within {timeout:.0f} s",
                         hint="Check that the address is a Ray head node (ray status).")
    if failure and "ray[client]" in str(failure[0]):
        raise InputError("ray:// addresses go through Ray Client, which needs grpcio",
                         hint="Install it: pip install 'ray[client]==2.60.0', or give the head's GCS address host:6379.")
    if failure:
        raise InputError(f"cannot connect to the Ray cluster at {address}: {first_line(failure[0])[:300]}",
                         hint="Start one with `ray start --head`, pass its address, or use --address local.")
    return ray


def _nodes_with(ray, need: dict) -> bool:
    return any(node.get("Alive") and all(node["Resources"].get(k, 0) >= v for k, v in need.items())
               for node in ray.nodes())


def missing_resources(ray, resources: dict) -> str | None:
    """Why no node of the cluster can run a task with these resources, or None."""
    need = {"CPU": resources.get("num_cpus", 1), "GPU": resources.get("num_gpus", 0),
            **resources.get("resources", {})}
    need = {k: v for k, v in need.items() if v}
    if _nodes_with(ray, need):
        return None
    lacking = [f"{k}: {v:g}" for k, v in need.items() if not _nodes_with(ray, {k: v})]
    have = sorted({k for node in ray.nodes() if node.get("Alive") for k in node["Resources"]
                   if not k.startswith("node:") and k not in ("memory", "object_store_memory")})
    what = ", ".join(lacking) if lacking else ", ".join(f"{k}: {v:g}" for k, v in need.items()) + " together"
    return f"no node of the Ray cluster has {what} (its nodes have: {', '.join(have)})"


def _runtime_env() -> dict:
    """Workers import this very `compress` (the driver's code), wherever the cluster's nodes are."""
    import compress

    return {"py_modules": [os.path.dirname(compress.__file__)]}


def ray_executor(address: str, *, timeout: float = CONNECT_TIMEOUT_S):
    """An executor that runs each point as a Ray task (retried once if its worker dies)."""
    ray = connect(address, timeout=timeout)

    def execute(jobs: list[dict], on_result: Callable[[dict], None], *, threads: int) -> None:
        task = ray.remote(run_point)
        refs = {}
        for job in jobs:
            # a point reserves as many CPUs as it times with, unless the sweep says otherwise
            res = {"num_cpus": threads, **job["resources"]}
            why = missing_resources(ray, res)
            if why is not None:
                on_result(failed(job, why))
                continue
            options = {"num_cpus": res["num_cpus"], "num_gpus": res.get("num_gpus", 0),
                       "resources": res.get("resources") or None, "max_retries": 1, "retry_exceptions": False}
            job = {**job, "submitted": time.time()}
            refs[task.options(**options).remote(job)] = job
        try:
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                for ref in done:
                    job = refs.pop(ref)
                    try:
                        record = ray.get(ref)
                        record["wall_s"] = round(time.time() - job["submitted"], 2)
                    except ray.exceptions.RayError as exc:   # the worker died twice (retried once), or Ray failed
                        record = failed(job, f"{type(exc).__name__} (retried once): {first_line(exc)[:300]}")
                    on_result(record)
        except KeyboardInterrupt:
            for ref in refs:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            raise

    return execute
