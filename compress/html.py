"""Self-contained HTML pages with matplotlib figures inlined as SVG: no CDN, no external file, opens
offline. Every function takes plain dicts and lists, so any report (a run, a sweep) can use them.

matplotlib is the optional extra `report` (`pip install 'compress[report]'`); `available()` tells
whether it is installed. Without it runs still write report.md and report.json."""
from __future__ import annotations

import html as _html
import io
import re

INSTALL_HINT = "pip install 'compress[report]' (matplotlib) to get report.html"
COLORS = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1150px;color:#222}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}.pass{color:#1a7f37;font-weight:600}
.fail{color:#cf222e;font-weight:600}.inconclusive{color:#9a6700;font-weight:600}
.figure{margin:10px 0}.row{display:flex;flex-wrap:wrap;gap:12px}.row .figure{flex:1 1 520px}
.figure svg{max-width:100%;height:auto}.muted{color:#666;font-size:13px}
.verdict{font-size:1.2em}code{background:#f4f4f4;padding:1px 4px}
"""


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def esc(value) -> str:
    return _html.escape("–" if value is None else str(value))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    matplotlib.rcParams["svg.fonttype"] = "none"       # text stays text: small files, searchable labels
    matplotlib.rcParams["svg.hashsalt"] = "compress"   # same figure, same bytes
    import matplotlib.pyplot as plt

    return plt


def svg(fig) -> str:
    """A matplotlib figure as an inline <svg> element (the figure is closed)."""
    plt = _pyplot()
    buf = io.StringIO()
    try:
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    finally:
        plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def figure(svg_text: str, caption: str | None = None) -> str:
    cap = f'<div class="muted">{esc(caption)}</div>' if caption else ""
    return f'<div class="figure">{svg_text}{cap}</div>'


def scatter(points: list[dict], *, x: str, y: str, xlabel: str, ylabel: str, title: str,
            log_x: bool = False) -> str:
    """One marker per point: {"label", x: value, y: value, "group": legend entry, "chosen": bool}.
    Points without both values are left out; chosen points are ringed."""
    plt = _pyplot()
    shown = [p for p in points if p.get(x) is not None and p.get(y) is not None]
    fig, ax = plt.subplots(figsize=(7.2, 4.4))
    groups = list(dict.fromkeys(p.get("group", "") for p in shown))
    markers = "osD^vP*X"
    for i, group in enumerate(groups):
        members = [p for p in shown if p.get("group", "") == group]
        ax.scatter([p[x] for p in members], [p[y] for p in members], s=46, color=COLORS[i % len(COLORS)],
                   marker=markers[i % len(markers)], label=group or None, zorder=3, alpha=.9)
        for k, p in enumerate(members):   # staggered labels: points on top of each other stay readable
            ax.annotate(p["label"], (p[x], p[y]), textcoords="offset points", xytext=(6, 4 + 9 * ((i + k) % 3)),
                        fontsize=8)
            if p.get("chosen"):
                ax.scatter([p[x]], [p[y]], s=190, facecolors="none", edgecolors="black", linewidths=1.3, zorder=4)
    xs = [p[x] for p in shown if p[x] > 0]
    if log_x and xs and max(xs) / min(xs) > 30:   # a log axis only where values span orders of magnitude
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=.3)
    if any(groups):
        ax.legend(fontsize=8, loc="best")
    if not shown:
        ax.text(.5, .5, "no data", ha="center", va="center", transform=ax.transAxes)
    return svg(fig)


def hbars(labels: list[str], series: dict[str, list[float | None]], *, title: str, xlabel: str,
          value_format: str = "{:.2f}") -> str:
    """Horizontal bars, one group per label, one bar per series (None: no bar, 'n/a' written)."""
    plt = _pyplot()
    n, k = len(labels), max(1, len(series))
    height = 0.8 / k
    fig, ax = plt.subplots(figsize=(7.8, 0.9 + 0.28 * n * k + 0.1 * n))
    for j, (name, values) in enumerate(series.items()):
        ys = [i + j * height for i in range(n)]
        widths = [0.0 if v is None else v for v in values]
        ax.barh(ys, widths, height=height * 0.92, color=COLORS[j % len(COLORS)], label=name)
        for yv, v in zip(ys, values):
            ax.text(0 if v is None else v, yv, " n/a" if v is None else " " + value_format.format(v), va="center",
                    fontsize=7)
    ax.set_yticks([i + (k - 1) * height / 2 for i in range(n)])
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="#555", linewidth=.8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=11)
    ax.grid(axis="x", alpha=.3)
    if k > 1 or any(series):
        ax.legend(fontsize=8, loc="lower right")
    return svg(fig)


def layer_profile(labels: list[str], values: list[float], *, title: str, ylabel: str, worst: int = 5) -> str:
    """One bar per layer in network order (e.g. SQNR in dB); the `worst` lowest are drawn in red."""
    plt = _pyplot()
    n = len(labels)
    fig, ax = plt.subplots(figsize=(min(14, 4 + 0.16 * n), 4.2))
    order = sorted(range(n), key=lambda i: values[i])[:worst]
    colors = [COLORS[3] if i in order else COLORS[0] for i in range(n)]
    ax.bar(range(n), values, color=colors)
    step = max(1, n // 60)
    ax.set_xticks(range(0, n, step))
    ax.set_xticklabels(labels[::step], rotation=90, fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.grid(axis="y", alpha=.3)
    return svg(fig)


def steps(labels: list[str], values: list[float | None], *, title: str, ylabel: str,
          hlines: dict[str, float] | None = None) -> str:
    """A line over successive steps (e.g. the metric after each layer put back to FP32), with reference lines."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 3.8))
    xs = list(range(len(labels)))
    ax.plot(xs, [float("nan") if v is None else v for v in values], marker="o", color=COLORS[0])
    for i, (name, value) in enumerate((hlines or {}).items()):
        if value is not None:
            ax.axhline(value, linestyle="--", color=COLORS[(i + 1) % len(COLORS)], linewidth=1, label=name)
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=.3)
    if hlines:
        ax.legend(fontsize=8)
    return svg(fig)


def table(columns: list[tuple[str, str]], rows: list[dict], *, left: set[str] = frozenset(),
          classes: dict[str, str] | None = None) -> str:
    """An HTML table: columns are (key, title); cells are escaped; `classes` maps a cell value to a CSS class."""
    head = "".join(f'<th class="{"l" if k in left else ""}">{esc(t)}</th>' for k, t in columns)
    body = []
    for row in rows:
        cells = []
        for key, _ in columns:
            value = row.get(key)
            css = ["l"] if key in left else []
            if classes and str(value) in classes:
                css.append(classes[str(value)])
            cells.append(f'<td class="{" ".join(css)}">{esc(value)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def row(*parts: str) -> str:
    """Figures side by side (wrapping on narrow windows)."""
    return f'<div class="row">{"".join(parts)}</div>'


def section(title: str, *parts: str) -> str:
    anchor = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return f'<section id="{anchor}"><h2>{esc(title)}</h2>{"".join(parts)}</section>'


def paragraph(text: str, muted: bool = False) -> str:
    return f'<p class="{"muted" if muted else ""}">{esc(text)}</p>'


def page(title: str, parts: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
            + "".join(parts) + "</body></html>\n")
