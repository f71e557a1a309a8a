"""report.json (versioned schema) -> report.md, a table a person reads."""
from __future__ import annotations

import json
from pathlib import Path

from .fsutil import atomic_write_json, atomic_write_text
from .stages import handler_for_type

SCHEMA_VERSION = 2   # 2: a stage's intermediate artifacts under details.checkpoints (was details.ptq)


def _fmt(value, digits=2, suffix="") -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}{suffix}"


def _metric_cell(record: dict) -> str:
    primary = record.get("primary", {})
    value = primary.get('value')
    return f"{primary.get('name', '?')} {value:.4g}" if value is not None else '–'


def _agreement_cell(record: dict) -> str:
    if not record.get("agreement"):
        return "–"
    first = next(iter(record["agreement"].values()))
    parts = []
    if "top1_agreement" in first:
        parts.append(f"top-1 {first['top1_agreement']:.2f}%")
    parts.append(f"cos {first['cosine']:.4f}")
    return ", ".join(parts)


def _mmacs(record: dict) -> str:
    return "–" if not record.get("macs") else f"{record['macs'] / 1e6:.1f}"


_POINTS = {"top1", "top5", "top1_agreement", "cosine"}   # built-in metrics, in percent (points)

def runtime_names() -> dict[str, tuple[str, str]]:
    """Runtime as a report names it -> (abbreviation for narrow tables, what it is), from the runtime table."""
    from .runtimes import runtimes

    names = {}
    for entry in runtimes():
        for name in {entry.name, entry.artifact.runtime}:
            names[name] = (entry.short, entry.description or entry.name)
    return names


def _row(stage: str, record: dict, artifact: dict, baseline: bool = False) -> dict:
    """A table row; baselines (no delta, no speed-up of their own) read '–' and 1.00x.
    `metric` is name and value in one cell; `metric_name` and `metric_value` are the two parts."""
    compared = "delta" in record["primary"]
    delta = f"{record['primary']['delta']:+.2f}" if compared else "–"
    speedup = f"{record['speedup']['vs_fp32_same_runtime']:.2f}x" if compared else "1.00x"
    value = record.get("primary", {}).get("value")
    delta_ci = record["primary"].get("interval") if compared else None
    speed_ci = record["speedup"].get("interval") if compared else None
    return {"delta_ci": _ci(delta_ci, 2), "speedup_ci": _ci(speed_ci, 2, "x"), "stage": stage, "baseline": baseline,
            "artifact": artifact["type"], "runtime": record["runtime"],
            "precision": artifact["precision"], "metric": _metric_cell(record), "delta": delta,
            "metric_name": record.get("primary", {}).get("name"),
            "metric_value": _fmt(value, 2) if record.get("primary", {}).get("name") in _POINTS else
                            ("–" if value is None else f"{value:.4g}"),
            "agreement": _agreement_cell(record), "p50": _fmt(record["latency"]["p50_ms"], 3),
            "p99": _fmt(record["latency"]["p99_ms"], 3), "speedup": speedup,
            "size": _fmt(artifact.get("size_mb"), 3), "params": record.get("params"), "macs": _mmacs(record)}


def _ci(interval, digits: int, suffix: str = "") -> str:
    if not interval or any(v is None or v != v for v in interval):
        return "–"
    return f"[{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]{suffix}"


def _checkpoints(stage: dict) -> dict:
    """A stage's intermediate artifacts; schema 1 reports kept QAT's PTQ start under details.ptq."""
    details = stage["details"]
    if "checkpoints" in details:
        return details["checkpoints"]
    return {"PTQ start": details["ptq"]} if "ptq" in details else {}


def rows(report: dict) -> list[dict]:
    """One row per FP32 baseline and per stage, in the order a reader wants them."""
    out = []
    for name, base in report["baselines"].items():
        out.append(_row(f"fp32 {name}", {**base, "runtime": name}, {**base["artifact"], "precision": "fp32"},
                        baseline=True))
    for stage in report["stages"]:
        for name, point in _checkpoints(stage).items():   # e.g. QAT's PTQ start
            out.append(_row(f"{stage['name']}: {name}", point,
                            {"type": point["artifact_type"], "precision": point["precision"]}))
        out.append(_row(stage["name"] + (" (cached)" if stage.get("cached") else ""), stage, stage["artifact"]))
    return out


COLUMNS = [("stage", "stage"), ("artifact", "artifact"), ("runtime", "runtime"), ("precision", "precision"),
           ("metric", "metric"), ("delta", "Δ pts"), ("delta_ci", "Δ 95% CI"), ("agreement", "agreement vs FP32"),
           ("p50", "p50 ms"), ("p99", "p99 ms"), ("speedup", "speed-up*"), ("speedup_ci", "speed-up 95% CI"),
           ("size", "size MB"), ("params", "params"), ("macs", "MMACs")]


