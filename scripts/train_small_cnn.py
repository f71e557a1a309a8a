#!/usr/bin/env python
"""Train a deliberately small FashionCNN (default width 4, ~2.5k parameters) for the QAT example.

Small networks are where post-training INT8 hurts: with few channels each one carries a lot, and
rounding its activations and weights costs several points of top-1, which quantization-aware
training wins back (recipes/qat-openvino.yaml shows FP32 -> PTQ -> QAT).

Data: the shipped 20,000-image training subset (calibration_data/fashion_mnist_train.npz), so this
runs offline from the repo alone. Seeded; random horizontal flips; AdamW with a one-cycle schedule.

    .venv/bin/python scripts/train_small_cnn.py [--width 4] [--epochs 8] [--out calibration_data/fashion_cnn_w4.pt]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_fashion_cnn import accuracy, load_model_class, normalise

DATA = Path(__file__).resolve().parent.parent / "calibration_data"


def fit(model, opt, lr: float, epochs: int, batch_size: int, train, evaluation, label_smoothing: float = 0.0) -> None:
    """Seeded epochs over `train` (uint8 x, labels y) with random horizontal flips and a one-cycle schedule;
    prints top-1 on `evaluation` after each epoch."""
    (x_train, y_train), (x_eval, y_eval) = train, evaluation
    steps = (len(x_train) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    rng = np.random.default_rng(0)
    start = time.time()
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(x_train))
        for i in range(steps):
            idx = order[i * batch_size:(i + 1) * batch_size]
            xb = normalise(torch.from_numpy(x_train[idx]))
            flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
            xb[flip] = xb[flip].flip(-1)
            loss = F.cross_entropy(model(xb), torch.from_numpy(y_train[idx]), label_smoothing=label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.4f}, eval top-1 {100 * accuracy(model, x_eval, y_eval):.2f}% "
              f"({time.time() - start:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--out", type=Path, default=DATA / "fashion_cnn_w4.pt")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    with np.load(DATA / "fashion_mnist_train.npz") as f:
        x_train, y_train = f["x"], f["y"]
    with np.load(DATA / "fashion_mnist_eval.npz") as f:
        x_eval, y_eval = f["x"], f["y"]
    model = load_model_class()(width=args.width)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    fit(model, opt, args.lr, args.epochs, args.batch_size, (x_train, y_train), (x_eval, y_eval))
    model.eval()
    torch.save(model.state_dict(), args.out)
    print(f"wrote {args.out} ({sum(p.numel() for p in model.parameters())} parameters)")


if __name__ == "__main__":
    main()
