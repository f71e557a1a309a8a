"""`compress` command line: a thin typer layer over the Python API.

Exit codes: 0 success, 1 unexpected error, 2 invalid input, 3 a gate failed, 130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import contextlib
import functools
import os
import json
import sys
import time
from pathlib import Path
from typing import Optional

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


CONSOLE_COLUMNS = ("stage", "runtime", "precision", "metric", "delta", "p50", "speedup", "size")


def _table(report: dict) -> Table:
    from .report import COLUMNS, rows

    titles = dict(COLUMNS)
    table = Table(title=f"{report['name']}: {'PASSED' if report['passed'] else 'FAILED'}")
    for key in CONSOLE_COLUMNS:
        table.add_column(titles[key], overflow="fold")
    for row in rows(report):
        table.add_row(*[str(row[key]) if row[key] is not None else "–" for key in CONSOLE_COLUMNS])
    return table


def _show_report(report: dict) -> None:
    out.print(_table(report))
    for g in report["gates"]:
        mark = "[green]pass[/]" if g["passed"] else "[red]FAIL[/]"
        out.print(f"gate {g['gate']}: {mark} — {g['detail']}")
    for stage in report["stages"]:
        for note in stage["notes"]:
            out.print(f"[yellow]note[/] {stage['name']}: {note}")
    out.print(f"report: {Path(report['run_dir']) / 'report.md'}")


@app.command()
@_guard
def run(recipe: Optional[Path] = typer.Argument(None, help="recipe .yaml"),
        out_dir: Path = typer.Option(Path("runs"), "--out", help="folder for run folders (and the stage cache, .cache/)"),
        resume: Optional[Path] = typer.Option(None, "--resume", help="continue this killed run folder"),
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
    """List the built-in targets (targets/*.yaml) and whether this machine has what each needs."""
    from .targets import builtin_targets

    found = builtin_targets()
    if as_json:
        _print_json([{**t.model_dump(), "missing": t.missing_requirements()} for t in found.values()])
        return
    table = Table(title="targets")
    for col in ("name", "runtime", "format", "threads", "batch", "quantize backend", "needs", "ready"):
        table.add_column(col)
    for t in found.values():
        missing = t.missing_requirements()
        table.add_row(t.name, t.runtime, t.format, str(t.threads), str(t.batch), t.quantize_backend,
                      ", ".join(f"{k}{v}" for k, v in t.requires.items()),
                      "[green]yes[/]" if not missing else f"[red]no: {', '.join(missing)}[/]")
    out.print(table)


@app.command()
@_guard
def inspect(run_dir: Path = typer.Argument(..., help="a run folder (runs/<name>-<timestamp>)"),
            as_json: bool = typer.Option(False, "--json")):
    """Print the report of a finished run."""
    from .report import load

    report = load(run_dir)
    if as_json:
        _print_json(report)
    else:
        _show_report(report)


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