def markdown(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    verdict = "PASSED" if report["passed"] else "FAILED"
    lines = [f"# compress report: {report['name']}", "",
             f"**Verdict: {verdict}** — {len(report['gates'])} gate(s); final artifact "
             f"`{report['final_artifact']['path']}`", "",
             f"Machine: {m['cpu']} — ISA {', '.join(m['isa']) or 'baseline x86'}; {m['logical_cores']} logical cores. "
             f"Latency: batch {s['batch']}, {s['threads']} thread(s), {s['warmup']} warm-up + {s['runs']} timed runs. "
             f"Eval: {s['eval_samples']} samples; calibration set: {s['calibration_samples']} samples.", "",
             "| " + " | ".join(title for _, title in COLUMNS) + " |",
             "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for row in rows(report):
        lines.append("| " + " | ".join(str(row[key]) if row[key] is not None else "–" for key, _ in COLUMNS) + " |")
    lines += ["", "*speed-up: FP32 baseline on the same runtime vs this artifact, timed in paired rounds right after "
              "each other (the order flips every round) so machine noise hits both alike: the geometric mean of the "
              "rounds' median ratios, with the 95% interval of a paired t-test over rounds. "
              "Δ pts: change of the primary metric vs the FP32 reference, in points, with its 95% interval from the "
              "eval samples (paired bootstrap; exact binomial for top-1 agreement).", ""]
    lines += timing_lines(report)
    if report["gates"]:
        policy = next((g["policy"] for g in report["gates"] if "policy" in g), "point")
        lines += ["## Gates", "", f"Policy {policy}: an inconclusive gate (its 95% interval straddles the threshold) "
                  + ("fails." if policy == "conservative" else "is decided by the point estimate."), "",
                  "| gate | threshold | value | 95% interval | verdict | result | detail |",
                  "|---|---|---|---|---|---|---|"]
        for g in report["gates"]:
            result = "pass" if g["passed"] else "FAIL"
            lines.append(f"| {g['gate']} | {g['threshold']} | {g['value']} | {_ci(g.get('interval'), 4)} | "
                         f"{g.get('verdict', result.lower())} | {result} | {g['detail']} |")
        lines.append("")
    for stage in report["stages"]:
        handler = handler_for_type(stage["type"])
        lines += handler.sections(stage) if handler else []
    notes = list(report["model"]["notes"]) + list(report.get("data_notes", []))
    for stage in report["stages"]:
        if stage.get("cached"):
            how = "reused from the stage cache" if stage["cached"] == "cache" else "reused from this run folder (resumed)"
            notes.append(f"{stage['name']}: {how}; key {stage['key'][:12]}; validation ran again")
        notes += [f"{stage['name']}: {n}" for n in stage["notes"]]
        handler = handler_for_type(stage["type"])
        notes += [f"{stage['name']}: {n}" for n in (handler.notes(stage) if handler else [])]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["## Versions", "", ", ".join(f"{k} {v}" for k, v in report["versions"].items()), ""]
    return "\n".join(lines)


def timing_lines(report: dict) -> list[str]:
    """How each stage's speed-up was reached: rounds, runs, seconds, why timing stopped, machine load."""
    timed = [(s["name"], s["timing"]) for s in report["stages"] if s.get("timing")]
    if not timed:
        return []
    lines = ["## Timing", "", "| stage | rounds | runs each side | seconds | stopped | other processes (cores) | "
             "machine |", "|---|---|---|---|---|---|---|"]
    for name, t in timed:
        load = t["load"]
        lines.append(f"| {name} | {t['rounds']} | {t['runs']} | {t['seconds']:.1f} | {t['stopped']} | "
                     f"{load['other_cores']:.2f} of {load['cores']} | {'BUSY' if load['busy'] else 'quiet'} |")
    lines += ["", f"Timing stops when the speed-up's 95% interval is narrower than "
              f"{timed[0][1]['rel_precision']:.0%} of it, excludes every min_speedup threshold, or "
              f"{timed[0][1]['max_seconds']:g} s are spent. BUSY: other processes used more CPU than the cores "
              "the timing left free; intervals are wider and numbers less certain.", ""]
    return lines


def sensitivity_svg(sens: dict) -> str:
    """Horizontal bars: metric drop per layer, one bar per ratio (a plot without plotting libraries)."""
    ratios = [str(r) for r in sens["ratios"]]
    rows = sens["layers"]
    colors = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2"]
    worst = max([d for r in rows for d in r["drops"].values() if d is not None] + [0.1])
    bar, gap, label_w, width = 12, 8, 180, 360
    height = 40 + len(rows) * (len(ratios) * bar + gap)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + width + 80}" height="{height}" '
             'font-family="sans-serif" font-size="11">',
             f'<text x="4" y="14">{sens["metric"]} drop when one layer is pruned alone</text>']
    for i, ratio in enumerate(ratios):
        parts.append(f'<rect x="{label_w + i * 90}" y="20" width="10" height="10" fill="{colors[i % 5]}"/>'
                     f'<text x="{label_w + i * 90 + 14}" y="29">{float(ratio):.0%} of channels</text>')
    y = 40
    for row in rows:
        parts.append(f'<text x="4" y="{y + bar * len(ratios) / 2 + 4}">{row["layer"]}</text>')
        for i, ratio in enumerate(ratios):
            drop = row["drops"].get(ratio)
            w = 0 if drop is None else max(0.0, drop) / worst * width
            text = "n/a" if drop is None else f"{drop:.2f}"
            parts.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar - 2}" fill="{colors[i % 5]}"/>'
                         f'<text x="{label_w + w + 4:.1f}" y="{y + bar - 3}">{text}</text>')
            y += bar
        y += gap
    parts.append("</svg>")
    return "\n".join(parts)


