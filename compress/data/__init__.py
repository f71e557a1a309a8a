"""Calibration and eval data: .npz/.npy arrays or an image folder, streamed in batches.

A dataset yields `(feeds, labels)` where `feeds` maps input names to arrays of the model's
dtype and `labels` is an int64 array or None. Nothing holds more than one batch of decoded
images at a time; `.npy` files are memory-mapped.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..models import ModelSpec, resolve_path
from ..recipe import DataSource, Transform

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
Batch = tuple[dict[str, np.ndarray], np.ndarray | None]


def _check_finite(feeds: dict[str, np.ndarray], where: str) -> None:
    for name, array in feeds.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise DataError(f"input '{name}' contains NaN or Inf values", where=where,
                            hint="Clean the data: calibration and eval inputs must be finite.")


def _normalize(x: np.ndarray, transform: Transform, dtype: str, where: str) -> np.ndarray:
    """uint8 images -> [0, 1] floats -> (x - mean) / std per channel; other dtypes are cast as they are."""
    if np.dtype(dtype).kind != "f":
        return x.astype(dtype, copy=False)
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32, copy=False)
    if transform.mean is not None:
        channels = x.shape[1] if x.ndim >= 2 else 1
        if len(transform.mean) not in (1, channels):
            raise DataError(f"transform.mean has {len(transform.mean)} values but the input has {channels} channels",
                            where=where)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        x = (x - np.asarray(transform.mean, np.float32).reshape(shape)) / np.asarray(transform.std, np.float32).reshape(shape)
    return x.astype(dtype, copy=False)


@dataclass
class Dataset:
    where: str                      # YAML path, for messages
    spec: ModelSpec
    transform: Transform
    indices: np.ndarray             # which samples, in order
    has_labels: bool
    total: int                      # samples available before `samples:`
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.indices)

    def batches(self, batch_size: int, shuffle: int | None = None) -> Iterator[Batch]:
        """Batches in file order, or in a random order drawn from seed `shuffle` (training epochs)."""
        indices = self.indices if shuffle is None else np.random.default_rng(shuffle).permutation(self.indices)
        for start in range(0, len(indices), batch_size):
            index = indices[start:start + batch_size]
            feeds, labels = self._read(index)
            _check_finite(feeds, self.where)
            yield feeds, labels

    def max_label(self) -> int | None:
        labels = self._labels()
        return None if labels is None or len(self.indices) == 0 else int(labels[self.indices].max())

    def _labels(self) -> np.ndarray | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def samples(self) -> Iterator[dict[str, np.ndarray]]:
        """One sample at a time, batch dimension kept (for calibrators that count samples)."""
        for feeds, _ in self.batches(1):
            for i in range(len(next(iter(feeds.values())))):
                yield {k: v[i:i + 1] for k, v in feeds.items()}

    def input_batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Inputs only, every batch exactly `batch_size` samples but the last (calibrators stack them)."""
        pending: list[dict[str, np.ndarray]] = []
        held = 0
        for feeds, _ in self.batches(batch_size):
            pending.append(feeds)
            held += len(next(iter(feeds.values())))
            while held >= batch_size:
                joined = {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
                yield {k: v[:batch_size] for k, v in joined.items()}
                rest = {k: v[batch_size:] for k, v in joined.items()}
                held -= batch_size
                pending = [rest] if held else []
        if held:
            yield {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}

    def _read(self, index: np.ndarray) -> Batch:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class ArrayDataset(Dataset):
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    labels: np.ndarray | None = None

    def _labels(self):
        return self.labels

    def _read(self, index):
        order = np.argsort(index)  # memory-mapped arrays read faster in order
        sorted_index = index[order]
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        feeds = {}
        for spec in self.spec.inputs:
            raw = np.asarray(self.arrays[spec.name][sorted_index])[inverse]
            feeds[spec.name] = _normalize(raw, self.transform, spec.dtype, self.where)
        labels = None if self.labels is None else np.asarray(self.labels[sorted_index])[inverse].astype(np.int64)
        return feeds, labels


@dataclass
class ImageFolderDataset(Dataset):
    files: list[Path] = field(default_factory=list)
    file_labels: np.ndarray | None = None

    def _labels(self):
        return self.file_labels

    def _load_image(self, path: Path) -> np.ndarray:
        from PIL import Image

        spec = self.spec.inputs[0]
        channels, height, width = spec.shape[1], spec.shape[2], spec.shape[3]
        try:
            with Image.open(path) as img:
                img = img.convert("L" if channels == 1 else "RGB")
                t = self.transform
                if t.resize is None and t.center_crop is None:
                    img = img.resize((width, height), Image.BILINEAR)
                if t.resize is not None:
                    w, h = img.size
                    scale = t.resize / min(w, h)
                    img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
                if t.center_crop is not None:
                    w, h = img.size
                    c = t.center_crop
                    if c > w or c > h:
                        raise DataError(f"transform.center_crop {c} is larger than image {path.name} ({w}x{h} after resize)",
                                        where=self.where)
                    left, top = (w - c) // 2, (h - c) // 2
                    img = img.crop((left, top, left + c, top + c))
                array = np.asarray(img, dtype=np.uint8)
        except (DataError, MemoryError):
            raise
        except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError... on bad files
            raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}", where=self.where) from exc
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        if array.shape != (channels, height, width):
            raise DataError(f"image {path.name} becomes {list(array.shape)} after the transform, "
                            f"but the model input is {[channels, height, width]}", where=self.where,
                            hint="Set data.transform resize/center_crop to give the model's input size.")
        return array

    def _read(self, index):
        batch = np.stack([self._load_image(self.files[i]) for i in index])
        feeds = {self.spec.inputs[0].name: _normalize(batch, self.transform, self.spec.inputs[0].dtype, self.where)}
        labels = None if self.file_labels is None else self.file_labels[index]
        return feeds, labels


