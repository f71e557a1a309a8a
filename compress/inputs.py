"""Everything a run reads, opened once before any folder exists: the model and its spec, the
user's metric, and the calibration / eval / training data. Bad input fails here, cheaply."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .artifacts import Artifact
from .data import Dataset, open_dataset
from .errors import DataError, InputError
from .models import ModelSpec, import_callable, load_model
from .recipe import MetricConfig, Recipe
from .validation import UserMetric


@dataclass
class Inputs:
    reference: Artifact               # the FP32 model as given (torch module, or .onnx)
    spec: ModelSpec
    metric: UserMetric | None
    calibration: Dataset
    eval: Dataset                     # the calibration data when the recipe has no eval set
    train: Dataset | None
    notes: list[str] = field(default_factory=list)   # what the loaders noticed, for the report
    resumable: bool = True            # False with an in-memory model or metric (the API's)


def load_metric(cfg: MetricConfig, base_dir: Path, override=None) -> UserMetric | None:
    """The user's metric: an in-memory object (API) or the recipe's `metric.function`."""
    if override is not None:
        return UserMetric(override, getattr(override, "__name__", type(override).__name__), cfg.kwargs)
    if cfg.function is None:
        return None
    obj = import_callable(cfg.function, base_dir, where="metric.function", error=InputError)
    return UserMetric(obj, cfg.function, cfg.kwargs)


def open_inputs(recipe: Recipe, base: Path, *, model=None, metric=None) -> Inputs:
    reference, spec = load_model(recipe.model, base, recipe.seed, module=model)
    user_metric = load_metric(recipe.metric, base, metric)

    def dataset(source, where):
        return open_dataset(source, recipe.data.transform, spec, base_dir=base, seed=recipe.seed, where=where)

    calibration = dataset(recipe.data.calibration, "data.calibration")
    notes = [f"calibration: {n}" for n in calibration.notes]
    if recipe.data.eval is not None:
        evaluation = dataset(recipe.data.eval, "data.eval")
        notes += [f"eval: {n}" for n in evaluation.notes]
    else:
        evaluation = calibration
        notes.append("no eval set: metrics are measured on the calibration data")
    train = None
    if recipe.data.train is not None:
        train = dataset(recipe.data.train, "data.train")
        notes += [f"train: {n}" for n in train.notes]
    if recipe.metric.primary in ("top1", "top5") and not evaluation.has_labels:
        raise InputError(f"metric.primary '{recipe.metric.primary}' needs labels in the eval data",
                         where="metric.primary", hint="Add labels (array 'y' in the .npz, or class subfolders).")
    classes, top = spec.classes(), evaluation.max_label()
    if top is not None and classes is not None and top >= classes:
        raise InputError(f"eval labels out of range: found label {top} but the model outputs {classes} classes",
                         where="data.eval")
    # touch one batch of each before any folder exists: bad data fails here, cheaply
    for name, data in (("data.calibration", calibration), ("data.eval", evaluation)):
        if next(data.batches(1), None) is None:
            raise DataError("the data yielded no samples", where=name)
    return Inputs(reference, spec, user_metric, calibration, evaluation, train, notes,
                  resumable=model is None and metric is None)
