"""report.json (versioned schema) -> report.md, a table a person reads."""
from __future__ import annotations

import json
from pathlib import Path

from .fsutil import atomic_write_json, atomic_write_text


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


def rows(report: dict) -> list[dict]:
    """One row per FP32 baseline and per stage, in the order a reader wants them."""
    out = []
    for name, base in report["baselines"].items():
        out.append({"stage": f"fp32 {name}", "artifact": base["artifact"]["type"], "runtime": name,
                    "precision": "fp32", "metric": _metric_cell(base), "delta": "–",
                    "agreement": _agreement_cell(base), "p50": _fmt(base["latency"]["p50_ms"], 3),
                    "p99": _fmt(base["latency"]["p99_ms"], 3), "speedup": "1.00x",
                    "size": _fmt(base["artifact"].get("size_mb"), 3), "params": base.get("params")})
    for stage in report["stages"]:
        out.append({"stage": stage["name"] + (" (cached)" if stage.get("cached") else ""), "artifact": stage["artifact"]["type"], "runtime": stage["runtime"],
                    "precision": stage["artifact"]["precision"], "metric": _metric_cell(stage),
                    "delta": f"{stage['primary']['delta']:+.2f}", "agreement": _agreement_cell(stage),
                    "p50": _fmt(stage["latency"]["p50_ms"], 3), "p99": _fmt(stage["latency"]["p99_ms"], 3),
                    "speedup": f"{stage['speedup']['vs_fp32_same_runtime']:.2f}x",
                    "size": _fmt(stage["artifact"].get("size_mb"), 3), "params": stage.get("params")})
    return out


COLUMNS = [("stage", "stage"), ("artifact", "artifact"), ("runtime", "runtime"), ("precision", "precision"),
           ("metric", "metric"), ("delta", "Δ pts"), ("agreement", "agreement vs FP32"), ("p50", "p50 ms"),
           ("p99", "p99 ms"), ("speedup", "speed-up*"), ("size", "size MB"), ("params", "params")]


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
    lines += ["", "*speed-up: p50 latency of the FP32 baseline on the same runtime divided by this artifact's p50, "
              "both timed in alternating rounds right after each other so machine noise hits both alike. "
              "Δ pts: change of the primary metric vs the FP32 reference, in points.", ""]
    if report["gates"]:
        lines += ["## Gates", "", "| gate | threshold | value | result | detail |", "|---|---|---|---|---|"]
        for g in report["gates"]:
            lines.append(f"| {g['gate']} | {g['threshold']} | {g['value']} | {'pass' if g['passed'] else 'FAIL'} | {g['detail']} |")
        lines.append("")
    notes = list(report["model"]["notes"]) + list(report.get("data_notes", []))
    for stage in report["stages"]:
        if stage.get("cached"):
            how = "reused from the stage cache" if stage["cached"] == "cache" else "reused from this run folder (resumed)"
            notes.append(f"{stage['name']}: {how}; key {stage['key'][:12]}; validation ran again")
        notes += [f"{stage['name']}: {n}" for n in stage["notes"]]
        d = stage["details"]
        if "scheme" in d:
            notes.append(f"{stage['name']}: ORT scheme {d['scheme']} ({d['scheme_reason']})"
                         + (": " + ", ".join(f"{k} top-1 agreement {v.get('top1_agreement', float('nan')):.2f}%, "
                                             f"cos {v['cosine']:.4f}" for k, v in d["scheme_candidates"].items())
                            if d.get("scheme_candidates") else ""))
        if "parity" in d:
            notes.append(f"{stage['name']}: ONNX vs torch max |diff| {d['parity']['max_abs_diff']:.2e} "
                         f"(allowed {d['parity']['allowed']:.2e})")
        if "inference_precision" in d:
            notes.append(f"{stage['name']}: OpenVINO runs non-INT8 layers in {d['inference_precision']}")
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["## Versions", "", ", ".join(f"{k} {v}" for k, v in report["versions"].items()), ""]
    return "\n".join(lines)


def write(run_dir: Path, report: dict) -> None:
    atomic_write_json(run_dir / "report.json", report)
    atomic_write_text(run_dir / "report.md", markdown(report))


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
        raise InputError(f"{path} is not valid JSON: {exc}") from None
