"""Stage registry: config class -> handler, filled by `@register`.

A handler owns every rule about its stage: which artifact types it takes and gives, its plan-time
checks, whether it quantizes, which stages may not follow it, the context values its output depends
on (they go into the stage's cache key), its implicit gates and the lines it adds to the report.
`plan()`, the gates and the report ask the handler; none of them names a stage type. A new stage
is one config class in recipe.py and one module here.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass(frozen=True)
class Resolved:
    """Values the runner resolved from the recipe, targets and machine. A handler's `reads` names
    the ones its output depends on, and only those enter its stage's cache key."""
    threads: int = 2                 # latency threads (recipe, else the last target's, else 2)
    batch: int = 1                   # latency batch
    final_runtime: str = "torch"     # where the chain's last artifact runs (budgets are timed there)
    batch_size: int = 32             # data.batch_size: calibration and evaluation batches
    seed: int = 0
    higher_is_better: bool = True    # of the primary metric
    vnni: bool = False               # the CPU has VNNI (INT8 dot products)
    high_precision: str | None = None  # a TensorRT target's dtype for unquantized layers (fp16 / fp32)


@dataclass
class StageContext:
    where: str                                   # YAML path of the stage, e.g. "stages[1]"
    spec: ModelSpec
    calibration: Dataset
    resolved: Resolved = field(default_factory=Resolved)
    out_dir: Path | None = None                  # where the stage writes its artifact (a temp folder)
    target: Target | None = None                 # for compile stages
    reference: Artifact | None = None            # the FP32 model, for checks against it and distillation
    eval: Dataset | None = None
    train: Dataset | None = None
    log: Callable[[str], None] = lambda msg: None
    details: dict = field(default_factory=dict)  # stage-specific facts for the report
    run_dir: Path | None = None                  # the run folder (failed stages may leave checkpoints there)
    stage_dir: Path | None = None                # where out_dir lands when the stage succeeds
    progress: Callable[[str, int], Progress] = lambda description, total: Progress()   # a bar for long loops
    # validate an intermediate artifact like a stage output (record with metric, delta, latency);
    # `adaptive=True` times it until its speed-up's interval is tight even when no gate judges it
    validate: Callable[..., dict] | None = None
    # the recipe's primary metric (user metric, labels or agreement with FP32) of a torch module or an
    # artifact on the first N eval samples: quick checks inside a stage (fine-tuning epochs, pruning
    # sensitivity, calibration candidates)
    score: Callable[..., tuple[str, float]] | None = None
    # p50 ms of an artifact in a short run at the recipe's latency batch and threads (candidates inside a stage)
    quick_latency: Callable[[Artifact], float] | None = None
    # the gates that judge this stage's output (its own, and the recipe's when it is the last stage),
    # applied to a record from `validate`: a stage that picks among artifacts (choose) judges each
    judge: Callable[[dict], list[dict]] | None = None

    @property
    def threads(self) -> int:
        return self.resolved.threads

    @property
    def batch(self) -> int:
        return self.resolved.batch


@dataclass
class PlanState:
    """What plan-time checks see: the recipe, this stage's YAML path and target, the stages before it."""
    recipe: Recipe
    where: str
    target: Target | None
    previous: list = field(default_factory=list)   # PlannedStage of the earlier stages


def _none(*_):
    return None


def _empty(*_):
    return []


def _no_reads(_cfg) -> tuple[str, ...]:
    return ()


@dataclass(frozen=True)
class Handler:
    run: Callable[[object, Artifact, StageContext], Artifact]
    accepts: Callable[[object, Target | None], dict[type, type]]   # input type -> output type
    check: Callable[[object, PlanState], None] = _none             # plan-time checks: raise ChainError
    target: Callable[[object], str | None] = _none                 # the target (name or file) it compiles for
    quantizes: Callable[[object], str | None] = _none              # the quantization backend, if it quantizes
    # later stage types that may not follow this one: {type: (message, hint)}
    forbids_after: Callable[[object], dict[str, tuple[str, str | None]]] = lambda cfg: {}
    reads: Callable[[object], tuple[str, ...]] = _no_reads         # Resolved fields its output depends on
    gates: Callable[[dict], list[dict]] = _empty                   # implicit gates, from its stage record
    notes: Callable[[dict], list[str]] = _empty                    # report lines, from its stage record
    sections: Callable[[dict], list[str]] = _empty                 # report sections (markdown lines)
    files: Callable[[dict], dict[str, str]] = lambda record: {}    # extra report files: name -> text


