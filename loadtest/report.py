"""An HTML load-test report: the summary table and latency histograms (matplotlib, inlined)."""
from __future__ import annotations

import base64
import html
import io
import json
from typing import Any


def _histogram_png(values: list[float], title: str, unit: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    if values:
        ax.hist(values, bins=min(50, max(5, len(values) // 10)), color="#3b7dd8", edgecolor="white")
    ax.set_title(title)
    ax.set_xlabel(unit)
    ax.set_ylabel("jobs")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def html_report(summary: dict[str, Any], submit_latency_s: list[float], e2e_latency_s: list[float]) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td><code>{html.escape(json.dumps(v))}</code></td></tr>"
                   for k, v in summary.items())
    images = [("Submission latency", [v * 1000 for v in submit_latency_s], "milliseconds")]
    if e2e_latency_s:
        images.append(("End-to-end latency (submit to done)", e2e_latency_s, "seconds"))
    figures = "".join(f'<h2>{html.escape(t)}</h2><img alt="{html.escape(t)}" '
                      f'src="data:image/png;base64,{_histogram_png(v, t, u)}">' for t, v, u in images)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>Model Manager load test</title>"
            "<style>body{font-family:sans-serif;margin:2em}th{text-align:left;padding-right:1em}"
            "td,th{border-bottom:1px solid #ddd;padding:4px}</style></head><body>"
            f"<h1>Model Manager load test</h1><table>{rows}</table>{figures}</body></html>")
