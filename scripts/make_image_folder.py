"""Write calibration_data/fashion_png/<class>/<n>.png from the shipped Fashion-MNIST eval set.

A small class-per-subfolder image folder, so the image-folder loader (resize, crop, RGB,
normalize) runs on real images. Regenerate with: .venv/bin/python scripts/make_image_folder.py
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("calibration_data/fashion_png"))
    args = parser.parse_args()
    with np.load("calibration_data/fashion_mnist_eval.npz") as data:
        x, y = data["x"], data["y"]
    for label, name in enumerate(CLASSES):
        folder = args.out / f"{label}-{name}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in np.flatnonzero(y == label)[: args.per_class]:
            Image.fromarray(x[index, 0]).save(folder / f"{index:05d}.png", optimize=True)
    print(f"wrote {args.per_class * len(CLASSES)} images to {args.out}")


if __name__ == "__main__":
    main()
