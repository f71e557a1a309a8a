"""prune: TorchModel -> TorchModel. Structured channel pruning with Torch-Pruning (dependency graph,
so residual/concat/depthwise models stay valid), unstructured magnitude and 2:4 sparsity, budgets
timed on the chain's target runtime, optional fine-tuning/distillation and a sensitivity scan."""
from __future__ import annotations

import copy
import difflib
import re
import warnings

from ..artifacts import TorchModel
from ..errors import ChainError, InputError, ModelError, first_line
from ..recipe import PruneConfig
from ..torchio import save_module
from ..validation import latency_feeds, measure_latency
from . import PlanState, StageContext, finetune_notes, keep_last_good, register


def count_macs(module, spec) -> tuple[int, int]:
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(module, spec.example_input(batch=1))
    return int(macs), int(params)


def _ignored(module, names: list[str], where: str) -> list:
    named = dict(module.named_modules())
    layers = []
    for name in names:
        if name not in named:
            close = difflib.get_close_matches(name, [n for n in named if n], n=3)
            raise InputError(f"ignore names module '{name}', which the model does not have",
                             where=f"{where}.ignore", hint=f"Did you mean {', '.join(close)}?" if close else
                             "List the names with model.named_modules().")
        layers.append(named[name])
    return layers


def _names_of(module, layers: list) -> list[str]:
    """The module names of `layers` (module objects), in the model's order."""
    return [n for n, m in module.named_modules() if any(m is layer for layer in layers)]


def _output_layers(module, example_input) -> list:
    """The layers whose channels are the model's output channels (classifier and segmentation heads):
    from each conv/linear, follow Torch-Pruning's graph forward through channel-keeping ops (norms,
    activations, pooling, reshapes, adds, concats); reaching the graph's end without passing another
    conv/linear means that pruning it would change an output's shape."""
    import torch
    import torch_pruning as tp

    remap = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d,
             torch.nn.ConvTranspose3d, torch.nn.Linear)
    graph = tp.DependencyGraph().build_dependency(module, example_input)
    found = []
    for layer, node in graph.module2node.items():
        if not isinstance(layer, remap):
            continue
        seen, frontier = set(), [node]
        while frontier:
            current = frontier.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            if current is not node and isinstance(current.module, remap):
                continue
            if not current.outputs:
                found.append(layer)
                break
            frontier.extend(current.outputs)
    return found


def _importance(name: str):
    import torch_pruning as tp

    return {"l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
            "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
            "taylor": lambda: tp.importance.GroupTaylorImportance(),
            "random": lambda: tp.importance.RandomImportance()}[name]()


def _taylor_gradients(module, ctx: StageContext, batches: int = 4) -> None:
    """Taylor importance needs gradients: a few calibration batches, labels or the model's own answers."""
    import torch
    import torch.nn.functional as F

    from ..train import _first, _tensors

    module.zero_grad()
    for i, (feeds, labels) in enumerate(ctx.calibration.batches(ctx.resolved.batch_size)):
        if i >= batches:
            break
        logits = _first(module(*_tensors(feeds)))
        target = torch.from_numpy(labels) if labels is not None and ctx.calibration.has_labels else logits.argmax(1).detach()
        F.cross_entropy(logits, target).backward()


