"""The experiment's outputs: `summary.json` (per strategy: pass rate with its Wilson 95% interval
and what it cost, in all, per task with bootstrap intervals and per solved task; McNemar's exact
test for each pair of strategies under `comparisons`: experiment/stats.py), `results.jsonl`
(one line per attempt), `report.html` (the tables and plots, matplotlib PNGs inlined) and
`frontier.png` (the cost-frontier plot alone, for a README to show)."""
from __future__ import annotations

import base64
import functools
import html
import io
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from experiment.frontier import COSTS, frontier_points, pareto
from experiment.stats import comparisons, mean_ci, per_solved_ci, wilson

MAX_BARS = 40                                  # more tasks: a histogram, not a bar per task
CI_COSTS = ("cpu_s", "wall_s", "model_s")      # per task, with a bootstrap 95% interval of the mean
# client_wall_s: how long the run spent on the strategy's tasks, as compare.py timed each one
SUMMED = ("wall_s", "client_wall_s", "model_s", "load_s", "queue_wait_s", "eval_s", "cpu_s", "tokens", "attempts")
TABLE = (("pass_rate", "pass rate", "{:.0%}"), ("pass_rate_ci95", "95% interval", "ci"), ("solved", "solved", "{}"),
         ("attempts", "attempts", "{}"),
         ("wall_s", "wall s", "{:.1f}"), ("model_s", "model s", "{:.1f}"), ("cpu_s", "CPU s", "{:.1f}"),
         ("peak_rss_bytes", "peak RSS MB", "mb"), ("tokens", "tokens", "{}"), ("energy_j", "energy J", "{}"),
         ("cpu_s_per_task", "CPU s per task (95%)", "mean_ci"),
         ("cpu_s_per_solved_task", "CPU s per solved task (95%)", "mean_ci"))


PER_TASK = ("task_id", "strategy", "solved", "attempts", "wall_s", "client_wall_s", "model_s", "load_s",
            "queue_wait_s", "eval_s", "cpu_s", "peak_rss_bytes", "tokens", "energy_j", "models")


def summarize(experiment: str, task_ids: list[str], results: list[dict[str, Any]]) -> dict[str, Any]:
    """`results`: the service's experiment_results documents, one per task and strategy."""
    strategies = {strategy: strategy_summary([r for r in results if r["strategy"] == strategy])
                  for strategy in dict.fromkeys(r["strategy"] for r in results)}
    return {"experiment": experiment, "tasks": task_ids, "strategies": strategies,
            "comparisons": comparisons(solved_by(results, strategies)),
            "per_task": [{key: r.get(key) for key in PER_TASK} for r in results]}


def solved_by(results: list[dict[str, Any]], strategies: Iterable[str]) -> dict[str, dict[str, bool]]:
    """Per strategy (in the order given), which tasks it solved."""
    return {name: {r["task_id"]: bool(r["solved"]) for r in results if r["strategy"] == name} for name in strategies}