@dataclass
class PythonDataset(Dataset):
    """Batches from a user's `file.py:factory`: an iterable of (inputs, targets), called anew for each pass.

    `inputs`: an array or tensor (one input), a tuple/list in input order, or a dict by input name.
    `targets`: anything the metric function understands (arrays, ragged box lists...), or None.
    """

    factory: object = None
    kwargs: dict = field(default_factory=dict)
    cap: int | None = None
    ref: str = ""
    _count: int | None = None

    def __len__(self) -> int:
        if self._count is None:
            self._count = sum(len(next(iter(feeds.values()))) for feeds, _ in self.batches(0))
            if self._count == 0:
                raise DataError(f"{self.ref} yielded no samples", where=self.where)
        return self._count

    def max_label(self) -> int | None:
        return None

    def _feeds(self, inputs, where: str) -> dict[str, np.ndarray]:
        specs = self.spec.inputs
        if isinstance(inputs, dict):
            missing = [s.name for s in specs if s.name not in inputs]
            if missing:
                raise DataError(f"{self.ref} yielded inputs without {missing} (has {list(inputs)})", where=where)
            values = [inputs[s.name] for s in specs]
        elif isinstance(inputs, (list, tuple)):
            values = list(inputs)
        else:
            values = [inputs]
        if len(values) != len(specs):
            raise DataError(f"{self.ref} yielded {len(values)} input(s), the model takes {len(specs)}", where=where)
        feeds = {}
        for spec, value in zip(specs, values):
            array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
            if array.ndim != len(spec.shape) or list(array.shape[1:]) != list(spec.shape[1:]):
                raise DataError(f"{self.ref} yielded '{spec.name}' of shape {list(array.shape)}; the model takes "
                                f"[N, {', '.join(map(str, spec.shape[1:]))}]", where=where)
            if np.dtype(spec.dtype).kind in "iub" and array.dtype.kind == "f":
                raise DataError(f"{self.ref} yielded '{spec.name}' as {array.dtype}; the recipe says {spec.dtype}",
                                where=where)
            feeds[spec.name] = _normalize(array, self.transform, spec.dtype, where)
        return feeds

    def batches(self, batch_size: int, shuffle: int | None = None) -> Iterator[Batch]:
        """The factory's batches in the factory's order (`shuffle` is the factory's business)."""
        try:
            stream = self.factory(**self.kwargs)
            iterator = iter(stream)
        except Exception as exc:
            raise DataError(f"calling {self.ref} failed: {type(exc).__name__}: {exc}", where=self.where) from exc
        seen = 0
        while self.cap is None or seen < self.cap:
            try:
                item = next(iterator)
            except StopIteration:
                break
            except Exception as exc:
                raise DataError(f"{self.ref} raised while yielding data: {type(exc).__name__}: {exc}",
                                where=self.where) from exc
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise DataError(f"{self.ref} must yield (inputs, targets) pairs; got {type(item).__name__}",
                                where=self.where, hint="Yield (inputs, None) when there are no targets.")
            feeds = self._feeds(item[0], self.where)
            _check_finite(feeds, self.where)
            n = len(next(iter(feeds.values())))
            targets = item[1]
            if self.cap is not None and seen + n > self.cap:
                keep = self.cap - seen
                feeds = {k: v[:keep] for k, v in feeds.items()}
                targets = targets[:keep] if targets is not None else None
                n = keep
            seen += n
            yield feeds, targets


