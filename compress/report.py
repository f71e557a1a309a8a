"""report.json (versioned schema) -> report.md, a table a person reads."""
from __future__ import annotations

import json
from pathlib import Path

from . import html
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
    notes = _notes(report)
    if not html.available():
        notes.append(f"no report.html: {html.INSTALL_HINT}")
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["## Versions", "", ", ".join(f"{k} {v}" for k, v in report["versions"].items()), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- report.html
def _points(report: dict) -> list[dict]:
    """Every artifact of the run (FP32 baselines, stage outputs and their checkpoints) and every calibration
    candidate a stage tried: label, group, primary metric, p50 latency, size."""
    def point(label, group, record, size):
        return {"label": label, "group": group, "metric": record.get("primary", {}).get("value"),
                "latency_ms": record.get("latency", {}).get("p50_ms"), "size_mb": size}

    out = [point(f"fp32 {name}", "FP32 baseline", base, base["artifact"].get("size_mb"))
           for name, base in report["baselines"].items()]
    primary = report["reference"]["primary"]["name"]
    for stage in report["stages"]:
        for name, cp in _checkpoints(stage).items():
            out.append(point(f"{stage['name']}: {name}", "stage checkpoint", cp, cp.get("size_mb")))
        out.append(point(stage["name"], "stage output", stage, stage["artifact"].get("size_mb")))
        for cand in stage["details"].get("calibration_candidates", []):
            metric = cand.get("metric", {})
            if not metric:   # the library failed on it: nothing to plot (the notes say so)
                continue
            value = metric.get(primary, next(iter(metric.values()), None))
            out.append({"label": cand["name"], "group": f"{stage['name']}: calibration candidates", "metric": value,
                        "latency_ms": cand.get("latency_ms"), "size_mb": cand.get("size_mb"),
                        "chosen": cand.get("chosen", False)})
    return out


def _gate_rows(report: dict) -> list[dict]:
    out = []
    for g in report["gates"]:
        verdict = g.get("verdict") or ("pass" if g["passed"] else "fail")
        interval = g.get("interval")
        out.append({**g, "verdict": verdict,
                    "interval": f"[{interval[0]:.4g}, {interval[1]:.4g}]" if interval else None})
    return out


def _layer_parts(trace: dict, where: str) -> list[str]:
    layers = trace.get("layers", [])
    if not layers:
        return []
    labels = [r.get("module") or r.get("node") or r["tensor"] for r in layers]
    parts = [html.paragraph(f"{where}: stage {trace.get('stage')} on {trace.get('runtime')} vs its FP32 model "
                            f"({trace.get('fp32')}), {trace.get('samples')} calibration samples; SQNR of each layer's "
                            "output in dB (higher is better; the 5 lowest in red)."),
             html.figure(html.layer_profile(labels, [r["sqnr_db"] for r in layers], ylabel="SQNR vs FP32 (dB)",
                                            title="per-layer error of the INT8 model, network order"))]
    ranked = sorted(layers, key=lambda r: r["sqnr_db"])[:10]
    columns = [("module", "module"), ("op", "op"), ("sqnr_db", "SQNR dB"), ("cosine", "cosine"), ("max_abs", "max abs"),
               ("qdq_sqnr_db", "own Q/DQ dB"), ("weight_sqnr_db", "weight dB"), ("weight_module", "weights of")]
    parts.append(html.table([c for c in columns if any(r.get(c[0]) is not None for r in ranked)],
                            [{**r, "module": r.get("module") or r.get("node")} for r in ranked], left={"module", "op"}))
    cross = trace.get("cross_runtime")
    if cross and cross.get("rows"):
        parts += [html.paragraph(f"The same FP32 model on other runtimes vs {cross['reference']} (an export problem "
                                 "shows here, not in the INT8 trace):"),
                  html.table([("runtime", "runtime"), ("output", "output"), ("cosine", "cosine"), ("max_abs", "max abs"),
                              ("sqnr_db", "SQNR dB")], cross["rows"], left={"runtime", "output"})]
    return parts


def _stage_parts(stage: dict, reference: float | None) -> list[str]:
    """Plots from a stage's details, chosen by the keys present (never by stage type)."""
    d, name, parts = stage["details"], stage["name"], []
    sens = d.get("sensitivity")
    if sens and "rows" in sens:
        rows_ = sorted(sens["rows"], key=lambda r: r.get("only_this_quantized") or 0)[:30]
        labels = [r.get("module") or r["node"] for r in rows_]

        def delta(v):
            return None if v is None or reference is None else v - reference

        parts.append(html.section(
            f"Quantization sensitivity ({name})",
            html.paragraph(f"{sens['metric']} on {sens['samples']} samples, change vs the FP32 reference (points): "
                           "with only this layer in INT8, and with only this layer left in FP32."),
            html.figure(html.hbars(labels, {"only this layer INT8": [delta(r.get("only_this_quantized")) for r in rows_],
                                            "only this layer FP32": [delta(r.get("only_this_fp32")) for r in rows_]},
                                   title="per-layer sensitivity", xlabel=f"Δ {sens['metric']} vs FP32"))))
    elif sens and "layers" in sens:
        parts.append(html.section(f"Pruning sensitivity ({name})",
                                  html.paragraph(f"{sens['metric']} on {sens['samples']} eval samples, baseline "
                                                 f"{sens['baseline']:.2f}."),
                                  html.figure(sensitivity_svg(sens))))
    fb = d.get("fallback")
    if fb:
        steps = fb.get("steps", [])
        labels = ["plain INT8"] + [s.get("module") or s["node"] for s in steps]
        budget = None
        if fb.get("baseline") is not None and fb.get("max_drop") is not None:
            budget = fb["baseline"] - fb["max_drop"]
        parts.append(html.section(
            f"Fallback to FP32 ({name})",
            html.paragraph(f"{'met' if fb.get('met') else 'NOT met'}: {len(fb.get('kept_fp32', []))} layer(s) kept in "
                           f"FP32 (budget {fb.get('budget')}), max drop {fb.get('max_drop')} of {fb.get('metric')}."),
            html.figure(html.steps(labels, [fb.get("plain_int8")] + [s.get("metric") for s in steps],
                                   title="metric after each layer put back to FP32", ylabel=str(fb.get("metric")),
                                   hlines={"FP32 baseline": fb.get("baseline"), "allowed minimum": budget})),
            html.table([("node", "layer tried in FP32"), ("module", "module"), ("outcome", "outcome"),
                        ("metric", fb.get("metric") or "metric"), ("latency_ms", "p50 ms")],
                       [dict(s, outcome="kept in FP32" if s.get("kept", True) else "back to INT8",
                             latency_ms=None if s.get("latency_ms") is None else f"{s['latency_ms']:.3f}")
                        for s in steps],
                       left={"node", "module", "outcome"})))
    if d.get("layer_trace"):
        parts.append(html.section(f"Layer trace ({name})", *_layer_parts(d["layer_trace"], "from the stage")))
    return parts


def html_page(report: dict, layers: dict | None = None) -> str:
    """report.html: the stage table, trade-off plots, per-stage evidence, gates, environment (self-contained)."""
    m, s = report["machine"], report["settings"]
    primary = report["reference"]["primary"]
    verdict = "PASSED" if report["passed"] else "FAILED"
    points = _points(report)
    unit = f"{primary['name']}" + (" (%)" if primary["name"] in _POINTS else "")
    parts = [f"<h1>compress report: {html.esc(report['name'])}</h1>",
             f'<p class="verdict"><span class="{"pass" if report["passed"] else "fail"}">{verdict}</span> — '
             f"{len(report['gates'])} gate(s); final artifact <code>{html.esc(report['final_artifact']['path'])}</code></p>",
             html.paragraph(f"Latency: batch {s['batch']}, {s['threads']} thread(s), {s['warmup']} warm-up + {s['runs']} "
                            f"timed runs. Eval: {s['eval_samples']} samples; calibration set: "
                            f"{s['calibration_samples']} samples.", muted=True),
             html.section("Stages", html.table(COLUMNS, rows(report), left={"stage", "artifact", "runtime", "precision",
                                                                            "metric", "agreement"}),
                          html.paragraph("speed-up: p50 of the FP32 baseline on the same runtime / this artifact's p50, "
                                         "timed in alternating rounds. Δ pts: primary metric vs the FP32 reference.",
                                         muted=True)),
             html.section("Accuracy vs latency and size", html.row(
                          html.figure(html.scatter(points, x="latency_ms", y="metric", xlabel="p50 latency (ms)",
                                                   ylabel=unit, title=f"{primary['name']} vs latency", log_x=True)),
                          html.figure(html.scatter(points, x="size_mb", y="metric", xlabel="size (MB)", ylabel=unit,
                                                   title=f"{primary['name']} vs model size"),
                                      "the FP32 torch model has no file, so no size")))]
    if report["gates"]:
        parts.append(html.section("Gates", html.table(
            [("gate", "gate"), ("threshold", "threshold"), ("value", "value"), ("interval", "interval"),
             ("verdict", "result"), ("detail", "detail")], _gate_rows(report), left={"gate", "detail"},
            classes={"pass": "pass", "fail": "fail", "inconclusive": "inconclusive"})))
    for stage in report["stages"]:
        parts += _stage_parts(stage, primary.get("value"))
    if layers:
        parts.append(html.section("Layer trace", *_layer_parts(layers, "compress inspect --layers")))
    notes = _notes(report)
    if notes:
        parts.append(html.section("Notes", "<ul>" + "".join(f"<li>{html.esc(n)}</li>" for n in notes) + "</ul>"))
    env = [{"key": "CPU", "value": m.get("cpu")}, {"key": "ISA", "value": ", ".join(m.get("isa", [])) or "baseline x86"},
           {"key": "cores", "value": f"{m.get('logical_cores')} logical, {m.get('physical_cores')} physical"},
           {"key": "memory", "value": f"{m.get('memory_gb')} GB"}, {"key": "OS", "value": m.get("os")},
           {"key": "Python", "value": m.get("python")}]
    parts.append(html.section("Environment", html.table([("key", "machine"), ("value", "")], env, left={"key", "value"}),
                              html.table([("key", "library"), ("value", "version")],
                                         [{"key": k, "value": v} for k, v in report["versions"].items()],
                                         left={"key", "value"})))
    parts.append(html.paragraph(f"run {report['run_dir']}, started {report['started']}, finished {report['finished']}",
                                muted=True))
    return html.page(f"compress report: {report['name']}", parts)


def _notes(report: dict) -> list[str]:
    notes = list(report["model"]["notes"]) + list(report.get("data_notes", []))
    for stage in report["stages"]:
        if stage.get("cached"):
            how = "reused from the stage cache" if stage["cached"] == "cache" else "reused from this run folder (resumed)"
            notes.append(f"{stage['name']}: {how}; key {stage['key'][:12]}; validation ran again")
        notes += [f"{stage['name']}: {n}" for n in stage["notes"]]
        handler = handler_for_type(stage["type"])
        notes += [f"{stage['name']}: {n}" for n in (handler.notes(stage) if handler else [])]
    return notes


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
    """Pruning sensitivity: metric drop per layer, one bar per ratio (matplotlib, SVG)."""
    ratios = [str(r) for r in sens["ratios"]]
    layers = sens["layers"]
    return html.hbars([row["layer"] for row in layers],
                      {f"{float(r):.0%} of channels": [row["drops"].get(r) for row in layers] for r in ratios},
                      title=f"{sens['metric']} drop when one layer is pruned alone", xlabel="drop (points)")


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
             *([f"![sensitivity](sensitivity-{stage['name']}.svg)", ""] if html.available() else []),
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


def _write_readable(run_dir: Path, report: dict) -> None:
    """report.md, report.html (with matplotlib) and the files handlers add (plots report.md links)."""
    for stage in report["stages"]:
        handler = handler_for_type(stage["type"])
        for name, text in (handler.files(stage) if handler else {}).items():
            atomic_write_text(run_dir / name, text)
    atomic_write_text(run_dir / "report.md", markdown(report))
    if html.available():
        atomic_write_text(run_dir / "report.html", html_page(report, layers=layer_trace(run_dir)))


def write(run_dir: Path, report: dict) -> None:
    try:
        _write_readable(run_dir, report)
        atomic_write_json(run_dir / "report.json", report)   # last: its presence means the report is complete
    except BaseException:
        for name in ("report.md", "report.html"):
            (run_dir / name).unlink(missing_ok=True)
        raise


def refresh(run_dir: Path) -> dict:
    """Write report.md and report.html of a finished run again from its report.json (and inspect/)."""
    report = load(run_dir)
    _write_readable(Path(run_dir), report)
    return report


def layer_trace(run_dir: Path) -> dict | None:
    """`compress inspect --layers`'s result for this run, if it was traced."""
    path = Path(run_dir) / "inspect" / "layers.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


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