def strategy_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One strategy's figures from its results (or summary.json's `per_task` rows, which lack only
    `by_model`): pass rate and interval, totals, per task with intervals, per solved task."""
    solved = sum(1 for r in rows if r["solved"])
    totals: dict[str, Any] = {key: round(sum(float(r.get(key) or 0) for r in rows), 4) for key in SUMMED}
    totals["tokens"], totals["attempts"] = int(totals["tokens"]), int(totals["attempts"])
    energies = [r["energy_j"] for r in rows if r.get("energy_j") is not None]
    totals["energy_j"] = round(sum(energies), 3) if energies else None
    totals["peak_rss_bytes"] = max((int(r.get("peak_rss_bytes") or 0) for r in rows), default=0)
    by_model: dict[str, dict[str, float]] = {}
    for r in rows:
        for part in r.get("by_model") or []:
            mine = by_model.setdefault(part["model"], {"jobs": 0, "model_s": 0.0, "queue_wait_s": 0.0, "tokens": 0})
            for key in mine:
                mine[key] = round(mine[key] + part.get(key, 0), 4)
    per_solved = {key: (round(value / solved, 4) if solved and value is not None else None)
                  for key, value in totals.items() if key != "peak_rss_bytes"}
    # memory is not spent per task: the peak over the tasks it solved, not a share of a sum
    per_solved["peak_rss_bytes"] = max((int(r.get("peak_rss_bytes") or 0) for r in rows if r["solved"]),
                                       default=None)
    return {"tasks": len(rows), "solved": solved,
            "pass_rate": round(solved / len(rows), 4) if rows else 0.0,
            "pass_rate_ci95": wilson(solved, len(rows)),
            "per_task_ci95": {key: mean_ci([float(r.get(key) or 0) for r in rows]) for key in CI_COSTS},
            "per_solved_task_ci95": {key: per_solved_ci([float(r.get(key) or 0) for r in rows],
                                                        [bool(r["solved"]) for r in rows])
                                     for key in CI_COSTS},
            "models": sorted({m for r in rows for m in r.get("models") or []}),
            **totals, "per_solved_task": per_solved, "by_model": by_model}


def write_outputs(out_dir: Path, summary: dict[str, Any], attempts: list[dict[str, Any]],
                  command: str) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"summary": out_dir / "summary.json", "results": out_dir / "results.jsonl",
             "report": out_dir / "report.html", "frontier": out_dir / "frontier.png"}
    # each written whole or not at all (a run stopped while writing leaves the file it had)
    write_whole(paths["summary"], (json.dumps({**summary, "command": command}, indent=2) + "\n").encode())
    write_whole(paths["results"], "".join(json.dumps(attempt) + "\n" for attempt in attempts).encode())
    plots = _plots(summary)
    write_whole(paths["report"], html_report(summary, command, plots).encode())
    write_whole(paths["frontier"], base64.b64decode(plots[0][1]))     # the first plot is the frontier
    return paths


def write_whole(path: Path, data: bytes) -> None:
    part = path.with_name(path.name + ".tmp")
    part.write_bytes(data)
    os.replace(part, path)


def markdown_table(summary: dict[str, Any]) -> str:
    header = "| strategy | models | " + " | ".join(label for _, label, _ in TABLE) + " |"
    lines = [header, "|" + "---|" * (len(TABLE) + 2)]
    for name, s in summary["strategies"].items():
        lines.append(f"| {name} | {', '.join(s['models'])} | " + " | ".join(_fmt(_cell(s, k), f) for k, _, f in TABLE) + " |")
    for strategy, by_k in (summary.get("by_k") or {}).items():
        lines += ["", f"| {strategy}: first k samples | pass rate | 95% interval | CPU s per task |", "|---|---|---|---|"]
        lines += [f"| k = {k} | {_fmt(row['pass_rate'], '{:.0%}')} | {_fmt(row['pass_rate_ci95'], 'ci')} | "
                  f"{_fmt(row['cpu_s'] / row['tasks'] if row.get('cpu_s') is not None and row['tasks'] else None, '{:.1f}')} |"
                  for k, row in by_k.items()]
    for strategy, votes in (summary.get("by_vote") or {}).items():
        lines += ["", f"| {strategy}: the majority answer of the first k samples (exact-answer tasks) | pass rate | "
                  "95% interval |", "|---|---|---|"]
        lines += [f"| k = {k} | {_fmt(row['pass_rate'], '{:.0%}')} | {_fmt(row['pass_rate_ci95'], 'ci')} |"
                  for k, row in votes.items()]
    if summary.get("pareto"):
        lines += ["", "Pareto frontier: " + "; ".join(f"{COSTS[c]}: {', '.join(names)}"
                                                      for c, names in summary["pareto"].items())]
    pairs = comparison_rows(summary)
    if pairs:
        lines += ["", "| " + " | ".join(COMPARISON_HEADER) + " |", "|" + "---|" * len(COMPARISON_HEADER)]
        lines += ["| " + " | ".join(row) + " |" for row in pairs]
    return "\n".join(lines)


def _cell(strategy: dict[str, Any], key: str) -> Any:
    """A table cell's value: a strategy's figure, or a cost per task or per solved task with its
    bootstrap interval, (mean, [low, high])."""
    if key == "cpu_s_per_task":
        tasks = strategy.get("tasks")
        return ((strategy["cpu_s"] / tasks, (strategy.get("per_task_ci95") or {}).get("cpu_s"))
                if tasks and strategy.get("cpu_s") is not None else None)
    if key == "cpu_s_per_solved_task":
        mean = (strategy.get("per_solved_task") or {}).get("cpu_s")
        return None if mean is None else (mean, (strategy.get("per_solved_task_ci95") or {}).get("cpu_s"))
    return strategy.get(key)


def _fmt(value: Any, fmt: str) -> str:
    if value is None:
        return "n/a"
    if fmt == "mean_ci":
        mean, ci = value
        if not ci:
            return f"{mean:.1f}"
        return f"{mean:.1f} ({ci[0]:.1f}–{'∞' if ci[1] is None else f'{ci[1]:.1f}'})"
    if fmt == "mb":
        return f"{value / 1e6:.0f}"
    if fmt == "ci":
        return f"{value[0]:.0%}–{value[1]:.0%}"
    return fmt.format(value)


def comparison_rows(summary: dict[str, Any]) -> list[list[str]]:
    """McNemar's test of each pair: both solved, only the first, only the second, p-value."""
    return [[c["first"], c["second"], str(c["both"]), str(c["only_first"]), str(c["only_second"]),
             f"{c['p_value']:.3g}"] for c in summary.get("comparisons") or []]


