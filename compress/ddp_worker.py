"""Multi-process fine-tuning: `finetune: {devices: N}` (prune, qat) trains under torch.distributed with DDP.

The stage calls `launch()`: it writes the module, teacher, training data and settings to a temporary
folder and runs `python -m torch.distributed.run --standalone --nproc_per_node N -m compress.ddp_worker
FOLDER`. Each rank wraps the module in DistributedDataParallel (gloo, on CPU), reads its
DistributedSampler shard of the training data with batch_size / N samples per step (the same global
batch as one process), and runs `compress.train.finetune`; rank 0 saves the weights after every epoch.
The parent loads them back, measuring the metric of each epoch itself. A failing rank writes its error;
the parent raises one error (no traceback) and, as the stage raises, writes no artifact.
"""
from __future__ import annotations

import dataclasses
import json
import os
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
        env = {**os.environ, "OMP_NUM_THREADS": str(per_rank), "COMPRESS_DDP_THREADS": str(per_rank),
               "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                              *filter(None, [os.environ.get("PYTHONPATH")])])}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={cfg.devices}",
               "-m", "compress.ddp_worker", str(folder)]
        log(f"fine-tuning in {cfg.devices} processes (torchrun, DDP over gloo, {per_rank} thread(s) each)"
            + (f"; BatchNorm statistics re-estimated on {cfg.bn_recalibration} batches first" if cfg.bn_recalibration else ""))
        with open(folder / "torchrun.log", "wb") as out:
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
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
            log(f"fine-tune epoch {record['epoch']}/{cfg.epochs} ({cfg.devices} processes): loss {record['loss']:.4f}, "
                f"{record['metric']}")
    module.eval()
    return history


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
        (folder / "history.json").write_text(json.dumps([{k: r[k] for k in ("epoch", "loss")} for r in history]))
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
