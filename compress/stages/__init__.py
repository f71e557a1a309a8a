"""Stage registry: config class -> handler, filled by `@register`. A new stage is one config class
in recipe.py and one decorated function here; the pipeline only looks up and calls."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..artifacts import Artifact
from ..data import Dataset
from ..errors import ChainError
from ..models import ModelSpec
from ..recipe import Recipe
from ..targets import Target


class Progress:
    """A bar for one loop (training steps); `update` moves it and shows live fields (loss...).
    This one shows nothing: the API's default and the CLI's with --quiet."""

    def update(self, advance: int = 1, **fields) -> None: ...
    def close(self) -> None: ...


@dataclass
class StageContext:
    recipe: Recipe
    base_dir: Path
    spec: ModelSpec
    calibration: Dataset
    machine: dict
    where: str                                   # YAML path of the stage, e.g. "stages[1]"
    out_dir: Path | None = None                  # where the stage writes its artifact (a temp folder)
    target: Target | None = None                 # for compile stages
    reference: Artifact | None = None            # the FP32 model, for checks against it
    eval: Dataset | None = None
    train: Dataset | None = None
    threads: int = 2
    batch: int = 1
    final_runtime: str = "torch"                 # where the chain's last artifact runs (budgets are timed there)
    log: Callable[[str], None] = lambda msg: None
    details: dict = field(default_factory=dict)  # stage-specific facts for the report
    run_dir: Path | None = None                  # the run folder (failed stages may leave checkpoints there)
    stage_dir: Path | None = None                # where out_dir lands when the stage succeeds
    progress: Callable[[str, int], Progress] = lambda description, total: Progress()   # a bar for long loops
    validate: Callable[[Artifact, str], dict] | None = None  # validate an intermediate artifact like a stage output
    # the recipe's primary metric (user metric, labels or agreement with FP32) of a torch module on the
    # first N eval samples: quick checks inside a stage (fine-tuning epochs, pruning sensitivity)
    score: Callable[[object, int], tuple[str, float]] | None = None


@dataclass(frozen=True)
class Handler:
    run: Callable[[object, Artifact, StageContext], Artifact]
    accepts: Callable[[object, Target | None], dict[type, type]]   # input type -> output type


HANDLERS: dict[type, Handler] = {}


def register(config_cls: type, accepts: Callable[[object, Target | None], dict[type, type]]):
    def wrap(fn):
        HANDLERS[config_cls] = Handler(fn, accepts)
        return fn
    return wrap


def handler_for(config) -> Handler:
    from . import compile as _compile, export as _export, prune as _prune, qat as _qat, quantize as _quantize  # noqa: F401

    try:
        return HANDLERS[type(config)]
    except KeyError:
        known = ", ".join(sorted(c.__name__ for c in HANDLERS))
        raise ChainError(f"no handler is registered for stage config {type(config).__name__} (registered: {known})") from None


def output_type(config, input_type: type, target: Target | None, where: str) -> type:
    table = handler_for(config).accepts(config, target)
    if input_type not in table:
        takes = " or ".join(sorted(t.kind for t in table))
        hint = {"OnnxModel": "Add an `export` stage before it."}.get(next(iter(table)).kind if len(table) == 1 else "", None)
        raise ChainError(f"a '{config.type}' stage{_detail(config, target)} takes {takes}, "
                         f"but the previous step produces {input_type.kind}", where=where, hint=hint)
    return table[input_type]


def _detail(config, target: Target | None) -> str:
    if getattr(config, "backend", None):
        return f" with backend {config.backend}"
    if target is not None:
        return f" for target {target.name}"
    return ""


def keep_last_good(ctx: StageContext, exc, save: Callable[[Path], Artifact]):
    """Training diverged (`exc`: a TrainingDiverged; the model already holds its last good weights).
    Save that model with `save(folder)` to `<run>/checkpoints/<stage>-epoch<k>/` and return the
    error to raise, naming the checkpoint. The stage itself still fails: nothing looks finished."""
    from ..fsutil import atomic_dir
    from ..train import TrainingDiverged

    if ctx.run_dir is None or ctx.stage_dir is None:
        return exc
    folder = ctx.run_dir / "checkpoints" / f"{ctx.stage_dir.name}-epoch{exc.epoch}"
    folder.parent.mkdir(exist_ok=True)
    with atomic_dir(folder) as tmp:
        name = save(tmp).path.name
    what = "the starting weights" if exc.epoch == 0 else f"the weights after epoch {exc.epoch}"
    return TrainingDiverged(f"{exc.message}; {what}, the last good ones, are kept in {folder / name}",
                            epoch=exc.epoch, where=exc.where, hint=exc.hint)
