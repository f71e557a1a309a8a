"""Multi-process fine-tuning: `finetune: {devices: N}` (prune, qat) trains under torch.distributed with DDP.

The stage calls `launch()`: it writes the module, teacher, training data and settings to a temporary
folder and runs `python -m torch.distributed.run --standalone --nproc_per_node N -m compress.ddp_worker
FOLDER`. Each rank wraps the module in DistributedDataParallel (gloo, on CPU), reads its
DistributedSampler shard of the training data with batch_size / N samples per step (the same global
batch as one process), and runs `compress.train.finetune`; rank 0 saves the weights after every epoch.
The parent loads them back, measuring the metric of each epoch itself. A failing rank writes its error;
the parent raises one error (no traceback) and, as the stage raises, writes no artifact.

With `nodes: M` the same folder travels to M Ray nodes (one task each, a STRICT_SPREAD placement group),
each runs `torchrun --nnodes M --node_rank i` against the first node's address, and what the ranks wrote
(rank 0's epochs and history, any rank's error) comes back into the folder, so the rest is the same.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import CompressError, InputError, StageError, first_line


class Group:
    """What `finetune()` needs from the process group."""

    def __init__(self, seed: int):
        import torch.distributed as dist

        dist.init_process_group("gloo")   # CPU: the training loop feeds CPU tensors
        self.rank, self.world, self.seed = dist.get_rank(), dist.get_world_size(), seed

    def wrap(self, module):
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module)

    def shard(self, train, epoch: int):
        """This rank's samples for `epoch` (DistributedSampler: a seeded shuffle, padded to split evenly)."""
        from torch.utils.data import DistributedSampler

        sampler = DistributedSampler(range(len(train)), num_replicas=self.world, rank=self.rank, shuffle=True,
                                     seed=self.seed)
        sampler.set_epoch(epoch)
        return dataclasses.replace(train, indices=train.indices[list(sampler)])

    def _reduce(self, values: list[float], op):
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=op)
        return t.tolist()

    def all(self, flag: bool) -> bool:
        import torch.distributed as dist

        return bool(self._reduce([float(flag)], dist.ReduceOp.MIN)[0])

    def sum(self, *values: float) -> list[float]:
        import torch.distributed as dist

        return self._reduce(list(values), dist.ReduceOp.SUM)


def _user_modules() -> dict[str, str]:
    """Model files the recipe imported (compress.models.import_callable): the workers import them under
    the same names so that the pickled module finds its classes."""
    return {name: m.__file__ for name, m in sys.modules.items() if name.startswith("compress_user_") and m.__file__}