COMPARISON_HEADER = ("first", "second", "both solved", "only first", "only second", "p (McNemar, exact)")


def html_report(summary: dict[str, Any], command: str, plots: list[tuple[str, str]] | None = None) -> str:
    """The report page; `plots` (title, base64 PNG) as `_plots` draws them, drawn here if not given."""
    strategies = summary["strategies"]
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in TABLE)
    rows = "".join(f"<tr><th>{html.escape(name)}<br><small>{html.escape(', '.join(s['models']))}</small></th>"
                   + "".join(f"<td>{_fmt(_cell(s, k), f)}</td>" for k, _, f in TABLE) + "</tr>"
                   for name, s in strategies.items())
    per_solved = "".join(f"<tr><th>{html.escape(name)}</th>" + "".join(
        f"<td>{_fmt(s['per_solved_task'].get(k), '{:.2f}')}</td>" for k in ("wall_s", "model_s", "cpu_s", "tokens"))
        + "</tr>" for name, s in strategies.items())
    figures = "".join(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>"
                      for title, png in (_plots(summary) if plots is None else plots))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>Experiment "
            f"{html.escape(summary['experiment'])}</title><style>body{{font-family:sans-serif;margin:2em}}"
            "td,th{border-bottom:1px solid #ddd;padding:4px 8px;text-align:right}th:first-child{text-align:left}"
            "</style></head><body>"
            f"<h1>One large model against branched small models: {html.escape(summary['experiment'])}</h1>"
            f"<p>{len(summary['tasks'])} tasks. Command: <code>{html.escape(command)}</code></p>"
            f"<table><tr><th>strategy</th>{head}</tr>{rows}</table>"
            + _by_k_html(summary) + _pareto_html(summary)
            + "<h2>Per solved task</h2><table><tr><th>strategy</th><th>wall s</th><th>model s</th><th>CPU s</th>"
            f"<th>tokens</th></tr>{per_solved}</table>"
            "<h2>Paired on the same tasks</h2><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in COMPARISON_HEADER)
            + "</tr>" + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                                for row in comparison_rows(summary)) + f"</table>{figures}</body></html>")


def _by_k_html(summary: dict[str, Any]) -> str:
    out = ""
    for strategy, by_k in (summary.get("by_k") or {}).items():
        rows = "".join(f"<tr><th>k = {k}</th><td>{_fmt(r['pass_rate'], '{:.0%}')}</td><td>{_fmt(r['pass_rate_ci95'], 'ci')}"
                       f"</td><td>{_fmt(r.get('cpu_s'), '{:.1f}')}</td><td>{_fmt(r.get('peak_rss_bytes'), 'mb')}</td></tr>"
                       for k, r in by_k.items())
        out += (f"<h2>{html.escape(strategy)} with its first k samples</h2><table><tr><th>samples</th>"
                f"<th>pass rate</th><th>95% interval</th><th>CPU s (all tasks)</th><th>peak RSS MB</th></tr>{rows}"
                "</table>")
    return out


def _pareto_html(summary: dict[str, Any]) -> str:
    if not summary.get("pareto"):
        return ""
    items = "".join(f"<li>{html.escape(COSTS[c])}: {html.escape(', '.join(names))}</li>"
                    for c, names in summary["pareto"].items())
    return f"<h2>On the Pareto frontier</h2><ul>{items}</ul>"


def frontier_png(summary: dict[str, Any]) -> bytes:
    """The cost-frontier plot alone (what frontier.png holds), as PNG bytes."""
    return base64.b64decode(_frontier(summary, _pyplot()))


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _frontier(summary: dict[str, Any], plt) -> str:
    """Pass rate against each measured cost, one point per strategy and per k, the frontier drawn."""
    points = frontier_points(summary)
    fig, axes = plt.subplots(1, len(points), figsize=(3.8 * max(1, len(points)), 3.6), dpi=100, squeeze=False)
    for ax, (cost, named) in zip(axes[0], points.items(), strict=False):
        scale = 1e6 if cost == "peak_rss_bytes" else 1.0
        for name, (x, rate) in named.items():
            if "@" in name:
                continue
            dot = ax.scatter([x / scale], [100 * rate], s=60)
            ax.annotate(name, (x / scale, 100 * rate), textcoords="offset points", xytext=(5, 3), fontsize=7)
            ks = sorted((int(n.rsplit("@", 1)[1]), v) for n, v in named.items() if n.startswith(name + "@"))
            if ks:              # a sampling strategy's smaller k: a dotted line to it, k marked
                xs, ys = [v[0] / scale for _, v in ks] + [x / scale], [100 * v[1] for _, v in ks] + [100 * rate]
                ax.plot(xs, ys, ":", marker=".", color=dot.get_facecolor()[0], linewidth=1)
                for k, (kx, kr) in ks:
                    ax.annotate(f"k={k}", (kx / scale, 100 * kr), textcoords="offset points", xytext=(0, -9),
                                fontsize=6, ha="center")
        front = pareto(named)
        ax.step([named[n][0] / scale for n in front], [100 * named[n][1] for n in front], where="post",
                color="black", linewidth=1, label="Pareto frontier")
        ax.set_xlabel(COSTS[cost] + (" (MB)" if cost == "peak_rss_bytes" else ""))
        ax.set_ylabel("pass rate (%)")
        ax.set_ylim(-5, 105)
        ax.set_xlim(0, 1.25 * max(x / scale for x, _ in named.values()) or 1)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("The cost frontier: pass rate against cost (sampling strategies at every k)")
    return _png(fig, plt)


