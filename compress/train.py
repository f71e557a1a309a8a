"""Fine-tuning shared by stages that train (prune now, QAT next): labels and/or distillation
from the FP32 model, progress per epoch with loss and eval metric, stop on a non-finite loss."""
from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable

import numpy as np

from .data import Dataset
from .errors import InputError
from .models import flatten_outputs
from .recipe import FinetuneConfig


def _tensors(feeds: dict[str, np.ndarray]):
    import torch

    return [torch.from_numpy(np.ascontiguousarray(v)) for v in feeds.values()]


def _first(out):
    return flatten_outputs(out)[0][0]


def _distill_loss(student, teacher, temperature: float):
    """Class scores [N, C]: KL between the softened distributions (scaled by T^2); any other output
    (segmentation logits, boxes, embeddings, regression): mean squared error against the teacher."""
    import torch.nn.functional as F

    if student.ndim == 2 and student.shape[1] > 1:
        return F.kl_div(F.log_softmax(student / temperature, 1), F.softmax(teacher / temperature, 1),
                        reduction="batchmean") * temperature ** 2
    return F.mse_loss(student, teacher)


class TrainingDiverged(InputError):
    """The loss became NaN/inf. The module holds the weights of the last good epoch (`epoch`
    finished epochs; 0: the weights training started from)."""

    def __init__(self, message: str, *, epoch: int, where: str, hint: str):
        self.epoch = epoch
        super().__init__(message, where=where, hint=hint)


def recalibrate_bn(module, train: Dataset, batches: int, batch_size: int, seed: int) -> int:
    """Re-estimate BatchNorm running statistics (a plain average) over `batches` training batches,
    without gradients. Returns how many BatchNorm layers were reset (0: nothing done)."""
    import torch

    norms = [m for m in module.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or batches <= 0:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None   # cumulative average over the batches seen
    module.train()
    with torch.no_grad():
        for i, (feeds, _) in enumerate(train.batches(batch_size, shuffle=seed)):
            if i >= batches:
                break
            module(*_tensors(feeds))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    module.eval()
    return len(norms)


def finetune(module, teacher, train: Dataset, cfg: FinetuneConfig, *, log: Callable[[str], None],
             evaluate: Callable[[object], str], where: str, threads: int, masks: dict | None = None,
             progress: Callable, on_step: Callable[[int], None] | None = None, seed: int = 0,
             ddp=None) -> list[dict]:
    """Train `module` in place. Returns one record per epoch (loss, metric text). `masks` (module
    name -> bool tensor) keeps pruned weights at zero; `on_step(global_step)` runs before each
    optimizer step (freezing schedules); `progress(description, total)` gives a bar per epoch.
    `ddp` (compress.ddp_worker.Group, inside a torchrun worker): forward through DistributedDataParallel,
    each rank on its DistributedSampler shard with batch_size / world_size samples per step."""
    import torch
    import torch.nn.functional as F

    forward = ddp.wrap(module) if ddp is not None else module
    batch_size = cfg.batch_size // (ddp.world if ddp is not None else 1)

    torch.set_num_threads(threads)
    torch.manual_seed(seed)   # dropout and friends: the same recipe trains the same weights
    if cfg.bn_recalibration and recalibrate_bn(module, train, cfg.bn_recalibration, cfg.batch_size, seed):
        log(f"BatchNorm statistics re-estimated on {cfg.bn_recalibration} batches: {evaluate(module)}")
    use_labels = train.has_labels
    if not use_labels and cfg.distill is None:
        raise InputError("fine-tuning needs labels in data.train or `distill:` from the FP32 model",
                         where=f"{where}.finetune")
    alpha = cfg.distill.alpha if cfg.distill else 0.0
    if not use_labels:
        alpha = 1.0
    temperature = cfg.distill.temperature if cfg.distill else 1.0
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = {"adam": lambda: torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
                 "adamw": lambda: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
                 "sgd": lambda: torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)}[cfg.optimizer]()
    steps_per_epoch = max(1, -(-(len(ddp.shard(train, 0)) if ddp is not None else len(train)) // batch_size))
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * steps_per_epoch)
                 if cfg.schedule == "cosine" else None)
    if teacher is not None:
        teacher.eval()
    history = []
    global_step = 0
    for epoch in range(cfg.epochs):
        good = copy.deepcopy(module.state_dict())
        module.train()
        total, count = 0.0, 0
        with contextlib.closing(progress(f"epoch {epoch + 1}/{cfg.epochs}", steps_per_epoch)) as bar:
            data = train.batches(batch_size, shuffle=seed + epoch) if ddp is None else ddp.shard(train, epoch).batches(batch_size)
            for step, (feeds, labels) in enumerate(data):
                if on_step is not None:
                    on_step(global_step)
                global_step += 1
                inputs = _tensors(feeds)
                outputs = flatten_outputs(forward(*inputs))[0]
                logits = outputs[0]
                loss = torch.zeros((), dtype=logits.dtype)
                if use_labels and alpha < 1.0:
                    loss = loss + (1 - alpha) * F.cross_entropy(logits, torch.from_numpy(labels),
                                                                label_smoothing=cfg.label_smoothing)
                if alpha > 0:
                    with torch.no_grad():
                        targets = flatten_outputs(teacher(*inputs))[0]
                    # every floating-point output is distilled (a segmenter's masks and its presence head alike)
                    kd = sum(_distill_loss(s, t, temperature) for s, t in zip(outputs, targets) if s.is_floating_point())
                    loss = loss + alpha * kd
                finite = math.isfinite(float(loss.detach()))
                if ddp is not None:
                    finite = ddp.all(finite)   # every rank stops at the same step (no rank left waiting in backward)
                if not finite:
                    module.load_state_dict(good)
                    module.eval()
                    raise TrainingDiverged(f"the training loss became {float(loss.detach())} at epoch {epoch + 1}, "
                                           f"step {step + 1}; training stopped", epoch=epoch,
                                           where=f"{where}.finetune.lr",
                                           hint="Lower the learning rate, or check data.train for extreme values.")
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                if masks:
                    with torch.no_grad():
                        for name, mask in masks.items():
                            module.get_submodule(name).weight.mul_(mask)
                n = len(inputs[0])
                total += float(loss.detach()) * n
                count += n
                bar.update(1, loss=total / count)
        if ddp is not None:
            total, count = ddp.sum(total, count)
        module.eval()
        metric = evaluate(module)
        record = {"epoch": epoch + 1, "loss": total / max(count, 1), "metric": metric}
        history.append(record)
        log(f"fine-tune epoch {epoch + 1}/{cfg.epochs}: loss {record['loss']:.4f}, {metric}")
    return history
