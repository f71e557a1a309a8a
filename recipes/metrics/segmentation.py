"""Semantic-segmentation metric for compress: mean IoU and pixel accuracy from torchmetrics.

    metric: {function: metrics/segmentation.py:MeanIoU, kwargs: {num_classes: 11}, primary: miou}

A streaming metric class: compress creates one instance per evaluated model, calls
`update(outputs, targets)` per batch and `compute()` once. `outputs` maps output names to numpy
arrays; the per-pixel logits are `outputs[output]` ([N, C, H, W], "masks" by default) and the
targets are integer masks [N, H, W] (numpy or torch). Both figures are percentages (x100), so a
`max_accuracy_drop` gate reads in points.

    miou       torchmetrics MulticlassJaccardIndex(average="macro"): IoU per class, averaged over
               the classes present in the targets or the predictions
    pixel_acc  torchmetrics MulticlassAccuracy(average="micro"): fraction of pixels right
"""
from __future__ import annotations

import numpy as np
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex


class MeanIoU:
    def __init__(self, num_classes: int = 11, ignore_index: int | None = None, output: str = "masks"):
        self.num_classes, self.output = int(num_classes), output
        self.iou = MulticlassJaccardIndex(num_classes=self.num_classes, average="macro", ignore_index=ignore_index)
        self.acc = MulticlassAccuracy(num_classes=self.num_classes, average="micro", ignore_index=ignore_index)
        self.updates = 0

    def update(self, outputs: dict, targets) -> None:
        if self.output not in outputs:
            raise KeyError(f"no output named {self.output!r}; the model gives {list(outputs)}")
        if targets is None:
            raise ValueError("segmentation needs target masks; the data yielded none")
        logits = np.asarray(outputs[self.output])
        if logits.ndim != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(f"output {self.output!r} has shape {list(logits.shape)}; expected "
                             f"[N, {self.num_classes}, H, W] logits")
        target = torch.as_tensor(np.asarray(targets), dtype=torch.long)
        pred = torch.from_numpy(logits.argmax(1))
        if pred.shape != target.shape:
            raise ValueError(f"predicted masks {list(pred.shape)} and targets {list(target.shape)} differ")
        self.iou.update(pred, target)
        self.acc.update(pred, target)
        self.updates += 1

    def compute(self) -> dict[str, float]:
        if not self.updates:
            raise ValueError("no batches were evaluated")
        return {"miou": 100.0 * float(self.iou.compute()), "pixel_acc": 100.0 * float(self.acc.compute())}