def launch(module, teacher, train, cfg, *, log: Callable[[str], None], evaluate: Callable[[object], str], where: str,
           threads: int, masks: dict | None, seed: int, nncf_from=None, qat=None) -> list[dict]:
    """Train `module` in place in `cfg.devices` processes; the same records as `compress.train.finetune`.

    A model NNCF has wrapped (QAT) does not pickle: `nncf_from` is the FP32 module it was made from,
    and the workers rebuild the fake-quant model from it with NNCF's own serialization
    (`nncf.torch.get_config` / `load_from_config`) and `module`'s state_dict (calibrated ranges
    included). `qat` (the stage's QatConfig) gives them its freezing schedule."""
    import torch

    from .train import TrainingDiverged

    with tempfile.TemporaryDirectory(prefix="compress-ddp-") as tmp:
        folder = Path(tmp)
        try:
            if nncf_from is not None:
                import nncf.torch

                model = {"module": nncf_from, "nncf_config": nncf.torch.get_config(module),
                         "state_dict": module.state_dict(), "qat": qat}
            else:
                model = {"module": module}
            torch.save({**model, "teacher": teacher, "train": train, "cfg": cfg, "masks": masks,
                        "seed": seed, "where": where}, folder / "payload.pt")
        except Exception as exc:
            raise StageError(f"multi-process fine-tuning could not hand the model to the workers: {first_line(exc)}",
                             where=f"{where}.finetune.devices", hint="Use devices: 1 (train in this process).") from exc
        (folder / "modules.json").write_text(json.dumps(_user_modules()))
        per_rank = max(1, threads // cfg.devices)
        where_ = f"{cfg.nodes} nodes x {cfg.devices}" if cfg.nodes > 1 else f"{cfg.devices}"
        log(f"fine-tuning in {where_} processes (torchrun, DDP over gloo, {per_rank} thread(s) each)"
            + (f"; BatchNorm statistics re-estimated on {cfg.bn_recalibration} batches first" if cfg.bn_recalibration else ""))
        if cfg.nodes > 1:
            rc = _on_ray_nodes(folder, cfg, per_rank, where)
        else:
            rc = _torchrun(folder, ["--standalone", f"--nproc_per_node={cfg.devices}"], per_rank)
        errors = sorted(folder.glob("error-*.json"))
        if errors:
            err = json.loads(errors[0].read_text())
            if err["type"] == "TrainingDiverged":
                _load_epoch(module, folder, err["epoch"])
                raise TrainingDiverged(err["message"], epoch=err["epoch"], where=err["where"], hint=err["hint"])
            if err["exit_code"] == InputError.exit_code:   # e.g. no labels and no distill: the user's to fix
                raise InputError(err["message"], where=err["where"], hint=err["hint"])
            raise StageError(f"multi-process fine-tuning failed on rank {err['rank']}: {err['message']}",
                             where=f"{where}.finetune.devices",
                             hint="A connection error on one rank means another rank died (killed, out of memory); "
                                  "devices: 1 runs the same training in this process.")
        history_file = folder / "history.json"
        if rc != 0 or not history_file.is_file():
            lines = (folder / "torchrun.log").read_text(errors="replace").splitlines()
            said = [line.strip() for line in lines if ("Error" in line or "exitcode" in line or "Signal" in line)
                    and "Warning" not in line]
            raise StageError(f"multi-process fine-tuning failed: torchrun exited with code {rc} and no rank reported "
                             f"an error (a worker was killed?); torchrun said: {said[-1][:300] if said else 'nothing'}",
                             where=f"{where}.finetune.devices")
        history = json.loads(history_file.read_text())
        for record in history:   # the metric of every epoch, measured here on the weights rank 0 saved
            _load_epoch(module, folder, record["epoch"])
            record["metric"] = evaluate(module)
            log(f"fine-tune epoch {record['epoch']}/{cfg.epochs} ({record['processes']} processes): loss {record['loss']:.4f}, "
                f"{record['metric']}")
    module.eval()
    return history


def _torchrun(folder: Path, args: list[str], per_rank: int) -> int:
    """torchrun `args` -m compress.ddp_worker FOLDER on this machine, its output in FOLDER/torchrun.log."""
    env = {**os.environ, "OMP_NUM_THREADS": str(per_rank), "COMPRESS_DDP_THREADS": str(per_rank),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                          *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-m", "torch.distributed.run", *args, "-m", "compress.ddp_worker", str(folder)]
    with open(folder / "torchrun.log", "ab") as out:
        return subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode


def _node_address() -> tuple[str, int]:
    """This node's IP and a free port on it: where rank 0's c10d rendezvous will listen."""
    import socket

    import ray

    with socket.socket() as s:
        s.bind(("", 0))
        return ray.util.get_node_ip_address(), s.getsockname()[1]


def _node_run(node_rank: int, files: dict[str, bytes], cfg, per_rank: int, master: tuple[str, int]) -> dict:
    """One node's share, as a Ray task: torchrun with `devices` processes joining the others at `master`.
    Returns its exit code and what its ranks wrote (rank 0's epochs and history, any rank's error)."""
    folder = Path(tempfile.mkdtemp(prefix="compress-ddp-node-"))
    try:
        for name, data in files.items():
            (folder / name).write_bytes(data)
        rc = _torchrun(folder, [f"--nnodes={cfg.nodes}", f"--node_rank={node_rank}",
                                f"--nproc_per_node={cfg.devices}", f"--master_addr={master[0]}",
                                f"--master_port={master[1]}"], per_rank)
        back = {p.name: p.read_bytes() for p in folder.iterdir()
                if p.name.startswith(("epoch-", "error-", "history")) or p.name == "torchrun.log"}
        return {"rc": rc, "files": back}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _on_ray_nodes(folder: Path, cfg, per_rank: int, where: str) -> int:
    """`cfg.nodes` torchruns, one per Ray node (STRICT_SPREAD placement group, `devices` CPUs each), joined by
    torchrun's rendezvous at the first node; what they wrote comes back into `folder`."""
    from .executors import _import_ray, connect

    ours = not _import_ray().is_initialized()   # a run inside a Ray task (a sweep point) keeps its connection
    ray = connect(cfg.ray)
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = None
    try:
        alive = [n for n in ray.nodes() if n.get("Alive")]
        if sum(n["Resources"].get("CPU", 0) >= cfg.devices for n in alive) < cfg.nodes:
            raise InputError(f"the Ray cluster at {cfg.ray} cannot give {cfg.nodes} different nodes {cfg.devices} "
                             f"CPU(s) each (it has {len(alive)} alive node(s): "
                             + ", ".join(f"{n['Resources'].get('CPU', 0):g} CPU" for n in alive) + ")",
                             where=f"{where}.finetune.nodes", hint="Start more nodes (ray start --address ...), or "
                             "lower nodes / devices.")
        group = placement_group([{"CPU": cfg.devices}] * cfg.nodes, strategy="STRICT_SPREAD")
        ready, _ = ray.wait([group.ready()], timeout=120)
        if not ready:
            raise InputError(f"the Ray cluster at {cfg.ray} cannot give {cfg.nodes} different nodes {cfg.devices} CPU(s) "
                             "within 120 s: its nodes are busy", where=f"{where}.finetune.nodes",
                             hint="Wait for the running tasks (ray status), or lower nodes / devices.")

        def on(bundle: int):
            return {"scheduling_strategy": PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=bundle),
                    "num_cpus": cfg.devices}

        master = ray.get(ray.remote(_node_address).options(**on(0)).remote())
        files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        task = ray.remote(_node_run)
        results = ray.get([task.options(**on(i), max_retries=0).remote(i, files, cfg, per_rank, master)
                           for i in range(cfg.nodes)])
    finally:
        if group is not None:
            remove_placement_group(group)
        if ours:
            ray.shutdown()
    with open(folder / "torchrun.log", "ab") as out:
        for i, result in enumerate(results):
            out.write(f"--- node {i}\n".encode() + result["files"].pop("torchrun.log", b""))
            for name, data in result["files"].items():
                (folder / name).write_bytes(data)
    return max((r["rc"] for r in results), key=abs)


def _load_epoch(module, folder: Path, epoch: int) -> None:
    import torch

    module.load_state_dict(torch.load(folder / f"epoch-{epoch}.pt", weights_only=True))


def main(folder: Path) -> None:
    import importlib.util

    import torch

    from .train import finetune, recalibrate_bn

    for name, path in json.loads((folder / "modules.json").read_text()).items():
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(Path(path).parent))
        spec.loader.exec_module(sys.modules[name])
    payload = torch.load(folder / "payload.pt", weights_only=False)
    group = Group(payload["seed"])
    module, cfg, threads = payload["module"], payload["cfg"], int(os.environ["COMPRESS_DDP_THREADS"])
    on_step = None
    if "nncf_config" in payload:   # QAT: the fake-quant model rebuilt from the FP32 one, ranges and all
        import nncf.torch

        from .stages.qat import freezer

        module = nncf.torch.load_from_config(module, payload["nncf_config"])
        module.load_state_dict(payload["state_dict"])
        on_step = freezer(payload["qat"], module, lambda _: None)
    rank0 = group.rank == 0
    torch.set_num_threads(threads)
    if cfg.bn_recalibration:   # every rank the same batches: identical statistics, before DDP syncs anything
        recalibrate_bn(module, payload["train"], cfg.bn_recalibration, cfg.batch_size, payload["seed"])
        cfg = cfg.model_copy(update={"bn_recalibration": 0})
    epochs = {"done": 0}

    def save(m) -> str:
        epochs["done"] += 1
        if rank0:
            torch.save(m.state_dict(), folder / f"epoch-{epochs['done']}.pt")
        return ""

    if rank0:
        torch.save(module.state_dict(), folder / "epoch-0.pt")
    try:
        history = finetune(module, payload["teacher"], payload["train"], cfg, log=lambda _: None, evaluate=save,
                           where=payload["where"], threads=threads, masks=payload["masks"],
                           progress=_NoBar, seed=payload["seed"], ddp=group, on_step=on_step)
    except CompressError as exc:
        (folder / f"error-{group.rank}.json").write_text(json.dumps({
            "type": type(exc).__name__, "rank": group.rank, "message": exc.message, "where": exc.where, "hint": exc.hint,
            "exit_code": exc.exit_code, "epoch": getattr(exc, "epoch", None)}))
        sys.exit(1)
    except Exception as exc:
        (folder / f"error-{group.rank}.json").write_text(json.dumps({
            "type": type(exc).__name__, "rank": group.rank, "message": f"{type(exc).__name__}: {first_line(exc)}",
            "where": payload["where"], "hint": None, "exit_code": 1, "epoch": None}))
        raise
    if rank0:
        (folder / "history.json").write_text(json.dumps([{"epoch": r["epoch"], "loss": r["loss"], "processes": group.world}
                                                          for r in history]))
    import torch.distributed as dist

    dist.destroy_process_group()


class _NoBar:
    def __init__(self, description: str, total: int):
        pass

    def update(self, n: int, **values) -> None:
        pass

    def close(self) -> None:
        pass


if __name__ == "__main__":
    main(Path(sys.argv[1]))