HANDLERS: dict[type, Handler] = {}


def register(config_cls: type, accepts: Callable[[object, Target | None], dict[type, type]], **rules):
    """`@register(ConfigClass, accepts=..., check=..., quantizes=..., ...)` on the stage function."""
    def wrap(fn):
        HANDLERS[config_cls] = Handler(fn, accepts, **rules)
        return fn
    return wrap


def _load_all() -> None:
    import importlib

    for module in ("choose", "compile", "export", "prune", "qat", "quantize"):   # each registers its handler on import
        importlib.import_module(f"{__name__}.{module}")


def handler_for(config) -> Handler:
    _load_all()
    try:
        return HANDLERS[type(config)]
    except KeyError:
        known = ", ".join(sorted(c.__name__ for c in HANDLERS))
        raise ChainError(f"no handler is registered for stage config {type(config).__name__} "
                         f"(registered: {known})") from None


def handler_for_type(stage_type: str) -> Handler | None:
    """The handler of a stage type as written in YAML (`quantize`), for reading saved reports."""
    _load_all()
    return next((h for cls, h in HANDLERS.items() if cls.model_fields["type"].annotation.__args__[0] == stage_type),
                None)


def output_type(config, input_type: type, target: Target | None, where: str) -> type:
    """What the stage gives for `input_type`, looked up through the class hierarchy (a subclass of an
    accepted type is accepted)."""
    table = handler_for(config).accepts(config, target)
    for cls in input_type.__mro__:
        if cls in table:
            return table[cls]
    takes = " or ".join(sorted(t.kind for t in table))
    hint = "Add an `export` stage before it." if {t.kind for t in table} == {"OnnxModel"} else None
    raise ChainError(f"a '{config.type}' stage{_detail(config, target)} takes {takes}, "
                     f"but the previous step produces {input_type.kind}", where=where, hint=hint)


def _detail(config, target: Target | None) -> str:
    if getattr(config, "backend", None):
        return f" with backend {config.backend}"
    if target is not None:
        return f" for target {target.name}"
    return ""


def quantized_nothing_gate(record: dict) -> list[dict]:
    """A quantizing stage that quantized nothing fails: the recipe asked for INT8 and did not get it."""
    if record["details"].get("quantize_ops") != 0:
        return []
    return [{"gate": "quantized", "threshold": "> 0 quantized ops", "value": 0, "passed": False,
             "detail": f"stage {record['name']} quantized no layer: {'; '.join(record['notes'])}"}]


def check_notes(record: dict) -> list[str]:
    """One report line per check a stage ran on its artifact (onnx.checker, polygraphy lint, TensorRT's rules)."""
    verdict = {True: "pass", False: "FAIL", None: "not run"}
    return [f"check {row['check']}: {verdict[row['passed']]} ({row['detail']})"
            for row in record["details"].get("tensorrt_checks", [])]


def finetune_notes(record: dict) -> list[str]:
    epochs = record["details"].get("finetune")
    if not epochs:
        return []
    return ["fine-tuning " + "; ".join(f"epoch {e['epoch']} loss {e['loss']:.4f}, {e['metric']}" for e in epochs)]


def add_checkpoint(ctx: StageContext, name: str, artifact: Artifact) -> None:
    """Validate an intermediate artifact the stage wrote under its folder (QAT's PTQ start) exactly like
    a stage's output, and keep the record in `details["checkpoints"][name]`: the report shows it as a
    row, and a resumed or cached stage has it validated again."""
    if ctx.validate is None:
        return
    record = ctx.validate(artifact, f"{ctx.where} {name}")
    record.update(path=str(artifact.path.relative_to(ctx.out_dir)), artifact_type=artifact.kind,
                  state=artifact.state())
    ctx.details.setdefault("checkpoints", {})[name] = record


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
