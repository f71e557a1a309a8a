"""Data factory for the segmentation recipes: (inputs, targets) batches from a scenes .npz.

Recipe use (`data.calibration` / `data.eval`)::

    calibration: {factory: data/fashion_seg.py:batches, kwargs: {path: ../../calibration_data/fashion_seg_calib.npz}}

compress resolves `factory` against the recipe file's folder but passes `kwargs` as they are.
So a relative `path` here is resolved against THIS file's folder (recipes/data/), which makes
the recipe work from any working directory; an absolute path is used as it is.

Each batch is `(x, masks)`: x uint8 [B, 1, 56, 56] raw pixels (compress applies the recipe's
transform: /255, then mean/std), masks uint8 [B, 56, 56] (0 = background, 1 + class). The
file is read once per pass and streamed in `batch_size` slices, in file order.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def resolve(path: str | Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else (HERE / path).resolve()


def batches(path: str, batch_size: int = 32) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (x uint8 [B,1,56,56], masks uint8 [B,56,56]) from the .npz at `path` (see module doc)."""
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    file = resolve(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist (relative paths start at {HERE})")
    with np.load(file, allow_pickle=False) as archive:
        missing = {"x", "masks"} - set(archive.files)
        if missing:
            raise KeyError(f"{file.name} lacks array(s) {sorted(missing)}; it has {archive.files}")
        x, masks = archive["x"], archive["masks"]
    if len(x) != len(masks) or x.shape[2:] != masks.shape[1:]:
        raise ValueError(f"{file.name}: x {x.shape} and masks {masks.shape} do not match")
    for start in range(0, len(x), batch_size):
        yield x[start:start + batch_size], masks[start:start + batch_size]