def _runtime_latency(module, ctx: StageContext, runs: int = 20) -> float:
    """p50 of `module` as an FP32 model on the runtime the chain ships to (budgets are about that runtime)."""
    import shutil

    from ..runtimes import open_session, runtime_named

    entry = runtime_named(ctx.resolved.final_runtime)
    folder = ctx.out_dir / "budget"
    folder.mkdir()
    try:
        artifact = entry.need("fp32_baseline")(TorchModel(path=None, module=module), ctx.spec, folder, entry.artifact)
        session = open_session(artifact, threads=ctx.threads, static_batch=ctx.batch)
        return measure_latency(session, latency_feeds(ctx.eval, ctx.batch), warmup=5, runs=runs)["p50_ms"]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _channel(cfg: PruneConfig, module, ctx: StageContext, heads: list) -> dict:
    """`heads`: the output layers, which always stay (pruning them would change the output shapes)."""
    import torch_pruning as tp

    example = ctx.spec.example_tensors(batch=1)
    ignored = _ignored(module, cfg.ignore, ctx.where)
    base_macs, base_params = count_macs(module, ctx.spec)
    budget = cfg.target
    steps = cfg.steps if budget is not None else 1
    ratio = cfg.max_ratio if budget is not None else cfg.ratio
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ignored += [m for m in heads if not any(m is i for i in ignored)]
            pruner = tp.pruner.MetaPruner(module, ctx.spec.example_input(batch=1),
                                          importance=_importance(cfg.importance), global_pruning=cfg.scope == "global",
                                          pruning_ratio=ratio, max_pruning_ratio=cfg.max_ratio, iterative_steps=steps,
                                          ignored_layers=ignored, round_to=cfg.round_to)
    except Exception as exc:
        raise _graph_error(exc, module, ctx) from exc
    found = [name for w in caught if "nwrapped parameters" in str(w.message) for name in _UNWRAPPED.findall(str(w.message))]
    # A raw parameter with one non-singleton dimension (a per-channel scale such as ConvNeXt's
    # layer_scale) can only be cut along that dimension, which Torch-Pruning does. With more, it
    # would guess which dimension to cut: refuse rather than guess.
    params = dict(module.named_parameters())
    raw = [name for name in found if name not in params or sum(d > 1 for d in params[name].shape) > 1]
    ignored_names = _names_of(module, ignored)
    if any((name.rpartition(".")[0] or name) not in ignored_names for name in raw):
        raise _untraceable("Torch-Pruning cannot trace the model", raw, None, ctx)
    details: dict = {"method": "channel", "importance": cfg.importance, "scope": cfg.scope, "round_to": cfg.round_to,
                     "ignored": ignored_names,
                     "macs_before": base_macs, "params_before": base_params}
    base_latency = _runtime_latency(module, ctx) if budget is not None and budget.macs is None else None
    met, history = budget is None, []
    for step in range(steps):
        if cfg.importance == "taylor":
            _taylor_gradients(module, ctx)
        try:
            pruner.step()
        except Exception as exc:
            raise _untraceable(f"Torch-Pruning failed while pruning ({type(exc).__name__}: {first_line(exc)[:200]})",
                               raw, None, ctx) from exc
        layer, error = _failing_layer(module, example)
        if error is not None:
            raise _untraceable(f"after pruning, the model no longer runs: {error[:200]}", raw, layer, ctx)
        macs, params = count_macs(module, ctx.spec)
        entry = {"step": step + 1, "macs": macs, "macs_fraction": macs / base_macs, "params": params}
        if budget is not None:
            if budget.macs is not None:
                met = macs <= budget.macs * base_macs
            else:
                entry["latency_ms"] = _runtime_latency(module, ctx)
                entry["speedup"] = base_latency / entry["latency_ms"]
                met = (entry["latency_ms"] <= budget.latency_ms) if budget.latency_ms is not None else \
                    entry["speedup"] >= budget.speedup
            ctx.log(f"prune step {step + 1}/{steps}: MACs {macs / base_macs:.2f} of the original"
                    + (f", {entry['latency_ms']:.3f} ms on {ctx.resolved.final_runtime}" if "latency_ms" in entry else ""))
        history.append(entry)
        if met:
            break
    details.update(macs_after=history[-1]["macs"], params_after=history[-1]["params"], steps=history)
    if budget is not None:
        wanted = budget.model_dump(exclude_none=True)
        details["budget"] = {"target": wanted, "runtime": ctx.resolved.final_runtime if budget.macs is None else "MACs",
                             "baseline_latency_ms": base_latency, "met": met, "reached": history[-1]}
    return details


def _refuse_known_failures(module, ctx: StageContext) -> None:
    import torch_pruning as tp

    beyond = sorted({type(m).__name__ for m in module.modules()} & _BEYOND_TORCH_PRUNING)
    if beyond:
        raise ModelError(f"Torch-Pruning {tp.__version__} cannot prune {', '.join(beyond)} (torchvision's Swin "
                         "attention): building its dependency graph does not finish and takes all the memory",
                         where=ctx.where, hint="Prune with method unstructured or 2:4 (without `sensitivity:`), "
                                               "which keep every shape.")


# Layers Torch-Pruning's graph build is known not to survive (its own torchvision example skips
# Swin as "stuck"; here it was killed for memory at 24 GB). Refused before it starts.
_BEYOND_TORCH_PRUNING = {"ShiftedWindowAttention", "ShiftedWindowAttentionV2"}
_UNWRAPPED = re.compile(r"'([^']+)'")   # names in Torch-Pruning's "Unwrapped parameters detected: [...]"


