#!/usr/bin/env python
"""Compose Fashion-MNIST items into segmentation scenes, train FashionSeg, write model + data.

Each scene is a 1x56x56 uint8 canvas holding 2 real Fashion-MNIST items (28x28) pasted at
seeded random positions whose foregrounds overlap by at most 5 % of the smaller item; the
second item lies on top. The mask is uint8 [56, 56]: 0 = background, 1 + class where the
visible item's pixel is > 30.

Sources, disjoint (no source image is in two splits):
  eval scenes         fashion_mnist_eval.npz   (Fashion-MNIST test set; 1000 of its 2000 images)
  calibration scenes  fashion_mnist_calib.npz  (1000 training-set images; 600 of them)
  training scenes     the full training set from the Debian package dataset-fashion-mnist
                      (/usr/share/datasets/fashion-mnist), minus every image byte-identical to
                      one in fashion_mnist_calib.npz; new random scenes every epoch.
                      Without the package, the 400 calibration-npz images the calibration
                      scenes do not use (a much weaker model; a warning says so).

    apt-get install -y dataset-fashion-mnist
    .venv/bin/python scripts/make_fashion_seg.py      # [--out-dir calibration_data] [--epochs 8]

Writes to --out-dir:
  fashion_seg.pt          state_dict() of FashionSeg (recipes/models/fashion_seg.py)
  fashion_seg_calib.npz   300 scenes: x uint8 [N,1,56,56], masks uint8 [N,56,56]
  fashion_seg_eval.npz    500 scenes, same format

Prints the mIoU (torchmetrics MulticlassJaccardIndex, macro over the 11 classes) and pixel
accuracy of the trained model on the eval scenes. Seeded; trains in about 3 minutes on 2 idle cores.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_FILE = REPO_ROOT / "recipes" / "models" / "fashion_seg.py"
CNN_SCRIPT = REPO_ROOT / "scripts" / "train_fashion_cnn.py"
DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")

MEAN, STD = 0.2860, 0.3530
SEED = 0
CANVAS, ITEM = 56, 28
THRESHOLD = 30             # item pixel > THRESHOLD is foreground
MAX_OVERLAP = 0.05         # foreground overlap allowed, as a fraction of the smaller item
ITEMS_PER_SCENE = 2
NUM_CLASSES = 10           # masks: 0 background, 1..10 = class + 1
N_CALIB, N_EVAL = 300, 500


def _load_file(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------- scenes
def compose_scene(items: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                  flips: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """items uint8 [K, 28, 28] -> (canvas uint8 [56, 56], mask uint8 [56, 56])."""
    canvas = np.zeros((CANVAS, CANVAS), np.uint8)
    mask = np.zeros((CANVAS, CANVAS), np.uint8)
    occupied = np.zeros((CANVAS, CANVAS), bool)
    span = CANVAS - ITEM + 1
    for k, (item, label) in enumerate(zip(items, labels)):
        if flips is not None and flips[k]:
            item = item[:, ::-1]
        fg = item > THRESHOLD
        best = None
        for _ in range(100):
            r, c = (int(v) for v in rng.integers(0, span, 2))
            overlap = int((occupied[r:r + ITEM, c:c + ITEM] & fg).sum())
            if best is None or overlap < best[0]:
                best = (overlap, r, c)
            if overlap <= MAX_OVERLAP * min(fg.sum(), max(occupied.sum(), 1)):
                break
        _, r, c = best
        region = canvas[r:r + ITEM, c:c + ITEM]
        region[:] = np.where(fg, item, np.maximum(region, item))   # the new item lies on top
        mask[r:r + ITEM, c:c + ITEM][fg] = label + 1
        occupied[r:r + ITEM, c:c + ITEM] |= fg
    return canvas, mask


def make_scenes(x: np.ndarray, y: np.ndarray, order: np.ndarray, rng: np.random.Generator,
                flip: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scenes from source images `order` (consumed ITEMS_PER_SCENE at a time, each used once)."""
    n = len(order) // ITEMS_PER_SCENE
    xs = np.zeros((n, 1, CANVAS, CANVAS), np.uint8)
    masks = np.zeros((n, CANVAS, CANVAS), np.uint8)
    present = np.zeros((n, NUM_CLASSES), np.float32)
    for i in range(n):
        idx = order[i * ITEMS_PER_SCENE:(i + 1) * ITEMS_PER_SCENE]
        flips = rng.random(ITEMS_PER_SCENE) < 0.5 if flip else None
        xs[i, 0], masks[i] = compose_scene(x[idx, 0], y[idx], rng, flips)
        present[i, y[idx]] = 1.0
    return xs, masks, present


def presence_of(masks: np.ndarray) -> np.ndarray:
    present = np.zeros((len(masks), NUM_CLASSES), np.float32)
    for i, m in enumerate(masks):
        labels = np.unique(m)
        present[i, labels[labels > 0] - 1] = 1.0
    return present