def sensitivity_md(stage: dict) -> list[str]:
    sens = stage["details"].get("sensitivity")
    if not sens:
        return []
    ratios = [str(r) for r in sens["ratios"]]
    lines = [f"## Pruning sensitivity ({stage['name']})", "",
             f"{sens['metric']} on {sens['samples']} eval samples (torch), baseline {sens['baseline']:.2f}; "
             "drop (points; a metric of yours in its own units) when only that layer loses the share of its output "
             "channels with the lowest L1 norm "
             "(with everything that depends on them). Layers that hurt most are candidates for `ignore:`.", "",
             f"![sensitivity](sensitivity-{stage['name']}.svg)", "",
             "| layer | channels | " + " | ".join(f"drop @ {float(r):.0%}" for r in ratios) + " |",
             "|---|---|" + "---|" * len(ratios)]
    for row in sorted(sens["layers"], key=lambda r: -max([d for d in r["drops"].values() if d is not None] + [0])):
        cells = ["n/a" if row["drops"].get(r) is None else f"{row['drops'][r]:.2f}" for r in ratios]
        lines.append(f"| {row['layer']} | {row['channels']} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def assemble(*, recipe, plan, run_dir: Path, started: str, machine: dict, versions: dict, inputs, measurer,
             stages: list[dict], gates: list[dict], schema_version: int = SCHEMA_VERSION) -> dict:
    """report.json's content, from the run's parts."""
    from datetime import datetime

    return {
        "schema_version": schema_version, "name": recipe.name, "run_dir": str(run_dir),
        "started": started, "finished": datetime.now().isoformat(timespec="seconds"),
        "machine": machine, "versions": versions,
        "settings": {"threads": plan.threads, "batch": plan.batch, "warmup": recipe.latency.warmup,
                     "runs": recipe.latency.runs, "eval_batch_size": recipe.data.batch_size,
                     "eval_samples": len(inputs.eval), "calibration_samples": len(inputs.calibration)},
        "model": {"source": recipe.model.source, "inputs": [s.model_dump() for s in inputs.spec.inputs],
                  "outputs": inputs.spec.outputs, "notes": list(inputs.reference.notes)},
        "data_notes": list(inputs.notes),
        "reference": measurer.reference_record,
        "baselines": measurer.baselines,
        "stages": stages,
        "gates": gates,
        "passed": all(g["passed"] for g in gates),
        "final_artifact": stages[-1]["artifact"],
        "recipe": recipe.model_dump(mode="json"),
    }


def write(run_dir: Path, report: dict) -> None:
    for stage in report["stages"]:
        handler = handler_for_type(stage["type"])
        for name, text in (handler.files(stage) if handler else {}).items():
            atomic_write_text(run_dir / name, text)
    atomic_write_text(run_dir / "report.md", markdown(report))
    try:
        atomic_write_json(run_dir / "report.json", report)   # last: its presence means the report is complete
    except BaseException:
        (run_dir / "report.md").unlink(missing_ok=True)
        raise


def load(run_dir: Path) -> dict:
    from .errors import InputError

    path = Path(run_dir) / "report.json"
    if not path.is_file():
        status = Path(run_dir) / "run.json"
        if status.is_file():
            state = json.loads(status.read_text())
            raise InputError(f"{run_dir} has no report: the run is {state.get('status')}"
                             + (f" ({state['error']})" if state.get("error") else ""))
        raise InputError(f"{run_dir} is not a compress run folder (no report.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from exc
