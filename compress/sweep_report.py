"""The sweep's report: every point, the Pareto front of metric vs latency vs size per target, and the
recommended point (gates passed, best latency) as a ready-to-run recipe, recommended.yaml."""
from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import yaml

from .fsutil import atomic_write_json, atomic_write_text
from .recipe import map_recipe_files

SWEEP_SCHEMA_VERSION = 1


def dominates(a: dict, b: dict) -> bool:
    """`a` is no worse than `b` in metric, latency and size, and better in one."""
    sign = 1 if a.get("higher_is_better", True) else -1
    no_worse = (sign * a["value"] >= sign * b["value"] and a["p50_ms"] <= b["p50_ms"]
                and (a["size_mb"] or 0) <= (b["size_mb"] or 0))
    better = sign * a["value"] > sign * b["value"] or a["p50_ms"] < b["p50_ms"] or (a["size_mb"] or 0) < (b["size_mb"] or 0)
    return no_worse and better


def pareto(records: list[dict]) -> list[dict]:
    return [r for r in records if not any(dominates(o, r) for o in records if o is not r)]


def recommend(records: list[dict]) -> dict | None:
    """The point that passes its gates with the lowest p50 latency (ties: the better metric)."""
    passed = [r for r in records if r.get("status") == "done" and r.get("passed")]
    if not passed:
        return None
    return min(passed, key=lambda r: (r["p50_ms"], -r["value"] if r.get("higher_is_better", True) else r["value"]))


def rebase(recipe: dict, base_dir: Path, new_dir: Path) -> dict:
    """The recipe with its relative file paths rewritten to start from `new_dir` instead of `base_dir`."""
    def move(_field: str, value: str) -> str:
        path = Path(value).expanduser()
        if path.is_absolute() or not (base_dir / path).exists():
            return value
        return os.path.relpath((base_dir / path).resolve(), new_dir.resolve())

    return map_recipe_files(recipe, move)


def write_report(sweep, points, folder, *, wall_s: float, ran: int) -> dict:
    by_key = {p.key: p for p in points}
    finished = {**{r["key"]: r for r in _records(folder)}}
    records = [finished.get(p.key, {"key": p.key, "index": p.index, "overrides": p.overrides, "label": p.label,
                                    "target": p.target, "status": "not run"}) for p in points]
    done = [r for r in records if r["status"] == "done"]
    targets = sorted({r.get("target") or "-" for r in done})
    fronts = {t: sorted(r["key"] for r in pareto([r for r in done if (r.get("target") or "-") == t])) for t in targets}
    best = recommend(done)
    report = {
        "schema_version": SWEEP_SCHEMA_VERSION, "name": sweep.name, "sweep_file": str(sweep.source.resolve()),
        "written": datetime.now().isoformat(timespec="seconds"), "axes": [a.paths for a in sweep.axes],
        "points": records, "pareto": fronts, "recommended": best["key"] if best else None,
        "counts": {s: sum(r["status"] == s for r in records) for s in ("done", "failed", "not run")},
        "wall_s": wall_s, "ran_now": ran, "runs": str(folder.runs),
    }
    if best is not None:
        point = by_key[best["key"]]
        recipe = rebase(point.recipe, sweep.base_dir, folder.root)
        recipe["name"] = f"{sweep.name}-recommended"[:80]
        header = (f"# Recommended by sweep {sweep.name}: point {point.index} ({point.label}).\n"
                  f"# {best['metric']} {best['value']} ({best['delta']:+.2f} pts), p50 {best['p50_ms']:.3f} ms, "
                  f"{best['size_mb']} MB on {best.get('target') or best['runtime']}; gates passed.\n"
                  f"# Run it alone: compress run {folder.root / 'recommended.yaml'}\n")
        body = yaml.safe_dump(recipe, sort_keys=False, default_flow_style=None)
        atomic_write_text(folder.root / "recommended.yaml", header + body)
        report["recommended_yaml"] = str(folder.root / "recommended.yaml")
    else:
        (folder.root / "recommended.yaml").unlink(missing_ok=True)
    atomic_write_json(folder.root / "sweep.json", report)
    atomic_write_text(folder.root / "sweep.md", markdown(report))
    atomic_write_text(folder.root / "sweep.html", render_html(report))
    return report