# ---------------------------------------------------------------- training
def normalise(x_u8: torch.Tensor) -> torch.Tensor:
    return (x_u8.float() / 255.0 - MEAN) / STD


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: np.ndarray, masks: np.ndarray, batch: int = 100) -> dict[str, float]:
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

    model.eval()
    miou = MulticlassJaccardIndex(num_classes=NUM_CLASSES + 1, average="macro")
    acc = MulticlassAccuracy(num_classes=NUM_CLASSES + 1, average="micro")
    presence_hits = 0
    for i in range(0, len(x), batch):
        out = model(normalise(torch.from_numpy(x[i:i + batch])))
        target = torch.from_numpy(masks[i:i + batch]).long()
        pred = out["masks"].argmax(1)
        miou.update(pred, target)
        acc.update(pred, target)
        want = torch.from_numpy(presence_of(masks[i:i + batch])) > 0.5
        presence_hits += int(((out["presence"] > 0) == want).all(1).sum())
    return {"miou": float(miou.compute()), "pixel_acc": float(acc.compute()),
            "presence_exact": presence_hits / len(x)}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default=REPO_ROOT / "calibration_data", type=Path)
    ap.add_argument("--source-dir", default=REPO_ROOT / "calibration_data", type=Path,
                    help="folder with fashion_mnist_calib.npz and fashion_mnist_eval.npz")
    ap.add_argument("--data-dir", default=DEFAULT_DATA_DIR, type=Path, help="Fashion-MNIST IDX files (Debian)")
    ap.add_argument("--epochs", default=8, type=int)
    ap.add_argument("--scenes-per-epoch", default=9600, type=int)
    ap.add_argument("--lr", default=4e-3, type=float)
    ap.add_argument("--batch-size", default=64, type=int)
    args = ap.parse_args()

    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

    with np.load(args.source_dir / "fashion_mnist_calib.npz") as f:
        calib_x, calib_y = f["x"], f["y"]
    with np.load(args.source_dir / "fashion_mnist_eval.npz") as f:
        eval_x, eval_y = f["x"], f["y"]

    # Eval and calibration scenes: each from its own source file, each source image used once.
    rng = np.random.default_rng(2024)
    eval_order = rng.permutation(len(eval_x))[:N_EVAL * ITEMS_PER_SCENE]
    ev_x, ev_m, _ = make_scenes(eval_x, eval_y, eval_order, np.random.default_rng(2025))
    calib_perm = np.random.default_rng(2026).permutation(len(calib_x))
    calib_order, calib_rest = calib_perm[:N_CALIB * ITEMS_PER_SCENE], calib_perm[N_CALIB * ITEMS_PER_SCENE:]
    ca_x, ca_m, _ = make_scenes(calib_x, calib_y, calib_order, np.random.default_rng(2027))

    # Training items: the full training set minus anything identical to a calibration-npz image.
    if (args.data_dir / "train-images-idx3-ubyte.gz").exists():
        cnn = _load_file("train_fashion_cnn", CNN_SCRIPT)
        train_x, train_y = cnn.load_split(args.data_dir, "train")
        held_out = {img.tobytes() for img in calib_x}
        keep = np.array([img.tobytes() not in held_out for img in train_x])
        train_x, train_y = train_x[keep], train_y[keep]
        source = f"{args.data_dir} (train, {int((~keep).sum())} images held out as calibration sources)"
    else:
        print(f"warning: Fashion-MNIST not found in {args.data_dir} (apt-get install -y dataset-fashion-mnist); "
              f"training on the {len(calib_rest)} calibration-npz images no scene uses: expect a much lower mIoU",
              file=sys.stderr)
        train_x, train_y = calib_x[calib_rest], calib_y[calib_rest]
        source = "fashion_mnist_calib.npz leftovers"
    print(f"train items: {len(train_x)} from {source}; calib scenes {len(ca_x)}; eval scenes {len(ev_x)}")

    FashionSeg = _load_file("fashion_seg", MODEL_FILE).FashionSeg
    model = FashionSeg()
    print(f"FashionSeg params: {sum(p.numel() for p in model.parameters())}")
    steps_per_epoch = args.scenes_per_epoch // args.batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch,
                                                pct_start=0.15)
    scene_rng = np.random.default_rng(SEED)

    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        need = steps_per_epoch * args.batch_size * ITEMS_PER_SCENE
        order = np.concatenate([scene_rng.permutation(len(train_x)) for _ in range(-(-need // len(train_x)))])[:need]
        xs, ms, ps = make_scenes(train_x, train_y, order, scene_rng, flip=True)
        xs, ms, ps = torch.from_numpy(xs), torch.from_numpy(ms).long(), torch.from_numpy(ps)
        total = 0.0
        for s in range(steps_per_epoch):
            sl = slice(s * args.batch_size, (s + 1) * args.batch_size)
            out = model(normalise(xs[sl]))
            loss = (F.cross_entropy(out["masks"], ms[sl])
                    + 0.5 * F.binary_cross_entropy_with_logits(out["presence"], ps[sl]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        print(f"epoch {epoch + 1}/{args.epochs}  loss {total / steps_per_epoch:.4f}  "
              f"elapsed {time.time() - t0:.0f}s", flush=True)
    train_time = time.time() - t0

    ev = evaluate(model, ev_x, ev_m)
    ca = evaluate(model, ca_x, ca_m)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    torch.save(state, args.out_dir / "fashion_seg.pt")
    np.savez_compressed(args.out_dir / "fashion_seg_calib.npz", x=ca_x, masks=ca_m)
    np.savez_compressed(args.out_dir / "fashion_seg_eval.npz", x=ev_x, masks=ev_m)

    print(f"training time: {train_time:.1f}s")
    print(f"eval scenes ({len(ev_x)}): mIoU {100 * ev['miou']:.2f}  pixel acc {100 * ev['pixel_acc']:.2f}  "
          f"presence exact {100 * ev['presence_exact']:.1f}%")
    print(f"calib scenes ({len(ca_x)}): mIoU {100 * ca['miou']:.2f}  pixel acc {100 * ca['pixel_acc']:.2f}")
    total_bytes = 0
    for name in ("fashion_seg.pt", "fashion_seg_calib.npz", "fashion_seg_eval.npz"):
        path = args.out_dir / name
        total_bytes += path.stat().st_size
        print(f"{name}  {path.stat().st_size} bytes  sha256 {sha256(path)}")
    print(f"total {total_bytes} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
