#!/usr/bin/env python
"""Train the MobileNet-style Fashion-MNIST classifiers of the accuracy-recovery example
(recipes/models/fashion_mobile.py: FashionMobileV2 with ReLU6, FashionMobileV3 with HardSwish + SE).

Data: the shipped 20,000-image training subset (calibration_data/fashion_mnist_train.npz), so this runs
offline from the repo alone. Seeded; random horizontal flips; AdamW with a one-cycle schedule and no
weight decay on the depthwise filters (as in the MobileNet papers), which leaves their per-channel
ranges free to spread: the usual reason these nets lose accuracy under per-tensor INT8.

    .venv/bin/python scripts/train_fashion_mobile.py --arch v2 [--epochs 6] [--out calibration_data/fashion_mobilev2.pt]
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_small_cnn import fit

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "calibration_data"


def model_class(arch: str):
    spec = importlib.util.spec_from_file_location("fashion_mobile", ROOT / "recipes" / "models" / "fashion_mobile.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if arch.startswith("tv-"):   # torchvision's own architecture, image resized inside the model
        return lambda **kw: mod.FashionTorchvision(arch[3:], size=kw["size"], width_mult=kw["width_mult"])
    return {"v2": mod.FashionMobileV2, "v3": mod.FashionMobileV3}[arch]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=["v2", "v3", "tv-mobilenet_v2", "tv-mobilenet_v3_small"], required=True)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--width", type=int, default=16, help="stem channels; the blocks scale with it")
    ap.add_argument("--head", type=int, default=256, help="channels of the last 1x1 convolution")
    ap.add_argument("--hidden", type=int, default=0, help="a hidden Linear layer in the classifier, as torchvision's "
                    "MobileNetV3 has (0: none)")
    ap.add_argument("--size", type=int, default=64, help="tv-*: the size the model resizes its input to")
    ap.add_argument("--width-mult", type=float, default=1.0, help="tv-*: torchvision's width multiplier")
    ap.add_argument("--data", choices=["train", "train_full"], default="train",
                    help="the shipped 20,000-image subset, or all 60,000 training images")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    out = args.out or DATA / f"fashion_mobile{args.arch}.pt"
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    with np.load(DATA / f"fashion_mnist_{args.data}.npz") as f:
        x_train, y_train = f["x"], f["y"]
    with np.load(DATA / "fashion_mnist_eval.npz") as f:
        x_eval, y_eval = f["x"], f["y"]
    if args.arch.startswith("tv-"):
        model = model_class(args.arch)(size=args.size, width_mult=args.width_mult)
    else:
        model = model_class(args.arch)(width=args.width, head=args.head, hidden=args.hidden)
    depthwise = [p for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1
                 for p in m.parameters()]
    ids = {id(p) for p in depthwise}
    groups = [{"params": [p for p in model.parameters() if id(p) not in ids], "weight_decay": 1e-4},
              {"params": depthwise, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=args.lr)
    fit(model, opt, args.lr, args.epochs, args.batch_size, (x_train, y_train), (x_eval, y_eval), label_smoothing=0.05)
    model.eval()
    torch.save(model.state_dict(), out)
    print(f"wrote {out} ({sum(p.numel() for p in model.parameters())} parameters)")


if __name__ == "__main__":
    main()