def _plots(summary: dict[str, Any]) -> list[tuple[str, str]]:
    plt = _pyplot()
    strategies = summary["strategies"]
    per_task = summary["per_task"]
    out = [("The cost frontier", _frontier(summary, plt))]

    tasks = list(dict.fromkeys(r["task_id"] for r in per_task))
    if len(tasks) > MAX_BARS:
        out.append(("Per-task time", _time_histogram(strategies, per_task, plt)))
        out.append(("Where the time went", _where_time_went(strategies, plt)))
        return out
    fig, ax = plt.subplots(figsize=(max(7, 0.45 * len(tasks) + 2), 3.6), dpi=100)
    width = 0.8 / max(1, len(strategies))
    for i, name in enumerate(strategies):
        by_task = {r["task_id"]: r for r in per_task if r["strategy"] == name}
        xs = [t + i * width for t in range(len(tasks))]
        values = [(by_task.get(t) or {}).get("wall_s") or 0 for t in tasks]
        bars = ax.bar(xs, values, width, label=name)
        for bar, t in zip(bars, tasks, strict=False):
            if not (by_task.get(t) or {}).get("solved"):
                bar.set_hatch("//")
    ax.set_xticks([t + width * (len(strategies) - 1) / 2 for t in range(len(tasks))])
    ax.set_xticklabels([t.split("/")[-1] for t in tasks], fontsize=8)
    ax.set_ylabel("wall time (s)")
    ax.set_title("Per-task wall time (hatched: not solved)")
    ax.legend()
    out.append(("Per-task time", _png(fig, plt)))

    out.append(("Where the time went", _where_time_went(strategies, plt)))
    return out


def _time_histogram(strategies: dict[str, Any], per_task: list[dict[str, Any]], plt) -> str:
    fig, ax = plt.subplots(figsize=(8, 3.4), dpi=100)
    for name in strategies:
        values = [r.get("wall_s") or 0 for r in per_task if r["strategy"] == name]
        ax.hist(values, bins=30, histtype="step", linewidth=1.5, label=name)
    ax.set_xlabel("wall time per task (s)")
    ax.set_ylabel("tasks")
    ax.set_title("Per-task wall time")
    ax.legend(fontsize=7)
    return _png(fig, plt)


def _where_time_went(strategies: dict[str, Any], plt) -> str:
    fig, ax = plt.subplots(figsize=(8, 3.4), dpi=100)
    names = list(strategies)
    left = [0.0] * len(names)
    models = list(dict.fromkeys(m for s in strategies.values() for m in s.get("by_model", {})))
    segments: list[tuple[str, Callable[[dict[str, Any]], float]]] = [
        (f"{m}: model work", functools.partial(_model_seconds, m)) for m in models]
    segments += [("loading", lambda s: s.get("load_s") or 0), ("waiting", lambda s: s.get("queue_wait_s") or 0),
                 ("evaluating (sandbox)", lambda s: s.get("eval_s") or 0)]
    for label, value_of in segments:
        values = [value_of(strategies[n]) for n in names]
        if any(values):
            ax.barh(names, values, left=left, label=label)
            left = [a + b for a, b in zip(left, values, strict=False)]
    ax.set_xlabel("seconds, summed over tasks (jobs of a branched round overlap)")
    ax.set_title("Where each strategy's time went")
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig, plt)


def _model_seconds(model: str, strategy: dict[str, Any]) -> float:
    """Seconds of `model`'s work under one strategy."""
    return (strategy.get("by_model", {}).get(model) or {}).get("model_s", 0)


def _png(fig, plt) -> str:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()
