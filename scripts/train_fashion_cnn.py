#!/usr/bin/env python
"""Train FashionCNN on Fashion-MNIST and write the quickstart's model + data.

Data source: Debian package ``dataset-fashion-mnist`` (IDX gzip files under
/usr/share/datasets/fashion-mnist). Install with:

    apt-get install -y dataset-fashion-mnist

Usage (from the repo root):

    .venv/bin/python scripts/train_fashion_cnn.py [--out-dir calibration_data] [--epochs 4]

Writes to --out-dir:
  fashion_cnn.pt             state_dict() of FashionCNN (float32)
  fashion_mnist_calib.npz    1000 training images (100/class, seeded), x uint8 [N,1,28,28], y int64 [N]
  fashion_mnist_eval.npz     2000 test images (200/class, seeded), same format

Normalisation used for training/eval: x = (uint8 / 255 - 0.2860) / 0.3530.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import os
import random
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_FILE = REPO_ROOT / "recipes" / "models" / "fashion_cnn.py"
DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")

MEAN = 0.2860
STD = 0.3530
SEED = 0
N_CALIB_PER_CLASS = 100
N_EVAL_PER_CLASS = 200
NUM_CLASSES = 10


def load_model_class():
    spec = importlib.util.spec_from_file_location("fashion_cnn", MODEL_FILE)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod.FashionCNN


def read_idx(path: Path) -> np.ndarray:
    """Parse an (optionally gzipped) IDX file into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: unsupported IDX header (dtype code {dtype_code:#x}); expected unsigned byte")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {np.prod(dims)} values, found {arr.size}")
    return arr.reshape(dims)


def load_split(data_dir: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(data_dir / f"{prefix}-images-idx3-ubyte.gz")
    y = read_idx(data_dir / f"{prefix}-labels-idx1-ubyte.gz")
    return x[:, None, :, :].copy(), y.astype(np.int64)


def balanced_subset(y: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in range(NUM_CLASSES)])
    rng.shuffle(idx)  # interleave classes so any prefix / batch is mixed
    return idx


def normalise(x_u8: torch.Tensor) -> torch.Tensor:
    return (x_u8.float() / 255.0 - MEAN) / STD


@torch.no_grad()
def accuracy(model: torch.nn.Module, x_u8: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x_u8), batch):
        xb = normalise(torch.from_numpy(x_u8[i : i + batch]))
        correct += (model(xb).argmax(1).numpy() == y[i : i + batch]).sum()
    return float(correct) / len(x_u8)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default="calibration_data", type=Path)
    ap.add_argument("--epochs", default=4, type=int)
    ap.add_argument("--data-dir", default=DEFAULT_DATA_DIR, type=Path)
    ap.add_argument("--lr", default=3e-3, type=float)
    ap.add_argument("--batch-size", default=128, type=int)
    args = ap.parse_args()

    if not (args.data_dir / "train-images-idx3-ubyte.gz").exists():
        print(f"error: Fashion-MNIST not found in {args.data_dir}; run `apt-get install -y dataset-fashion-mnist`",
              file=sys.stderr)
        return 2

    # Reproducibility.
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

    x_train, y_train = load_split(args.data_dir, "train")
    x_test, y_test = load_split(args.data_dir, "t10k")
    print(f"train {x_train.shape} test {x_test.shape}")

    # Fixed, seeded, class-balanced subsets (independent of training RNG).
    calib_idx = balanced_subset(y_train, N_CALIB_PER_CLASS, np.random.default_rng(1234))
    eval_idx = balanced_subset(y_test, N_EVAL_PER_CLASS, np.random.default_rng(5678))

    FashionCNN = load_model_class()
    model = FashionCNN(num_classes=NUM_CLASSES)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"FashionCNN params: {n_params}")

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
            xb = normalise(xt[bi])
            # Light augmentation: random horizontal flip (seeded).
            flip = torch.rand(len(bi), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = F.cross_entropy(model(xb), yt[bi], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item()
        acc = accuracy(model, x_test, y_test)
        print(f"epoch {epoch + 1}/{args.epochs}  loss {total_loss / steps_per_epoch:.4f}  "
              f"test_acc {acc:.4f}  elapsed {time.time() - t0:.0f}s", flush=True)
    train_time = time.time() - t0

    model.eval()
    test_acc = accuracy(model, x_test, y_test)
    eval_acc = accuracy(model, x_test[eval_idx], y_test[eval_idx])
    calib_acc = accuracy(model, x_train[calib_idx], y_train[calib_idx])

    args.out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    torch.save(state, args.out_dir / "fashion_cnn.pt")
    np.savez_compressed(args.out_dir / "fashion_mnist_calib.npz",
                        x=x_train[calib_idx].astype(np.uint8), y=y_train[calib_idx].astype(np.int64))
    np.savez_compressed(args.out_dir / "fashion_mnist_eval.npz",
                        x=x_test[eval_idx].astype(np.uint8), y=y_test[eval_idx].astype(np.int64))

    print(f"training time: {train_time:.1f}s")
    print(f"test accuracy (full 10k): {test_acc:.4f}")
    print(f"eval-subset accuracy (2000): {eval_acc:.4f}")
    print(f"calib-subset accuracy (1000, train): {calib_acc:.4f}")
    print(f"wrote {args.out_dir}/fashion_cnn.pt, fashion_mnist_calib.npz, fashion_mnist_eval.npz")
    return 0


if __name__ == "__main__":
    sys.exit(main())