class Head:
    """The first batches of `dataset` that hold at least `samples` samples. Whole batches, in the
    dataset's order, so that outputs recorded batch by batch over the full set (the FP32 reference)
    line up with them."""

    def __init__(self, dataset, samples: int):
        self.dataset, self.samples = dataset, samples
        self.has_labels = dataset.has_labels
        self.where = dataset.where

    def batches(self, batch_size: int, shuffle: int | None = None) -> Iterator[Batch]:
        seen = 0
        for feeds, labels in self.dataset.batches(batch_size):
            if seen >= self.samples:
                return
            yield feeds, labels
            seen += len(next(iter(feeds.values())))


def _select(total: int, samples: int | None, seed: int) -> tuple[np.ndarray, list[str]]:
    notes = []
    if samples is None or samples >= total:
        if samples is not None and samples > total:
            notes.append(f"asked for {samples} samples, the data has {total}: all are used")
        return np.arange(total), notes
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(total)[:samples]), notes


def _check_sample_shapes(arrays: dict[str, np.ndarray], spec: ModelSpec, where: str) -> int:
    lengths = set()
    for s in spec.inputs:
        array = arrays[s.name]
        if array.ndim != len(s.shape) or list(array.shape[1:]) != list(s.shape[1:]):
            raise DataError(f"samples of '{s.name}' have shape {list(array.shape[1:])} but the model input is "
                            f"{list(s.shape[1:])} (after the batch dimension)", where=where)
        if array.dtype.kind not in "biuf":
            raise DataError(f"input '{s.name}' holds {array.dtype} values; numbers (bool, int, uint or float) are "
                            "needed", where=where)
        if np.dtype(s.dtype).kind != "f" and array.dtype.kind == "f":
            raise DataError(f"input '{s.name}' is {s.dtype} in the recipe but the data holds {array.dtype}", where=where)
        lengths.add(array.shape[0])
    if len(lengths) != 1:
        raise DataError(f"the input arrays have different sample counts {sorted(lengths)}", where=where)
    return lengths.pop()


def _check_labels(labels: np.ndarray, count: int, where: str) -> np.ndarray:
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"labels must be a 1-D integer array, got {labels.dtype} with shape {list(labels.shape)}",
                        where=where)
    if len(labels) != count:
        raise DataError(f"{len(labels)} labels for {count} samples", where=where)
    if count and labels.min() < 0:
        raise DataError(f"labels must be >= 0, found {int(labels.min())}", where=where)
    return labels


def _unreadable(path: Path, exc: Exception, where: str) -> DataError:
    """numpy raises many kinds of errors on damaged files (ValueError, EOFError, BadZipFile, zlib.error...)."""
    if isinstance(exc, MemoryError):
        return DataError(f"{path} does not fit in memory", where=where, hint="Use a memory-mapped .npy file.")
    return DataError(f"cannot read {path}: {type(exc).__name__}: {str(exc)[:300]}", where=where)


def _npz_member(archive, key: str, path: Path, where: str) -> np.ndarray:
    try:
        value = archive[key]   # read (and decompressed) here
    except Exception as exc:
        raise _unreadable(path, exc, f"{where} (array '{key}')") from exc
    if not isinstance(value, np.ndarray):   # numpy hands back raw bytes for a member that is not a .npy
        raise DataError(f"cannot read {path}: member '{key}' is not a .npy array", where=where)
    return value


