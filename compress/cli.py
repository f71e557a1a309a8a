"""`compress` command line: a thin typer layer over the Python API.

Exit codes: 0 success, 1 unexpected error, 2 invalid input, 3 a gate failed, 130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from . import interrupt
from .errors import EXIT_GATE_FAILED, EXIT_UNEXPECTED, CompressError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compress a trained model: quantize, export, compile; validated after every stage.")
err = Console(stderr=True, highlight=False)
out = Console(highlight=False)
STATE = {"debug": False}


class ConsoleReporter:
    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.t0 = time.perf_counter()

    # The pipeline reports at every stage, baseline and validation: each report is also a point where a
    # Ctrl-C that a library swallowed (see compress.interrupt) ends the run.
    def step(self, text: str) -> None:
        interrupt.check()
        if not self.quiet:
            err.print(f"[bold cyan]{time.perf_counter() - self.t0:7.1f}s[/] {text}")

    def log(self, text: str) -> None:
        interrupt.check()
        if not self.quiet:
            err.print(f"[dim]{time.perf_counter() - self.t0:7.1f}s   {text}[/]")

    def progress(self, description: str, total: int):
        from .stages import Progress

        return Progress() if self.quiet else _Bar(description, total)


class _Bar:
    """A transient rich progress bar on stderr with live fields (e.g. the running loss)."""

    def __init__(self, description: str, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("          {task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=err, transient=True)
        self.task = self.bar.add_task(description, total=total, info="")
        self.bar.start()

    def update(self, advance: int = 1, **fields) -> None:
        info = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        self.bar.update(self.task, advance=advance, info=info)

    def close(self) -> None:
        self.bar.stop()


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors.")):
    STATE["debug"] = debug


def _guard(fn):
    """Turn our errors into one line and an exit code; tracebacks only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except CompressError as exc:
            if STATE["debug"]:
                err.print_exception()
            err.print(f"[red]error:[/] {exc.render()}")
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            err.print("[red]interrupted[/]")
            sys.exit(130)
        except Exception as exc:  # a bug or a backend failure nobody anticipated
            if STATE["debug"]:
                err.print_exception()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            err.print(f"[red]unexpected error:[/] {type(exc).__name__}: {first[:500]} "
                      "(run with --debug for the traceback)")
            sys.exit(EXIT_UNEXPECTED)

    return wrapper


def _print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# The run table on the console: one line per cell, so it stays a table in an 80-column terminal.
# Short headers, runtimes abbreviated (PT/ORT/OV) with a legend under the table, the primary
# metric's name in its header and only its value in the cells. The widest of CONSOLE_COLUMN_SETS
# that fits the console is shown: the last fits 80 columns; wider consoles add agreement with FP32
# and p99 (about 120 columns), then params and MACs. report.md keeps every column in full.
CONSOLE_COLUMNS = ("stage", "runtime", "precision", "metric", "delta", "p50", "speedup", "size")
WIDE_CONSOLE_COLUMNS = ("stage", "runtime", "precision", "metric", "delta", "agreement", "p50", "p99", "speedup",
                        "size")
CONSOLE_COLUMN_SETS = ((*WIDE_CONSOLE_COLUMNS, "params", "macs"), WIDE_CONSOLE_COLUMNS, CONSOLE_COLUMNS)
CONSOLE_TITLES = {"stage": "stage", "runtime": "runtime", "precision": "prec", "metric": "metric", "delta": "Δ pts",
                  "agreement": "agreement vs FP32", "p50": "p50 ms", "p99": "p99 ms", "speedup": "speed-up",
                  "size": "MB", "params": "params", "macs": "MMACs"}
_LEFT = {"stage", "runtime", "precision", "agreement"}
_METRIC_TITLE_MAX = 10   # a longer metric name goes to the legend and the header reads "metric"


def _table(report: dict, width: int | None = None) -> Table:
    """The run table with the widest column set whose cells all fit on one line within `width`
    (default: the console's)."""
    width = out.width if width is None else width
    for columns in CONSOLE_COLUMN_SETS:
        table = _run_table(report, columns)
        if _natural_width(table) <= width:
            break
    return table   # too wide even so only for a very long stage name: that column folds


