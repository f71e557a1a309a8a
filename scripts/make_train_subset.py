"""Write the shipped Fashion-MNIST training data, from Debian's dataset-fashion-mnist
(`apt-get install -y dataset-fashion-mnist`):

  calibration_data/fashion_mnist_train.npz       20,000 training images (2,000 per class, seeded), for
                                                 QAT and for training the small example models
  calibration_data/fashion_mnist_train_full.npz  all 60,000 training images in the source's order, for
                                                 fine-tuning after pruning (2 epochs = 2 passes over the
                                                 training set the FP32 model learned from)

Regenerate: .venv/bin/python scripts/make_train_subset.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_fashion_cnn import balanced_subset, load_split

DATA = Path("/usr/share/datasets/fashion-mnist")


def main() -> None:
    x, y = load_split(DATA, "train")
    idx = balanced_subset(y, 2000, np.random.default_rng(2468))
    np.savez_compressed("calibration_data/fashion_mnist_train.npz", x=x[idx].astype(np.uint8), y=y[idx])
    print(f"wrote {len(idx)} training images")
    np.savez_compressed("calibration_data/fashion_mnist_train_full.npz", x=x.astype(np.uint8), y=y)
    print(f"wrote all {len(y)} training images")


if __name__ == "__main__":
    main()