def _open_arrays(path: Path, src: DataSource, spec: ModelSpec, base_dir: Path, where: str):
    try:
        if path.suffix == ".npz":
            archive = np.load(path, allow_pickle=False)
            keys = list(archive.files)
        else:
            archive = None
            array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise _unreadable(path, exc, where) from exc
    arrays: dict[str, np.ndarray] = {}
    labels = None
    if archive is not None:
        if src.labels is not None:
            raise DataError("'labels' applies to .npy inputs; an .npz carries its labels as array 'y'", where=where)
        for s in spec.inputs:
            key = s.name if s.name in keys else next((k for k in ("x", "inputs") if k in keys and len(spec.inputs) == 1), None)
            if key is None:
                raise DataError(f"{path.name} has no array for input '{s.name}' (arrays: {keys})", where=where,
                                hint="Name the array after the input, or 'x' for a single input.")
            arrays[s.name] = _npz_member(archive, key, path, where)
        label_key = next((k for k in ("y", "labels") if k in keys), None)
        labels = _npz_member(archive, label_key, path, where) if label_key else None
    else:
        if len(spec.inputs) != 1:
            raise DataError("a .npy file holds one array; use an .npz with one array per input name", where=where)
        arrays[spec.inputs[0].name] = array
        if src.labels is not None:
            label_path = resolve_path(src.labels, base_dir, where=f"{where}.labels")
            try:
                labels = np.load(label_path, allow_pickle=False)
            except Exception as exc:
                raise DataError(f"cannot read labels {label_path}: {type(exc).__name__}: {str(exc)[:300]}",
                                where=f"{where}.labels") from exc
            if not isinstance(labels, np.ndarray):
                labels.close()
                raise DataError(f"labels {label_path.name} must be a .npy file holding one integer array",
                                where=f"{where}.labels")
    count = _check_sample_shapes(arrays, spec, where)
    for start in range(0, count, 4096):  # in chunks: .npy files stay memory-mapped
        _check_finite({name: np.asarray(a[start:start + 4096]) for name, a in arrays.items()}, where)
    if labels is not None:
        labels = _check_labels(np.asarray(labels), count, where)
    return arrays, labels, count


def _list_images(folder: Path, where: str) -> tuple[list[Path], np.ndarray | None, list[str]]:
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs:
        files, labels = [], []
        for label, sub in enumerate(subdirs):
            found = sorted(p for p in sub.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            files += found
            labels += [label] * len(found)
        return files, np.asarray(labels, np.int64), [d.name for d in subdirs]
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return files, None, []


def open_dataset(src: DataSource, transform: Transform, spec: ModelSpec, *, base_dir: Path, seed: int,
                 where: str) -> Dataset:
    if src.source == "python":
        from ..models import import_callable

        factory = import_callable(src.factory, base_dir, where=f"{where}.factory", error=DataError)
        if not callable(factory):
            raise DataError(f"{src.factory} is not callable", where=f"{where}.factory")
        return PythonDataset(where=where, spec=spec, transform=transform, indices=np.arange(0), has_labels=False,
                             total=0, factory=factory, kwargs=dict(src.kwargs), cap=src.samples, ref=src.factory)
    path = resolve_path(src.path, base_dir, where=f"{where}.path")
    if not path.exists():
        raise DataError(f"{path} does not exist", where=f"{where}.path", hint="Paths are relative to the recipe file.")
    common = {"where": where, "spec": spec, "transform": transform}
    if path.is_dir():
        if len(spec.inputs) != 1 or len(spec.inputs[0].shape) != 4 or spec.inputs[0].shape[1] not in (1, 3):
            raise DataError("an image folder feeds one image input of shape [N, 1 or 3, H, W]", where=where)
        files, labels, classes = _list_images(path, where)
        if not files:
            raise DataError(f"{path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})", where=f"{where}.path")
        indices, notes = _select(len(files), src.samples, seed)
        if classes:
            more = " ..." if len(classes) > 10 else ""
            notes.append(f"{len(classes)} classes from subfolders: {', '.join(classes[:10])}{more}")
        return ImageFolderDataset(indices=indices, has_labels=labels is not None, total=len(files), notes=notes,
                                  files=files, file_labels=labels, **common)
    if path.suffix not in (".npz", ".npy"):
        raise DataError(f"{path.name}: unsupported data file; use .npz, .npy or a folder of images", where=f"{where}.path")
    arrays, labels, count = _open_arrays(path, src, spec, base_dir, where)
    if count == 0:
        raise DataError(f"{path} holds no samples", where=f"{where}.path")
    indices, notes = _select(count, src.samples, seed)
    return ArrayDataset(indices=indices, has_labels=labels is not None, total=count, notes=notes,
                        arrays=arrays, labels=labels, **common)