def _records(folder) -> list[dict]:
    import json

    out = []
    for file in folder.points_dir.glob("*.json"):
        try:
            out.append(json.loads(file.read_text()))
        except (OSError, ValueError):
            continue
    return out


def _row(r: dict, report: dict) -> list[str]:
    on_front = r["key"] in report["pareto"].get(r.get("target") or "-", [])
    mark = ("★ " if r["key"] == report["recommended"] else "") + ("pareto" if on_front else "")
    if r["status"] != "done":
        return [str(r["index"]), r["label"], r.get("target") or "-", r["status"], "", "", "", "", "",
                (r.get("error") or "")[:160]]
    return [str(r["index"]), r["label"], r.get("target") or "-", "passed" if r["passed"] else "gate failed",
            f"{r['value']:.2f}", f"{r['delta']:+.2f}" if r.get("delta") is not None else "–", f"{r['p50_ms']:.3f}",
            f"{r['size_mb']:.3f}" if r.get("size_mb") is not None else "–", mark, ", ".join(r.get("cached", [])) or "–"]


HEADERS = ["#", "point", "target", "status", "metric", "Δ pts", "p50 ms", "MB", "front", "cached stages / error"]


def markdown(report: dict) -> str:
    counts = report["counts"]
    lines = [f"# Sweep {report['name']}", "",
             f"{len(report['points'])} points: {counts['done']} done, {counts['failed']} failed, "
             f"{counts['not run']} not run; {report['wall_s']} s for the {report['ran_now']} run now.", ""]
    rec = next((r for r in report["points"] if r["key"] == report["recommended"]), None)
    if rec:
        lines += [f"**Recommended**: point {rec['index']} ({rec['label']}) on {rec.get('target') or rec['runtime']}: "
                  f"{rec['metric']} {rec['value']:.2f}, p50 {rec['p50_ms']:.3f} ms, {rec['size_mb']} MB — "
                  f"`compress run {report.get('recommended_yaml')}`", ""]
    else:
        lines += ["**No point passed its gates**; nothing is recommended.", ""]
    lines += ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in _row(r, report)) + " |" for r in report["points"]]
    lines += ["", "Pareto front per target: no other point of that target has a better-or-equal metric, latency "
              "and size with one of them strictly better. ★: the recommended point (gates passed, lowest p50).", ""]
    return "\n".join(lines)


def _figures(report: dict) -> list[str]:
    """Per target: metric vs p50 latency and vs size, with the run report's plotting (compress.html)."""
    from . import html as h

    done = [r for r in report["points"] if r["status"] == "done"]
    parts = []
    for target in sorted({r.get("target") or "-" for r in done}):
        rows = [r for r in done if (r.get("target") or "-") == target]
        front = set(report["pareto"].get(target, []))
        points = [{"label": str(r["index"]), "p50_ms": r["p50_ms"], "size_mb": r["size_mb"], "value": r["value"],
                   "group": "gate failed" if not r["passed"] else ("Pareto front" if r["key"] in front else "passed"),
                   "chosen": r["key"] == report["recommended"]} for r in rows]
        metric = rows[0]["metric"]
        parts.append(h.section(f"Target {target}", h.row(
            h.figure(h.scatter(points, x="p50_ms", y="value", xlabel="p50 latency (ms)", ylabel=metric,
                               title=f"{metric} vs latency", log_x=True)),
            h.figure(h.scatter(points, x="size_mb", y="value", xlabel="size (MB)", ylabel=metric,
                               title=f"{metric} vs size"))),
            h.paragraph("Labels are point numbers; the ringed point is the recommendation.", muted=True)))
    return parts


def render_html(report: dict) -> str:
    """Self-contained (figures inlined as SVG), made with the run report's plotting helpers."""
    from . import html as h

    md_intro = markdown(report).split("| #")[0]
    intro = [h.paragraph(line.replace("**", "")) for line in md_intro.splitlines()[1:] if line]
    figures = _figures(report) if h.available() else [
        h.paragraph("matplotlib is not installed: no plots (pip install 'compress[report]')", muted=True)]
    rows = [dict(zip(HEADERS, _row(r, report))) for r in report["points"]]
    table = h.section("Points", h.table([(k, k) for k in HEADERS], rows, left={"point", "cached stages / error"}))
    return h.page(f"Sweep {report['name']}", [f"<h1>Sweep {h.esc(report['name'])}</h1>", *intro, *figures, table])