def _natural_width(table: Table) -> int:
    import io

    return Console(width=10_000, file=io.StringIO()).measure(table).maximum


def _run_table(report: dict, columns: tuple[str, ...]) -> Table:
    from rich import box

    from .report import rows, runtime_names

    RUNTIMES = runtime_names()

    table_rows = rows(report)
    names = {row["metric_name"] for row in table_rows if row["metric_name"]}
    metric_name = next(iter(names)) if len(names) == 1 else None   # else each cell says which metric
    titles = dict(CONSOLE_TITLES)
    runtimes = [r for r in dict.fromkeys(row["runtime"] for row in table_rows) if r in RUNTIMES]
    named = dict.fromkeys(RUNTIMES[r] for r in runtimes)   # two names of one runtime: one legend entry
    legend = [", ".join(f"{short} = {what}" for short, what in named)] if named else []
    if metric_name is not None and len(metric_name) <= _METRIC_TITLE_MAX:
        titles["metric"] = metric_name
    elif metric_name is not None:
        legend.append(f"metric = {metric_name}")
    legend += ["Δ pts: primary metric vs the FP32 reference", "speed-up: p50 vs FP32 on the same runtime"]
    table = Table(title=f"{report['name']}: {'PASSED' if report['passed'] else 'FAILED'}", caption="; ".join(legend),
                  caption_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for key in columns:   # only the stage (a recipe's own name) may fold; numbers never wrap
        table.add_column(titles[key], justify="left" if key in _LEFT else "right", no_wrap=key != "stage",
                         overflow="fold")
    for row in table_rows:
        cells = {**row, "stage": "baseline" if row["baseline"] else row["stage"],
                 "runtime": RUNTIMES[row["runtime"]][0] if row["runtime"] in RUNTIMES else row["runtime"],
                 "metric": row["metric_value"] if metric_name is not None else row["metric"]}
        table.add_row(*[str(cells[key]) if cells[key] is not None else "–" for key in columns])
    return table


def _show_report(report: dict) -> None:
    out.print(_table(report))
    for g in report["gates"]:
        mark = "[green]pass[/]" if g["passed"] else "[red]FAIL[/]"
        how = f" ({g['verdict']})" if g.get("verdict") == "inconclusive" else ""
        out.print(f"gate {g['gate']}: {mark}{how} — {g['detail']}")
    for stage in report["stages"]:
        for note in stage["notes"]:
            out.print(f"[yellow]note[/] {stage['name']}: {note}")
    from .html import INSTALL_HINT

    folder = Path(report["run_dir"])
    page = folder / "report.html"
    out.print(f"report: {folder / 'report.md'}" + (f", {page}" if page.is_file() else f" (no report.html: {INSTALL_HINT})"))


@app.command()
@_guard
def run(recipe: Path | None = typer.Argument(None, help="recipe .yaml"),
        out_dir: Path = typer.Option(Path("runs"), "--out", help="folder for run folders (and the stage cache, .cache/)"),
        resume: Path | None = typer.Option(None, "--resume", help="continue this killed run folder"),
        no_cache: bool = typer.Option(False, "--no-cache", help="recompute every stage"),
        as_json: bool = typer.Option(False, "--json", help="print report.json to stdout"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress output")):
    """Run a recipe: baseline, every stage validated, gates, report."""
    from . import resume as api_resume
    from . import run as api_run
    from .errors import InputError

    if (recipe is None) == (resume is None):
        raise InputError("give a recipe file, or --resume <run folder>, not both")
    # Backends draw progress bars on stdout; keep stdout for the result (and pure JSON with --json).
    reporter = ConsoleReporter(quiet or as_json)
    with contextlib.ExitStack() as stack:
        stack.enter_context(interrupt.watch())   # Ctrl-C ends the run with 130 even if a library swallows it
        sink = stack.enter_context(open(os.devnull, "w")) if quiet else sys.stderr
        stack.enter_context(contextlib.redirect_stdout(sink))
        if resume is not None:
            result = api_resume(resume, reporter=reporter, cache=not no_cache)
        else:
            result = api_run(recipe, out=out_dir, reporter=reporter, cache=not no_cache)
    if as_json:
        _print_json(result.report)
    elif not quiet:
        _show_report(result.report)
    else:
        out.print(f"{'PASSED' if result.passed else 'FAILED'} {result.run_dir}")
    if not result.passed:
        failed = [g for g in result.gates if not g["passed"]]
        err.print("[red]gate failed:[/] " + "; ".join(f"{g['gate']}: {g['detail']}" for g in failed))
        raise typer.Exit(EXIT_GATE_FAILED)


@app.command()
@_guard
def validate(recipe: Path = typer.Argument(..., help="recipe .yaml"),
             as_json: bool = typer.Option(False, "--json")):
    """Check the recipe's schema, targets and artifact chain without running anything."""
    from . import validate as api_validate

    plan = api_validate(recipe)
    if as_json:
        _print_json({"valid": True, "stages": plan.describe(), "threads": plan.threads, "batch": plan.batch})
        return
    out.print(f"[green]valid[/]: {recipe}")
    for step in plan.describe():
        target = f" -> {step['target']}" if step["target"] else ""
        out.print(f"  {step['stage']} ({step['type']}{target}): {step['takes']} -> {step['gives']}")


@app.command()
@_guard
def targets(as_json: bool = typer.Option(False, "--json")):
    """List the built-in targets (targets/*.yaml), the runtime each compiles for, and whether this machine
    has what each needs."""
    from .runtimes import for_target
    from .runtimes import runtimes as runtime_table
    from .targets import builtin_targets

    found = builtin_targets()
    if as_json:
        _print_json([{**t.model_dump(), "artifact": for_target(t.runtime, t.format).artifact.kind,
                      "here": for_target(t.runtime, t.format).here or "ready",
                      "missing": t.missing_requirements()} for t in found.values()])
        return
    table = Table(title="targets")
    table.add_column("name", no_wrap=True)
    for col in ("runtime", "format", "INT8 from", "ready here"):
        table.add_column(col)
    for t in found.values():
        missing = t.missing_requirements()
        here = for_target(t.runtime, t.format).here
        table.add_row(t.name, t.runtime, t.format, ", ".join(t.quantize_backends),
                      f"[red]no: {', '.join(missing)}[/]" if missing else f"[green]{here or 'yes'}[/]")
    out.print(table)
    runtimes = Table(title="runtimes (a target names one by runtime + format)")
    for col in ("runtime", "format", "artifact", "abbrev.", "ready here"):
        runtimes.add_column(col)
    for entry in runtime_table():
        missing = [p for p in entry.requires if not _installed(p)]
        runtimes.add_row(entry.name, entry.format or "–", entry.artifact.kind, entry.short,
                         f"[red]no: {', '.join(missing)}[/]" if missing else f"[green]{entry.here or 'yes'}[/]")
    out.print(runtimes)


def _installed(distribution: str) -> bool:
    from importlib import metadata

    try:
        metadata.version(distribution)
        return True
    except metadata.PackageNotFoundError:
        return False


@app.command()
@_guard
def inspect(run_dir: Path = typer.Argument(..., help="a run folder (runs/<name>-<timestamp>)"),
            layers: bool = typer.Option(False, "--layers", help="trace FP32 vs INT8 layer by layer "
                                        "(writes inspect/layers.json)"),
            stage: str | None = typer.Option(None, "--stage", help="with --layers: the INT8 stage (default: the first)"),
            batches: int = typer.Option(2, "--batches", help="with --layers: calibration batches to trace"),
            as_json: bool = typer.Option(False, "--json"),
            sensitivity: bool = typer.Option(False, "--sensitivity",
                                             help="the per-layer sensitivity ranking a quantize stage recorded")):
    """Print the report of a finished run; --layers: where its INT8 model loses accuracy; --sensitivity: the
    per-layer ranking a quantize stage recorded."""
    from .report import load

    if sensitivity:
        from .sensitivity import sensitivity_tables

        for table in sensitivity_tables(run_dir):
            out.print(table)
        return
    if layers:
        from .inspect_layers import table, trace

        result = trace(run_dir, stage=stage, batches=batches, log=lambda m: None if as_json else err.print(f"[dim]{m}[/]"))
        _print_json(result) if as_json else [out.print(t) for t in table(result)]
        return
    report = load(run_dir)
    if as_json:
        _print_json(report)
    else:
        _show_report(report)


@app.command("report")
@_guard
def report_command(run_dir: Path = typer.Argument(..., help="a run folder (runs/<name>-<timestamp>)")):
    """Write report.md and report.html of a finished run again (e.g. to add `inspect --layers`' plot)."""
    from .report import refresh

    _show_report(refresh(run_dir))


@app.command()
@_guard
def build(source: Path = typer.Argument(..., help="a run folder compiled for a TensorRT target, or its model.onnx"),
          target: str | None = typer.Option(None, "--target", help="TensorRT target (default: the run's)"),
          runs: int = typer.Option(200, min=1, help="timed runs per engine (CUDA events)"),
          ray: str | None = typer.Option(None, "--ray", help="run the build as a Ray task on the node with the "
                                         "target's resource: auto, host:port or ray://host:port"),
          store: str | None = typer.Option(None, "--store", help="with --ray: where the files move through, "
                                           "content-addressed: a folder every node mounts at the same path, or an "
                                           "fsspec URL (s3://bucket/prefix with s3fs installed, gs://, az://...)"),
          connect_timeout: float = typer.Option(10.0, "--connect-timeout", min=0.1, help="with --ray: seconds"),
          as_json: bool = typer.Option(False, "--json")):
    """On the device: build the INT8 TensorRT engine (and an FP16 one to compare), validate and time it."""
    log = lambda m: err.print(f"[dim]{m}[/]")   # noqa: E731
    if ray is not None:
        from .dispatch import dispatch_build
        from .errors import InputError

        if store is None:
            raise InputError("--ray needs --store: a folder every node of the cluster sees at the same path, or "
                             "an fsspec URL such as s3://bucket/prefix", where="--store")
        result = dispatch_build(source, target_name=target, address=ray, store=str(store), runs=runs,
                                connect_timeout=connect_timeout, log=log)
    else:
        from .build import build as api_build
        from .errors import InputError

        if store is not None:
            raise InputError("--store applies to --ray builds only", where="--store")
        result = api_build(source, target_name=target, runs=runs, log=log)
    if as_json:
        _print_json(result)
    else:
        table = Table(title=f"TensorRT engines for {result['target']} ({result['device'].get('gpu_name')})")
        for col in ("engine", result.get("metric", "metric"), "p50 ms", "p99 ms"):
            table.add_column(col)
        table.add_row("FP32 reference (torch)", f"{result.get('reference', float('nan')):.2f}", "–", "–")
        table.add_row("INT8 emulated (ORT CPU)", f"{result.get('emulated', float('nan')):.2f}", "–", "–")
        table.add_row("INT8 engine", f"{result.get('engine', float('nan')):.2f}",
                      f"{result['latency_int8']['p50_ms']:.3f}", f"{result['latency_int8']['p99_ms']:.3f}")
        if "latency_fp16" in result:
            table.add_row("FP16 engine", "–", f"{result['latency_fp16']['p50_ms']:.3f}",
                          f"{result['latency_fp16']['p99_ms']:.3f}")
        out.print(table)
        for g in result["gates"]:
            out.print(f"gate {g['gate']}: {'[green]pass[/]' if g['passed'] else '[red]FAIL[/]'} — {g['detail']}")
        out.print(f"trtexec equivalent: {result['int8'].get('trtexec')}")
        out.print(f"engine: {result['folder']}/model.engine (manifest.json beside it)")
    if not all(g["passed"] for g in result["gates"]):
        raise typer.Exit(EXIT_GATE_FAILED)


@app.command()
@_guard
def sweep(spec: Path = typer.Argument(..., help="sweep .yaml: base recipe + axes"),
          out_dir: Path = typer.Option(Path("sweeps"), "--out", help="the sweep's folder is <out>/<name>"),
          executor: str = typer.Option("local", "--executor", help="local (process pool) or ray"),
          address: str = typer.Option("local", "--address",
                                      help="ray: auto, host:port, ray://host:port, or local (a cluster in this process)"),
          resume: bool = typer.Option(False, "--resume", help="continue: skip the points already done"),
          connect_timeout: float = typer.Option(10.0, "--connect-timeout", min=1, help="seconds to reach the Ray cluster"),
          as_json: bool = typer.Option(False, "--json", help="print sweep.json to stdout")):
    """Run every point of a sweep (each an ordinary run, sharing the stage cache); Pareto report.
    Exit 0 when a point passed its gates (recommended.yaml), 3 when none did."""
    from . import executors
    from .errors import InputError
    from .sweep import execute, load_sweep

    if executor not in ("local", "ray"):
        raise InputError(f"--executor must be local or ray, got {executor!r}")
    spec_ = load_sweep(spec)
    run_points = executors.local if executor == "local" else executors.ray_executor(address, timeout=connect_timeout)

    def progress(record: dict, count: int, total: int) -> None:
        if record["status"] == "done":
            verdict = "[green]passed[/]" if record["passed"] else "[yellow]gate failed[/]"
            text = (f"{verdict} {record['metric']} {record['value']:.2f}, p50 {record['p50_ms']:.3f} ms, "
                    f"{record['size_mb']} MB")
        else:
            text = f"[red]failed[/]: {record.get('error')}"
        err.print(f"[bold cyan][{count}/{total}][/] point {record['index']} ({record['label']}) "
                  f"{record.get('seconds', 0):.1f}s: {text}")

    try:
        report = execute(spec_, out_dir, executor=run_points, resume=resume, progress=progress)
    except KeyboardInterrupt:
        err.print(f"[red]interrupted[/]: finished points are kept; continue with `compress sweep {spec} --resume`")
        sys.exit(130)
    if as_json:
        _print_json(report)
    else:
        _show_sweep(report, Path(out_dir) / spec_.name)
    if not report["recommended"]:   # no point passed its gates (failed points alone do not fail the sweep)
        raise typer.Exit(EXIT_GATE_FAILED)


def _show_sweep(report: dict, folder: Path) -> None:
    counts = report["counts"]
    out.print(f"sweep {report['name']}: {counts['done']} done, {counts['failed']} failed, {counts['not run']} not run")
    if report["recommended"]:
        out.print(f"recommended: {report['recommended_yaml']}")
    else:
        out.print("no point passed its gates")
    out.print(f"report: {folder / 'sweep.md'} ({folder / 'sweep.html'})")


@app.command()
@_guard
def bench(model: Path = typer.Argument(..., help=".onnx (ONNX Runtime) or .xml (OpenVINO)"),
          threads: int = typer.Option(2, min=1), batch: int = typer.Option(1, min=1),
          warmup: int = typer.Option(10, min=0), runs: int = typer.Option(50, min=1),
          precision: str = typer.Option("f32", help="OpenVINO inference precision: f32 or bf16"),
          as_json: bool = typer.Option(False, "--json")):
    """Time a model file with the same latency harness as `run` (random inputs)."""
    from . import bench as api_bench
    from .errors import InputError

    if precision not in ("f32", "bf16"):
        raise InputError(f"--precision must be f32 or bf16, got {precision}")
    result = api_bench(model, threads=threads, batch=batch, warmup=warmup, runs=runs, inference_precision=precision)
    if as_json:
        _print_json(result)
        return
    lat = result["latency"]
    out.print(f"{model} on {result['runtime']} ({threads} threads, batch {batch}): p50 {lat['p50_ms']:.3f} ms, "
              f"p90 {lat['p90_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms — {result['machine']['cpu']}, "
              f"ISA {', '.join(result['machine']['isa'])}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
