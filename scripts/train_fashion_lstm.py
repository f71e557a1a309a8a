#!/usr/bin/env python
"""Train FashionLSTM (Fashion-MNIST rows as a 28-step sequence) and write its weights.

Data: the 20,000-image training subset shipped in the repo,
calibration_data/fashion_mnist_train.npz (2,000 per class from the Fashion-MNIST training set;
see scripts/make_train_subset.py), so this script does not need the Debian package. Accuracy is
measured on calibration_data/fashion_mnist_eval.npz (2,000 test images) and, when Debian's
``dataset-fashion-mnist`` is installed (/usr/share/datasets/fashion-mnist), on the full 10k
test set as well.

Usage (from the repo root):

    .venv/bin/python scripts/train_fashion_lstm.py [--out calibration_data/fashion_lstm.pt] [--epochs 8]

Writes --out: state_dict() of FashionLSTM (recipes/models/fashion_lstm.py, default arguments:
1 LSTM layer, hidden 128), float32.

Training: AdamW (lr 3e-3 OneCycle, weight decay 1e-4), batch 128, label smoothing 0.05,
gradient-norm clipping 1.0, no augmentation, seed 0, torch.use_deterministic_algorithms(True),
2 threads. Normalisation: x = (uint8 / 255 - 0.2860) / 0.3530, the same as FashionCNN.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_fashion_cnn import DEFAULT_DATA_DIR, accuracy, load_split, normalise

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_FILE = REPO_ROOT / "recipes" / "models" / "fashion_lstm.py"
TRAIN_NPZ = REPO_ROOT / "calibration_data" / "fashion_mnist_train.npz"
EVAL_NPZ = REPO_ROOT / "calibration_data" / "fashion_mnist_eval.npz"
SEED = 0


def load_model_class():
    spec = importlib.util.spec_from_file_location("fashion_lstm", MODEL_FILE)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod.FashionLSTM


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=REPO_ROOT / "calibration_data" / "fashion_lstm.pt", type=Path)
    ap.add_argument("--epochs", default=8, type=int)
    ap.add_argument("--lr", default=3e-3, type=float)
    ap.add_argument("--batch-size", default=128, type=int)
    ap.add_argument("--data-dir", default=DEFAULT_DATA_DIR, type=Path,
                    help="Debian Fashion-MNIST, used only to report full 10k test accuracy if present")
    args = ap.parse_args()

    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

    with np.load(TRAIN_NPZ) as d:
        x_train, y_train = d["x"], d["y"].astype(np.int64)
    with np.load(EVAL_NPZ) as d:
        x_eval, y_eval = d["x"], d["y"].astype(np.int64)
    print(f"train {x_train.shape} eval {x_eval.shape}")

    FashionLSTM = load_model_class()
    model = FashionLSTM()
    print(f"FashionLSTM params: {sum(p.numel() for p in model.parameters())}")

    xt = torch.from_numpy(x_train)
    yt = torch.from_numpy(y_train)
    n = len(xt)
    steps_per_epoch = (n + args.batch_size - 1) // args.batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.2
    )
    gen = torch.Generator().manual_seed(SEED)

    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        total_loss = 0.0
        for s in range(steps_per_epoch):
            bi = perm[s * args.batch_size : (s + 1) * args.batch_size]
            loss = F.cross_entropy(model(normalise(xt[bi])), yt[bi], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total_loss += loss.item()
        acc = accuracy(model, x_eval, y_eval)
        print(f"epoch {epoch + 1}/{args.epochs}  loss {total_loss / steps_per_epoch:.4f}  "
              f"eval_acc {acc:.4f}  elapsed {time.time() - t0:.0f}s", flush=True)
    train_time = time.time() - t0

    model.eval()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.float().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, args.out)

    print(f"training time: {train_time:.1f}s")
    print(f"eval-subset accuracy (2000): {accuracy(model, x_eval, y_eval):.4f}")
    if (args.data_dir / "t10k-images-idx3-ubyte.gz").exists():
        x_test, y_test = load_split(args.data_dir, "t10k")
        print(f"test accuracy (full 10k): {accuracy(model, x_test, y_test):.4f}")
    else:
        print(f"(full 10k test set not found in {args.data_dir}; skipped)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
