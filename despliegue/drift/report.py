"""The drift report as one self-contained HTML page: tables and inline SVG charts, no script,
no stylesheet or font from elsewhere, so it opens offline and can be mailed or archived.

    python -m despliegue.drift report FAMILY -o report.html [--url URL] [--from-json FILE]

It reads `GET /drift/{FAMILY}` from a running service (token from $DESPLIEGUE_TOKEN when auth
is on) or a saved copy of that answer, and draws per model: the verdict per feature, the
baseline and live histograms of every feature on the baseline's bins, and the PSI of each
closed window over time.
"""

from __future__ import annotations

import argparse
import html
import itertools
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

TOKEN_ENV = "DESPLIEGUE_TOKEN"
BASELINE_COLOUR = "#8c9fb5"
LIVE_COLOUR = "#d9822b"
DRIFT_COLOUR = "#c23030"
WIDTH, HEIGHT, PAD = 460, 170, 30

AXIS = (
    f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" stroke="#333"/>'
)
STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#1c2127;max-width:1100px}
h1{margin-bottom:.2rem} .meta{color:#5f6b7c} table{border-collapse:collapse;margin:1rem 0}
td,th{border:1px solid #d3d8de;padding:.25rem .6rem;text-align:right} th{background:#f6f7f9}
td:first-child,th:first-child{text-align:left} .drift{color:#c23030;font-weight:600}
.ok{color:#238551} .na{color:#5f6b7c} .charts{display:flex;flex-wrap:wrap;gap:1rem}
figure{margin:0;border:1px solid #e5e8eb;padding:.5rem} figcaption{font-size:.85rem}
.legend span{display:inline-block;width:.8rem;height:.8rem;margin:0 .3rem 0 1rem}
"""


def verdict_class(verdict: str) -> str:
    return {"drift": "drift", "no drift": "ok"}.get(verdict, "na")


def compact(value: float) -> str:
    """A bin edge short enough to sit under its bar: 4400 -> 4.4k, 0.5123 -> 0.512."""
    if abs(value) >= 1000:
        return f"{value / 1000:.3g}k"
    return f"{value:.3g}"


def bin_labels(feature: Mapping[str, Any]) -> list[str]:
    if feature.get("test") == "chi-square":
        return [str(c) for c in feature["classes"]]
    edges = [compact(e) for e in feature["edges"]]
    if not edges:
        return ["all"]
    return [f"≤{edges[0]}", *[f"{a}–{b}" for a, b in itertools.pairwise(edges)], f">{edges[-1]}"]


def histogram_svg(feature: Mapping[str, Any]) -> str:
    """Baseline and live shares per bin, side by side."""
    baseline = [float(v) for v in feature["baseline_counts"]]
    live = [float(v) for v in feature["live_counts"]]
    shares = [
        [v / total if total else 0.0 for v in counts]
        for counts, total in ((baseline, sum(baseline)), (live, sum(live)))
    ]
    top = max([*shares[0], *shares[1], 1e-9])
    bins = len(baseline)
    slot = (WIDTH - 2 * PAD) / max(bins, 1)
    parts = []
    for i, label in enumerate(bin_labels(feature)):
        x = PAD + i * slot
        for k, colour in ((0, BASELINE_COLOUR), (1, LIVE_COLOUR)):
            h = (HEIGHT - 2 * PAD) * shares[k][i] / top
            parts.append(
                f'<rect x="{x + k * slot / 2 + 1:.1f}" y="{HEIGHT - PAD - h:.1f}" '
                f'width="{slot / 2 - 2:.1f}" height="{h:.1f}" fill="{colour}">'
                f"<title>{html.escape(label)}: {shares[k][i]:.1%}</title></rect>"
            )
        if bins <= 12:
            parts.append(
                f'<text x="{x + slot / 2:.1f}" y="{HEIGHT - PAD + 12}" font-size="8" '
                f'text-anchor="middle">{html.escape(label)}</text>'
            )
    axis = AXIS
    scale = f'<text x="2" y="{PAD}" font-size="9">{top:.0%}</text>'
    return _svg(axis + scale + "".join(parts))


def psi_over_time_svg(history: Sequence[Mapping[str, Any]], threshold: float) -> str:
    """PSI of every feature per closed window, with the threshold as a dashed line."""
    series: dict[str, list[float]] = {}
    for window in history:
        for name, value in window["psi"].items():
            series.setdefault(name, []).append(float(value) if value is not None else 0.0)
    top = max([threshold * 1.5, *(v for values in series.values() for v in values)])
    steps = max(len(history) - 1, 1)

    def point(i: int, value: float) -> tuple[float, float]:
        return (
            PAD + (WIDTH - 2 * PAD) * i / steps,
            HEIGHT - PAD - (HEIGHT - 2 * PAD) * value / top,
        )

    parts = []
    for name, values in series.items():
        drifted = any(v >= threshold for v in values)
        colour = DRIFT_COLOUR if drifted else "#5f6b7c"
        xy = [point(i, v) for i, v in enumerate(values)]
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5">'
            f"<title>{html.escape(name)}</title></polyline>"
        )
        parts.extend(f'<circle r="2" fill="{colour}" cx="{x:.1f}" cy="{y:.1f}"/>' for x, y in xy)
        if drifted:  # name the lines that crossed; the others stay grey and unnamed
            x, y = xy[-1]
            parts.append(
                f'<text x="{x:.1f}" y="{y - 4:.1f}" font-size="8" text-anchor="end">'
                f"{html.escape(name)}</text>"
            )
    y = HEIGHT - PAD - (HEIGHT - 2 * PAD) * threshold / top
    parts.append(
        f'<line x1="{PAD}" x2="{WIDTH - PAD}" y1="{y:.1f}" y2="{y:.1f}" stroke="{DRIFT_COLOUR}" '
        f'stroke-dasharray="4 3"/><text x="{WIDTH - PAD}" y="{y - 3:.1f}" font-size="9" '
        f'text-anchor="end">PSI threshold {threshold}</text>'
    )
    axis = AXIS
    label = (
        f'<text x="{PAD}" y="{HEIGHT - 8}" font-size="9">window 1</text>'
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 8}" font-size="9" text-anchor="end">'
        f"window {len(history)}</text>"
    )
    return _svg(axis + label + "".join(parts))


def _svg(body: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img">{body}</svg>'
    )


def _number(value: Any) -> str:
    return "–" if value is None else f"{value:.4g}"


def feature_rows(features: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for f in features:
        rows.append(
            f"<tr><td>{html.escape(f['feature'])}</td><td>{html.escape(f['test'])}</td>"
            f"<td>{_number(f['statistic'])}</td><td>{_number(f['p_value'])}</td>"
            f"<td>{_number(f['psi'])}</td><td>{f['items']}</td>"
            f'<td class="{verdict_class(f["verdict"])}">{html.escape(f["verdict"])}</td></tr>'
        )
    head = (
        "<tr><th>feature</th><th>test</th><th>statistic</th><th>p-value</th><th>PSI</th>"
        "<th>items</th><th>verdict</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def model_section(model: Mapping[str, Any], psi_threshold: float) -> str:
    tag = html.escape(model["model_tag"])
    baseline = model["baseline"]
    parts = [
        f'<h2>{tag} — <span class="{verdict_class(model["verdict"])}">'
        f"{html.escape(model['verdict'])}</span></h2>",
        f'<p class="meta">Baseline: {html.escape(str(baseline["source"]))}, '
        f"{baseline['count']} items.</p>",
    ]
    if model.get("note"):
        parts.append(f"<p>{html.escape(model['note'])}</p>")
    window = model.get("window")
    if window:
        parts.append(
            f'<p class="meta">Window {window["number"]} ({window["state"]}): {window["items"]} '
            f"items, opened {html.escape(window['opened_at'])}"
            + (f", closed {html.escape(window['closed_at'])}" if window.get("closed_at") else "")
            + "</p>"
        )
    for title, features in (
        ("Inputs", model.get("features", [])),
        ("Predictions", model.get("predictions", [])),
    ):
        if not features:
            continue
        parts.append(f"<h3>{title}</h3>{feature_rows(features)}")
        figures = "".join(
            f"<figure>{histogram_svg(f)}<figcaption>{html.escape(f['feature'])}: baseline vs "
            f'live (<span class="{verdict_class(f["verdict"])}">{html.escape(f["verdict"])}'
            "</span>)</figcaption></figure>"
            for f in features
        )
        parts.append(f'<div class="charts">{figures}</div>')
    if model.get("history"):
        parts.append(
            "<h3>PSI over time</h3><figure>"
            f"{psi_over_time_svg(model['history'], psi_threshold)}<figcaption>PSI per closed "
            "window; features that crossed the threshold in red</figcaption></figure>"
        )
    return "<section>" + "".join(parts) + "</section>"


def render(report: Mapping[str, Any]) -> str:
    threshold = float(report["thresholds"]["psi"])
    family = html.escape(report["family"])
    legend = (
        f'<p class="legend">Histograms:<span style="background:{BASELINE_COLOUR}"></span>'
        f'baseline<span style="background:{LIVE_COLOUR}"></span>live window</p>'
    )
    sections = "".join(model_section(m, threshold) for m in report["models"])
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Drift report: {family}</title><style>{STYLE}</style></head><body>"
        f'<h1>Drift report: {family} — <span class="{verdict_class(report["verdict"])}">'
        f"{html.escape(report['verdict'])}</span></h1>"
        f'<p class="meta">Checked {html.escape(report["checked_at"])}. Windows of '
        f"{report['window_items']} items. A feature drifts when PSI ≥ "
        f"{report['thresholds']['psi']} and p-value &lt; {report['thresholds']['p_value']}.</p>"
        f"{legend}{sections}</body></html>"
    )


def fetch(url: str, family: str) -> dict[str, Any]:
    token = os.environ.get(TOKEN_ENV)
    headers = {"authorization": f"Bearer {token}"} if token else {}
    answer = httpx.get(f"{url.rstrip('/')}/drift/{family}", headers=headers, timeout=60)
    if answer.status_code != 200:
        raise SystemExit(f"GET /drift/{family} answered {answer.status_code}: {answer.text[:300]}")
    return answer.json()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m despliegue.drift", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser("report", help="write the HTML drift report of a family")
    report.add_argument("family")
    report.add_argument("-o", "--output", type=Path, required=True)
    report.add_argument("--url", default="http://127.0.0.1:3000", help="the running service")
    report.add_argument("--from-json", type=Path, help="a saved GET /drift/FAMILY answer")
    args = parser.parse_args(argv)
    if args.from_json:
        data = json.loads(args.from_json.read_text(encoding="utf-8"))
    else:
        data = fetch(args.url, args.family)
    args.output.write_text(render(data), encoding="utf-8")
    print(f"{args.output}: drift report of {data['family']} ({data['verdict']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
