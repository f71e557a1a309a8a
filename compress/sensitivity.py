"""`compress inspect --sensitivity RUN_DIR`: the per-layer sensitivity a quantize stage recorded
(`sensitivity: true` or `accuracy_control`), ranked, with the PyTorch module of each layer and the fallback
decisions, read from the run's report.json."""
from __future__ import annotations

from pathlib import Path

from rich.table import Table

from .errors import InputError


def sensitivity_tables(run_dir: Path) -> list[Table]:
    """One ranked table per stage that measured sensitivity; an InputError (exit 2) when none did."""
    from .report import load

    report = load(run_dir)
    tables = []
    for stage in report["stages"]:
        sens = stage.get("details", {}).get("sensitivity")
        if not sens:
            continue
        fallback = stage["details"].get("fallback") or {}
        kept = set(fallback.get("kept_fp32", []))
        table = Table(title=f"{stage['name']} ({stage['where']}): {sens['metric']} on {sens['samples']} eval samples, "
                            "most worth keeping in float first")
        for col in ("#", "layer", "module", "only INT8", "only float", "kept float"):
            table.add_column(col, overflow="fold")
        for i, row in enumerate(sens["rows"], 1):
            table.add_row(str(i), row["node"], row["module"] or "–", _num(row["only_this_quantized"]),
                          f"{row['only_this_fp32']:.3f}", "yes" if row["node"] in kept else "")
        tables.append(table)
    if not tables:
        raise InputError(f"{run_dir} has no sensitivity analysis: no quantize stage ran with `sensitivity: true` "
                         "or a ranked accuracy_control",
                         hint="Add `sensitivity: true` to the quantize stage and run the recipe again.")
    return tables


def _num(value) -> str:
    return "–" if value is None else f"{value:.3f}"