def _graph_error(exc: Exception, module, ctx: StageContext) -> ModelError:
    op, after = _graph_failure(exc, module)
    if op is not None:   # Torch-Pruning's graph covers the whole model: `ignore:` cannot route around it
        return ModelError(f"Torch-Pruning cannot build its dependency graph: it fails on the {op} op after layer "
                          f"'{after}' ({type(exc).__name__}: {first_line(exc)[:200]}), e.g. a channel shuffle "
                          "or a view that regroups channels", where=ctx.where,
                          hint="`ignore:` does not help here; prune with method unstructured or 2:4, or rewrite "
                               "that reshape in the model.")
    return ModelError(f"Torch-Pruning cannot trace the model: {type(exc).__name__}: {first_line(exc)[:300]}",
                      where=ctx.where, hint="Add the layer it names to `ignore:`, or prune with method unstructured.")


def _graph_failure(exc: Exception, module) -> tuple[str | None, str | None]:
    """The Torch-Pruning graph node whose handling raised (from the traceback) and the nearest model
    layer upstream of it, or (None, None) when the failure is not inside the graph build."""
    names = {m: n for n, m in module.named_modules()}
    node, tb = None, exc.__traceback__
    while tb is not None:
        candidate = tb.tb_frame.f_locals.get("node")
        if candidate is not None and hasattr(candidate, "inputs") and hasattr(candidate, "grad_fn"):
            node = candidate
        tb = tb.tb_next
    if node is None:
        return None, None
    op = type(node.grad_fn).__name__.removesuffix("Backward0").lower() if node.grad_fn is not None else "unknown"
    seen, frontier = set(), list(node.inputs)
    while frontier:
        current = frontier.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if names.get(current.module):
            return op, names[current.module]
        frontier.extend(current.inputs)
    return op, "(the model input)"


def _failing_layer(module, example) -> tuple[str | None, str | None]:
    """Run the model once; on failure return the innermost module that was running and the error."""
    import torch

    stack: list[str] = []
    names = {m: n for n, m in module.named_modules()}
    def enter(mod, args) -> None:
        stack.append(names[mod])

    def leave(mod, args, out) -> None:   # must return None: a value would replace the module's output
        stack.pop()

    hooks = [m.register_forward_pre_hook(enter) for m in names] + [m.register_forward_hook(leave) for m in names]
    try:
        with torch.no_grad():
            module(*example)
        return None, None
    except Exception as exc:
        return (stack[-1] if stack else ""), f"{type(exc).__name__}: {first_line(exc)}"
    finally:
        for hook in hooks:
            hook.remove()


def _untraceable(what: str, raw: list[str], layer: str | None, ctx: StageContext) -> ModelError:
    """Name the layer Torch-Pruning could not follow: a raw parameter used in a custom forward, or
    the module where the pruned model breaks."""
    if raw:
        owners = sorted({name.rpartition(".")[0] or name for name in raw})
        culprit = (f"layer {', '.join(repr(o) for o in owners)} uses raw parameter(s) {', '.join(raw)} in its own "
                   "forward, which Torch-Pruning cannot trace")
        fix = f"Add {', '.join(repr(o) for o in owners)} and the layer that feeds it to `ignore:`"
    elif layer:
        culprit = (f"layer '{layer}' depends on the pruned channels in a way Torch-Pruning cannot trace "
                   "(e.g. a hard-coded channel count in a reshape or view)")
        fix = f"Add '{layer}' and the layer that feeds it to `ignore:`"
    else:
        culprit = ("the model's own forward depends on the pruned channels in a way Torch-Pruning cannot trace "
                   "(e.g. a hard-coded channel count in a reshape or view)")
        fix = "Add the layers around that reshape to `ignore:`"
    return ModelError(f"{what}: {culprit}", where=ctx.where,
                      hint=f"{fix}, or prune with method unstructured (which keeps every shape).")


def _weights(module, ignored_names: set[str]):
    import torch

    return [(name, m) for name, m in module.named_modules()
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv1d, torch.nn.Linear)) and name not in ignored_names]


