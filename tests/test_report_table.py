"""The run table `compress run`/`inspect` print: every cell on one line in an 80-column terminal,
more columns when the console is wider, runtime abbreviations explained under the table.

The reports are real runs' report.json (tests/data/run_report_*.json: a prune -> QAT -> compile
chain on OpenVINO with cached stages and a PTQ start row, and export -> quantize -> compile on ONNX
Runtime), so the widths are those of real cells."""
from __future__ import annotations

import copy
import io
import json
import re

import pytest
from rich.console import Console

from compress import cli
from compress.report import rows

from conftest import ROOT

REPORTS = sorted((ROOT / "tests" / "data").glob("run_report_*.json"))
LEGEND = {"torch": "PT = torch", "onnxruntime": "ORT = ONNX Runtime", "openvino": "OV = OpenVINO"}
ABBREVIATION = {"torch": "PT", "onnxruntime": "ORT", "openvino": "OV"}


def _load(path) -> dict:
    return json.loads(path.read_text())


def _render(report: dict, width: int) -> str:
    console = Console(width=width, record=True, highlight=False, color_system=None, file=io.StringIO())
    console.print(cli._table(report, width))
    return console.export_text()


def _header(text: str) -> str:
    (line,) = [line for line in text.splitlines() if line.startswith("stage ")]
    return line


def _cells(row: dict, columns: tuple[str, ...], metric_in_header: bool) -> list[str]:
    cells = {**row, "stage": "baseline" if row["baseline"] else row["stage"], "runtime": ABBREVIATION[row["runtime"]],
             "metric": row["metric_value"] if metric_in_header else row["metric"]}
    return [str(cells[key]) for key in columns]


def _assert_one_line_per_row(text: str, report: dict, columns: tuple[str, ...], metric_in_header: bool = True):
    lines = text.splitlines()
    for row in rows(report):
        pattern = r"\s+".join(re.escape(cell) for cell in _cells(row, columns, metric_in_header))
        assert any(re.search(pattern, line) for line in lines), f"row {row['stage']!r} is not on one line:\n{text}"


@pytest.mark.parametrize("path", REPORTS, ids=lambda p: p.stem)
def test_the_run_table_fits_80_columns_with_one_line_per_cell(path):
    report = _load(path)
    text = _render(report, 80)
    print(text)
    assert all(len(line) <= 80 for line in text.splitlines()), text
    header = _header(text)   # every header on the one header line, none split
    assert re.search(r"stage\s+runtime\s+prec\s+top1\s+Δ pts\s+p50 ms\s+speed-up\s+MB$", header.rstrip()), header
    _assert_one_line_per_row(text, report, cli.CONSOLE_COLUMNS)
    assert "agreement" not in text and "p99" not in text
    legend = " ".join(text.split())   # the caption may wrap: it is prose
    used = {row["runtime"] for row in rows(report)}
    assert all(LEGEND[runtime] in legend for runtime in used), legend
    assert not any(LEGEND[runtime] in legend for runtime in set(LEGEND) - used)
    assert "Δ pts: primary metric vs the FP32 reference" in legend and "speed-up: p50 vs FP32" in legend


@pytest.mark.parametrize("path", REPORTS, ids=lambda p: p.stem)
def test_a_120_column_console_also_shows_agreement_and_p99(path):
    report = _load(path)
    text = _render(report, 120)
    print(text)
    assert all(len(line) <= 120 for line in text.splitlines()), text
    assert re.search(r"stage\s+runtime\s+prec\s+top1\s+Δ pts\s+agreement vs FP32\s+p50 ms\s+p99 ms\s+speed-up\s+MB$",
                     _header(text).rstrip())
    _assert_one_line_per_row(text, report, cli.WIDE_CONSOLE_COLUMNS)
    assert "top-1 100.00%, cos 1.0000" in text   # the FP32 baseline on its runtime agrees with torch
    wide = _render(report, 200)
    assert _header(wide).rstrip().endswith("params   MMACs")


def test_a_long_metric_name_goes_to_the_legend():
    report = _load(ROOT / "tests" / "data" / "run_report_onnxruntime_int8.json")
    agreement = copy.deepcopy(report)
    for record in [*agreement["baselines"].values(), *agreement["stages"]]:
        record["primary"]["name"] = "top1_agreement"
    text = _render(agreement, 80)
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert re.search(r"prec\s+metric\s+Δ pts", _header(text)) and "metric = top1_agreement" in " ".join(text.split())
    _assert_one_line_per_row(text, agreement, cli.CONSOLE_COLUMNS)


def test_inspect_prints_the_narrow_table_in_an_80_column_terminal(monkeypatch, tmp):
    path = ROOT / "tests" / "data" / "run_report_prune_qat_openvino.json"
    report = {**_load(path), "run_dir": str(tmp)}
    console = Console(width=80, record=True, highlight=False, color_system=None, file=io.StringIO())
    monkeypatch.setattr(cli, "out", console)
    cli._show_report(report)
    text = console.export_text()
    table = text[:text.index("gate max_accuracy_drop")]
    assert all(len(line) <= 80 for line in table.splitlines()), table
    _assert_one_line_per_row(table, report, cli.CONSOLE_COLUMNS)
    assert "compile (cached)" in table and "qat: PTQ start" in table
