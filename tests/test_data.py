"""Data: .npz/.npy arrays and image folders, streamed in batches, with clear errors for bad sets."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from compress.data import open_dataset
from compress.errors import DataError
from compress.models import ModelSpec
from compress.recipe import DataSource, InputSpec, Transform

from conftest import CALIB, ROOT

SPEC = ModelSpec(inputs=[InputSpec(shape=[1, 1, 28, 28])], outputs=["output"])
NORM = Transform(mean=[0.2860], std=[0.3530])


def ds(path, spec=SPEC, transform=NORM, **kw):
    return open_dataset(DataSource(path=str(path), **kw), transform, spec, base_dir=ROOT, seed=0, where="data.eval")


def test_npz_batches_are_normalized_with_labels():
    data = ds(CALIB, samples=100)
    assert len(data) == 100 and data.has_labels and data.total == 1000
    batches = list(data.batches(32))
    assert [len(b[1]) for b in batches] == [32, 32, 32, 4]
    x = np.concatenate([b[0]["input"] for b in batches])
    assert x.dtype == np.float32 and x.shape == (100, 1, 28, 28)
    with np.load(CALIB) as raw:
        expected = (raw["x"][data.indices].astype(np.float32) / 255 - 0.2860) / 0.3530
    np.testing.assert_allclose(x, expected, rtol=1e-6)


def test_sample_subset_is_seeded_and_spread_over_classes():
    first, second = ds(CALIB, samples=200), ds(CALIB, samples=200)
    np.testing.assert_array_equal(first.indices, second.indices)
    labels = np.concatenate([b[1] for b in first.batches(64)])
    assert len(np.unique(labels)) == 10  # a prefix would be one or two classes


def test_npy_with_separate_labels(tmp):
    x = np.random.default_rng(0).random((20, 1, 28, 28), dtype=np.float32)
    np.save(tmp / "x.npy", x)
    np.save(tmp / "y.npy", np.arange(20) % 10)
    data = ds(tmp / "x.npy", labels=str(tmp / "y.npy"), transform=Transform())
    feeds, labels = next(data.batches(20))
    np.testing.assert_array_equal(feeds["input"], x)
    np.testing.assert_array_equal(labels, np.arange(20) % 10)


def _image_folder(root, classes=2, per_class=3, size=(40, 30), mode="L"):
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(root / f"class{c}" / f"{i}.png")
    return root


def test_image_folder_labels_from_subfolders_and_resize_crop(tmp):
    folder = _image_folder(tmp / "imgs", mode="RGB")
    spec = ModelSpec(inputs=[InputSpec(shape=[1, 3, 24, 24])], outputs=["output"])
    data = ds(folder, spec=spec,
              transform=Transform(resize=26, center_crop=24, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]))
    feeds, labels = next(data.batches(10))
    assert feeds["input"].shape == (6, 3, 24, 24) and sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert feeds["input"].min() >= -2.0 - 1e-6 and feeds["input"].max() <= 2.0 + 1e-6


def test_image_folder_grayscale_to_rgb_and_flat_folder_has_no_labels(tmp):
    folder = tmp / "flat"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((28, 28), i * 60, np.uint8), "L").save(folder / f"{i}.png")
    spec = ModelSpec(inputs=[InputSpec(shape=[1, 3, 28, 28])], outputs=["output"])
    data = ds(folder, spec=spec, transform=Transform())
    feeds, labels = next(data.batches(4))
    assert labels is None and not data.has_labels
    assert feeds["input"].shape == (4, 3, 28, 28)
    np.testing.assert_allclose(feeds["input"][1, :, 0, 0], [60 / 255] * 3, rtol=1e-6)


def test_shipped_image_folder_streams():
    data = ds(ROOT / "calibration_data" / "fashion_png")
    assert data.total == 300 and data.has_labels


@pytest.mark.parametrize("make, fragment", [
    (lambda t: t / "missing.npz", "does not exist"),
    (lambda t: (t / "empty").mkdir() or t / "empty", "holds no images"),
    (lambda t: np.savez(t / "e.npz", x=np.zeros((0, 1, 28, 28), np.uint8)) or t / "e.npz", "holds no samples"),
    (lambda t: np.savez(t / "s.npz", x=np.zeros((4, 1, 32, 32), np.uint8)) or t / "s.npz", "shape [1, 32, 32]"),
    (lambda t: np.savez(t / "k.npz", images=np.zeros((4, 1, 28, 28), np.uint8)) or t / "k.npz", "no array for input"),
    (lambda t: np.savez(t / "l.npz", x=np.zeros((4, 1, 28, 28), np.uint8), y=np.zeros(3, np.int64)) or t / "l.npz",
     "3 labels for 4 samples"),
    (lambda t: np.savez(t / "f.npz", x=np.zeros((4, 1, 28, 28), np.uint8), y=np.zeros(4)) or t / "f.npz",
     "1-D integer array"),
    (lambda t: ((t / "bad.npz").write_bytes(b"not a zip"), t / "bad.npz")[1], "cannot read"),
    (lambda t: ((t / "x.csv").write_text("1,2"), t / "x.csv")[1], "unsupported data file"),
])
def test_bad_data_is_one_clear_error(tmp, make, fragment):
    with pytest.raises(DataError) as info:
        ds(make(tmp))
    assert fragment in str(info.value)


def test_nan_in_arrays_is_reported_before_any_batch(tmp):
    x = np.zeros((8, 1, 28, 28), np.float32)
    x[5, 0, 3, 3] = np.nan
    np.save(tmp / "nan.npy", x)
    with pytest.raises(DataError, match="NaN or Inf"):
        ds(tmp / "nan.npy", transform=Transform())


def test_unreadable_image_names_the_file(tmp):
    folder = _image_folder(tmp / "imgs")
    (folder / "class0" / "broken.png").write_bytes(b"\x89PNG broken")
    data = ds(folder, spec=ModelSpec(inputs=[InputSpec(shape=[1, 1, 28, 28])], outputs=["o"]), transform=Transform())
    with pytest.raises(DataError, match=r"broken\.png"):
        list(data.batches(8))