def _unstructured(cfg: PruneConfig, module, ctx: StageContext) -> dict:
    from torch.nn.utils import prune as tprune

    ignored = set(cfg.ignore)
    _ignored(module, cfg.ignore, ctx.where)
    layers = _weights(module, ignored)
    if cfg.scope == "global":
        tprune.global_unstructured([(m, "weight") for _, m in layers], pruning_method=tprune.L1Unstructured,
                                   amount=cfg.ratio)
    else:
        for _, m in layers:
            tprune.l1_unstructured(m, "weight", amount=cfg.ratio)
    for _, m in layers:
        tprune.remove(m, "weight")
    zeros = sum(int((m.weight == 0).sum()) for _, m in layers)
    total = sum(m.weight.numel() for _, m in layers)
    return {"method": "unstructured", "scope": cfg.scope, "sparsity": zeros / max(total, 1), "layers": len(layers)}


def _semi_structured(cfg: PruneConfig, module, ctx: StageContext) -> dict:
    import torch

    _ignored(module, cfg.ignore, ctx.where)
    done, skipped = [], []
    with torch.no_grad():
        for name, m in _weights(module, set(cfg.ignore)):
            w = m.weight.reshape(m.weight.shape[0], -1)
            if w.shape[1] % 4:
                skipped.append(name)
                continue
            groups = w.reshape(w.shape[0], -1, 4)
            drop = groups.abs().argsort(dim=-1)[..., :2]
            mask = torch.ones_like(groups).scatter_(-1, drop, 0.0)
            m.weight.copy_((groups * mask).reshape(m.weight.shape))
            done.append(name)
    return {"method": "2:4", "layers": done, "skipped_not_multiple_of_4": skipped}


def _sensitivity(cfg: PruneConfig, module, ctx: StageContext, heads: list) -> dict:
    """Prune each layer alone at each ratio and measure the drop of the recipe's primary metric (torch,
    first eval samples)."""
    import torch
    import torch_pruning as tp

    samples = cfg.sensitivity.samples
    name, base = ctx.score(module, samples)
    example = ctx.spec.example_input(batch=1)
    skip = set(cfg.ignore) | set(_names_of(module, heads))
    rows = []
    for layer_name, layer in module.named_modules():
        if not isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)) or layer_name in skip:
            continue
        row = {"layer": layer_name, "channels": layer.weight.shape[0], "drops": {}}
        for ratio in cfg.sensitivity.ratios:
            trial = copy.deepcopy(module)
            target = trial.get_submodule(layer_name)
            ctx.log(f"sensitivity: {layer_name} at {ratio:.0%}")
            try:
                graph = tp.DependencyGraph().build_dependency(trial, example)
                fn = tp.prune_conv_out_channels if isinstance(target, torch.nn.Conv2d) else tp.prune_linear_out_channels
                scores = target.weight.detach().abs().reshape(target.weight.shape[0], -1).sum(1)
                k = round(ratio * len(scores))
                if k == 0 or k >= len(scores):
                    continue
                group = graph.get_pruning_group(target, fn, idxs=scores.argsort()[:k].tolist())
                if not graph.check_pruning_group(group):
                    continue
                group.prune()
            except Exception:
                row["drops"][str(ratio)] = None
                continue
            value = ctx.score(trial, samples)[1]
            row["drops"][str(ratio)] = base - value if ctx.resolved.higher_is_better else value - base
        rows.append(row)
    return {"metric": name, "baseline": base, "samples": samples, "ratios": cfg.sensitivity.ratios, "layers": rows}


def _check(cfg: PruneConfig, state: PlanState) -> None:
    if cfg.finetune is not None and state.recipe.data.train is None:
        raise ChainError("fine-tuning needs training data", where=f"{state.where}.finetune",
                         hint="Add data.train (same formats as calibration/eval).")


def _reads(cfg: PruneConfig) -> tuple[str, ...]:
    """A latency budget is timed on the final runtime with the recipe's threads and batch."""
    if cfg.target is not None and cfg.target.macs is None:
        return ("final_runtime", "threads", "batch", "batch_size")
    return ()


def _budget_gate(record: dict) -> list[dict]:
    budget = record["details"].get("budget")
    if budget is None or budget["met"]:
        return []
    reached = budget["reached"]
    got = (f"{reached['macs_fraction']:.2f} of the MACs" if "macs" in budget["target"] else
           f"{reached.get('latency_ms', float('nan')):.3f} ms, {reached.get('speedup', float('nan')):.2f}x on "
           f"{budget['runtime']}")
    return [{"gate": "prune_budget", "threshold": budget["target"], "value": reached, "passed": False,
             "detail": f"stage {record['name']} could not meet {budget['target']} within max_ratio; "
                       f"best reached: {got} (that model was kept and validated)"}]


def _notes(record: dict) -> list[str]:
    d = record["details"]
    notes = finetune_notes(record)
    if d.get("macs_before"):
        notes.append(f"MACs {d['macs_before']:,} -> {d['macs']:,} ({d['macs'] / d['macs_before']:.2f}x), "
                     f"params {d['params_before']:,} -> {d['params']:,}")
    if "sparsity" in d:
        notes.append(f"{d['sparsity']:.1%} of the conv/linear weights are zero")
    return notes


def _sections(record: dict) -> list[str]:
    from ..report import sensitivity_md

    return sensitivity_md(record)


def _files(record: dict) -> dict[str, str]:
    from .. import html
    from ..report import sensitivity_svg

    sens = record["details"].get("sensitivity")
    return {f"sensitivity-{record['name']}.svg": sensitivity_svg(sens)} if sens and html.available() else {}


@register(PruneConfig, accepts=lambda cfg, target: {TorchModel: TorchModel}, check=_check, reads=_reads,
          gates=_budget_gate, notes=_notes, sections=_sections, files=_files)
def prune(cfg: PruneConfig, artifact: TorchModel, ctx: StageContext) -> TorchModel:
    module = copy.deepcopy(artifact.module).eval()
    details = {}
    heads: list = []
    if cfg.method == "channel" or cfg.sensitivity is not None:   # both build Torch-Pruning's graph
        _refuse_known_failures(module, ctx)
        try:
            heads = _output_layers(module, ctx.spec.example_input(batch=1))
        except Exception as exc:
            raise _graph_error(exc, module, ctx) from exc
    if cfg.sensitivity is not None:
        details["sensitivity"] = _sensitivity(cfg, module, ctx, heads)
    ctx.log(f"pruning ({cfg.method})")
    details.update(_channel(cfg, module, ctx, heads) if cfg.method == "channel" else
                   {"unstructured": _unstructured, "2:4": _semi_structured}[cfg.method](cfg, module, ctx))
    notes = []
    if cfg.method != "channel":
        notes.append(f"{cfg.method} sparsity keeps every tensor's shape: dense CPU runtimes (ONNX Runtime, OpenVINO, "
                     "torch) compute the zeros anyway, so expect no speed-up from it (see the measured latency); "
                     "it pays off with sparse kernels (2:4 on Ampere+ GPUs / TensorRT) or compression")
    if cfg.finetune is not None:
        from ..train import TrainingDiverged, finetune

        teacher = ctx.reference.module if cfg.finetune.distill is not None else None

        def metric_text(m) -> str:
            name, value = ctx.score(m, cfg.finetune.eval_samples)
            return f"{name} {value:.2f}"

        ctx.log(f"fine-tuning {cfg.finetune.epochs} epoch(s)")
        mask = None
        if cfg.method != "channel":  # keep pruned weights at zero while training
            mask = {n: (m.weight != 0) for n, m in _weights(module, set(cfg.ignore))}
        try:
            if cfg.finetune.distributed:
                from ..ddp_worker import launch

                details["finetune"] = launch(module, teacher, ctx.train, cfg.finetune, log=ctx.log, evaluate=metric_text,
                                             where=ctx.where, threads=ctx.threads, masks=mask, seed=ctx.resolved.seed)
            else:
                details["finetune"] = finetune(module, teacher, ctx.train, cfg.finetune, log=ctx.log,
                                               evaluate=metric_text, where=ctx.where, threads=ctx.threads, masks=mask,
                                               progress=ctx.progress, seed=ctx.resolved.seed)
        except TrainingDiverged as exc:
            raise keep_last_good(ctx, exc, lambda folder: TorchModel(path=save_module(module, folder))) from None
    macs, params = count_macs(module, ctx.spec)
    details.update(macs=macs, params=params)
    ctx.details.update(details)
    path = save_module(module, ctx.out_dir)
    return TorchModel(path=path, module=module, notes=notes)
