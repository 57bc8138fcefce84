"""`python -m bench.report [--results DIR] [--out FILE] [--plots DIR]`: bench/REPORT.md with plots.

Reads the latest result of each bench in `bench/results/` (core, ingest, window, dispatcher,
window-scale, chaos; the JSON `bench.results.write_results` and `bench.chaos` write) and renders a
short Markdown report with PNG plots (matplotlib's Agg backend: files, no display): throughput of
each stage beside its same-run reference, latency percentiles, cost against the number of users,
and the latest fault test. Every figure with a target says met or NOT met; the missed ones are
also listed first. Nothing is measured here: run the benches first (`make bench-quick`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import orjson
from matplotlib.patches import Patch

from bench.results import RESULTS, show

BENCH_DIR = Path(__file__).resolve().parent
BENCHES = ("core", "ingest", "window", "dispatcher", "window-broadcast", "broadcast")
"""The benches of `make bench`, in the order of the request's path."""
TITLES = {
    "core": "Pure core (`python -m bench`)",
    "ingest": "Ingest (`python -m bench.ingest`)",
    "window": "Window worker (`python -m bench.window`)",
    "dispatcher": "Dispatcher (`python -m bench.dispatcher`)",
    "window-broadcast": "Broadcast fan-out in the window (`python -m bench.window --broadcast`)",
    "broadcast": "Broadcast delivery (`python -m bench.dispatcher --part broadcast`)",
    "window-scale": "Cost against users (`python -m bench.window --scale`)",
}
MET, MISSED, NO_TARGET, REFERENCE = "#2e7d32", "#c62828", "#1565c0", "#b0b0b0"


@dataclass(frozen=True)
class Result:
    bench: str
    path: Path
    document: dict[str, Any]

    @property
    def figures(self) -> list[dict[str, Any]]:
        figures = self.document.get("figures", [])
        return figures if isinstance(figures, list) else []


def latest(results: Path, bench: str) -> Result | None:
    """The newest `<bench>-<UTC time>.json` (names sort by time; `window-scale-` is not
    `window-`'s)."""
    paths = sorted(results.glob(f"{bench}-2*.json"))
    if not paths:
        return None
    return Result(bench, paths[-1], orjson.loads(paths[-1].read_bytes()))


def colour(met: bool | None) -> str:
    return NO_TARGET if met is None else (MET if met else MISSED)


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def figure_rows(result: Result) -> list[str]:
    rows = [
        "| figure | value | reference (same run) | ratio | target | |",
        "|---|---:|---|---:|---|---|",
    ]
    for f in result.figures:
        ratio = "-" if f.get("ratio") is None else f"{f['ratio']:.2f}x"
        met = f.get("met")
        mark = "" if met is None else ("met" if met else "**NOT met**")
        rows.append(
            f"| {cell(f['name'])} | {show(f['value'], f['unit'])} | {cell(f['reference'])} "
            f"| {ratio} | {cell(f['target'])} | {mark} |"
        )
    return rows


def provenance(result: Result) -> str:
    d = result.document
    memory = d.get("memory_bytes")
    versions = ", ".join(f"{k} {v}" for k, v in sorted(d.get("versions", {}).items()))
    return (
        f"`{result.path.name}`: {'quick' if d.get('quick') else 'full'} run started "
        f"{d.get('started', '?')} (commit `{d.get('commit', '?')}` when written), "
        f"{d.get('cpus', '?')} CPUs "
        f"({d.get('cpu_model', '?')})"
        + (f", {memory / 2**30:.0f} GiB RAM" if isinstance(memory, int) else "")
        + f", Python {d.get('python', '?')}"
        + (f", {versions}" if versions else "")
        + "."
    )


# ---- plots -------------------------------------------------------------------------------------


def paired_bars(
    rows: Sequence[tuple[str, dict[str, Any]]], title: str, xlabel: str, path: Path, log: bool
) -> None:
    """One horizontal pair per figure: the value (green met, red missed, blue no target) above
    its same-run reference (grey), each labelled with its number."""
    height = 0.38
    fig, ax = plt.subplots(figsize=(11, 0.75 * len(rows) + 1.6))
    labels = []
    for i, (label, f) in enumerate(rows):
        y = len(rows) - 1 - i
        value, ref = f["value"], f.get("reference_value")
        ax.barh(y + height / 2, value, height, color=colour(f.get("met")))
        text = show(value, f["unit"])
        if f.get("met") is not None:
            text += "  met" if f["met"] else "  NOT met"
        ax.text(value, y + height / 2, " " + text, va="center", fontsize=8)
        if ref:
            ax.barh(y - height / 2, ref, height, color=REFERENCE)
            ax.text(ref, y - height / 2, " " + show(ref, f["unit"]), va="center", fontsize=8)
        labels.append((y, label))
    ax.set_yticks([y for y, _ in labels], [label for _, label in labels], fontsize=8)
    if log:
        ax.set_xscale("log")
    ax.set_xlim(right=ax.get_xlim()[1] * (4 if log else 1.35))
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    handles = [Patch(color=c) for c in (MET, MISSED, NO_TARGET, REFERENCE)]
    ax.legend(
        handles,
        ["target met", "target NOT met", "no target", "same-run reference"],
        fontsize=8,
        loc="lower right",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def short(bench: str, name: str) -> str:
    return f"{bench}: {name}" if not name.startswith(bench) else name


def throughput_plot(results: Sequence[Result], path: Path) -> bool:
    rows = [
        (short(r.bench, f["name"]), f)
        for r in results
        for f in r.figures
        if f["unit"].endswith("/s") and f.get("reference_value")
    ]
    if not rows:
        return False
    paired_bars(
        rows,
        "Throughput of each stage (coloured) beside its bare reference in the same run (grey)",
        "per second (log scale)",
        path,
        log=True,
    )
    return True


def latency_plot(results: Sequence[Result], path: Path) -> bool:
    rows = [
        (short(r.bench, f["name"]), f)
        for r in results
        for f in r.figures
        if f["unit"] == "ms" and f.get("reference_value")
    ]
    if not rows:
        return False
    paired_bars(
        rows,
        "Latency percentiles (coloured) beside the same path's bare reference (grey)",
        "milliseconds",
        path,
        log=False,
    )
    return True


def scale_runs(results: Path) -> tuple[list[dict[str, Any]], list[Result]]:
    """The latest point for each number of users over every `window-scale-*.json` (a run at one
    size, say 5 M, adds to the runs before it), and the files shown: those points' and the
    newest, oldest first."""
    runs = [
        Result("window-scale", path, orjson.loads(path.read_bytes()))
        for path in sorted(results.glob("window-scale-2*.json"))
    ]
    best: dict[int, tuple[dict[str, Any], Result]] = {}
    for run in runs:
        for point in run.document.get("scale") or []:
            best[point["users"]] = (point, run)
    points = [best[users][0] for users in sorted(best)]
    sources = {best[users][1].path for users in best}
    shown = [r for r in runs if r.path in sources or r is runs[-1]]
    return points, shown


def scale_plot(points: Sequence[dict[str, Any]], path: Path) -> bool:
    if not points:
        return False
    users = [p["users"] for p in points]
    panels: list[tuple[str, list[tuple[str, list[float]]]]] = [
        (
            "fold rate (rebuild), events/s",
            [
                ("fold (rebuild)", [p["fold_events_per_s"] for p in points]),
                ("read only (reference)", [p["read_events_per_s"] for p in points]),
            ],
        ),
        (
            "restore time, s",
            [
                ("after kill -9 → served", [p["restore_after_kill_s"] for p in points]),
                ("first start → served", [p["restore_first_start_s"] for p in points]),
            ],
        ),
        (
            "worker RSS, MiB",
            [
                ("restored worker", [p["rss_bytes"] / 2**20 for p in points]),
                ("empty worker", [p["empty_rss_bytes"] / 2**20 for p in points]),
            ],
        ),
        (
            "bytes per user",
            [
                ("in the worker's memory", [p["memory_per_user_bytes"] for p in points]),
                ("stored value (changelog)", [p["stored_value_mean_bytes"] for p in points]),
            ],
        ),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for ax, (title, lines) in zip(axes.flat, panels, strict=True):
        for (label, values), style in zip(lines, ("o-", "s--"), strict=True):
            ax.plot(users, values, style, label=label)
            for x, v in zip(users, values, strict=True):
                ax.annotate(f"{v:,.0f}" if v >= 100 else f"{v:,.1f}", (x, v), fontsize=7)
        ax.set_xscale("log")
        ax.set_xticks(users, [f"{u:,}" for u in users], fontsize=8)
        ax.minorticks_off()
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("users", fontsize=8)
        ax.legend(fontsize=8)
        ax.set_ylim(bottom=0)
    fig.suptitle("How the window worker's cost grows with its users (one worker, 8 partitions)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def chaos_plot(chaos: Result, path: Path) -> bool:
    faults = chaos.document.get("faults") or []
    if not faults:
        return False
    fig, ax = plt.subplots(figsize=(11, 0.5 * len(faults) + 1.5))
    names = [f["name"] for f in faults]
    recovered = [f.get("recovery_s") for f in faults]
    for i, value in enumerate(recovered):
        y = len(faults) - 1 - i
        if value is None:
            ax.text(0, y, " not recovered", va="center", color=MISSED, fontsize=8)
        else:
            ax.barh(y, value, 0.6, color=NO_TARGET)
            ax.text(value, y, f" {value:,.1f} s", va="center", fontsize=8)
    ax.set_yticks(range(len(faults) - 1, -1, -1), names, fontsize=8)
    ax.set_xlim(right=max([v for v in recovered if v is not None] or [1]) * 1.2)
    ax.set_xlabel("seconds to recover: a new user message accepted, folded, answered and sent")
    ax.set_title("Fault test: recovery time per fault", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---- the report --------------------------------------------------------------------------------


def missed(results: Sequence[Result]) -> list[str]:
    return [
        f"- {short(r.bench, f['name'])} = {show(f['value'], f['unit'])}, target {f['target']}"
        + ("" if f.get("ratio") is None else f" (ratio to its reference {f['ratio']:.2f}x)")
        for r in results
        for f in r.figures
        if f.get("met") is False
    ]


def chaos_section(chaos: Result | None, plotted: bool, plots: str) -> list[str]:
    if chaos is None:
        return ["No fault-test result in `bench/results/` (`make chaos`)."]
    d = chaos.document
    run: Mapping[str, Any] = d.get("run", {})
    traffic: Mapping[str, Any] = d.get("traffic", {})
    lines = [
        f"`{chaos.path.name}`: {run.get('seconds', '?')} s of faults on commit "
        f"`{run.get('commit', '?')}`, finished {run.get('finished_at', '?')}: "
        + ("**passed** (every count 0)." if d.get("passed") else "**FAILED** (a count is not 0)."),
        "",
        "| count (must be 0) | value |",
        "|---|---:|",
    ]
    for name, value in d.get("counts", {}).items():
        mark = "" if value == 0 else " **NOT met**"
        lines.append(f"| {name.replace('_', ' ')} | {value}{mark} |")
    lines += [
        "",
        f"Traffic: {traffic.get('webhook_bodies_accepted', '?')} webhook bodies accepted of "
        f"{traffic.get('webhook_bodies', '?')}, {traffic.get('requests_answered', '?')} requests "
        f"answered of {traffic.get('requests', '?')}, {traffic.get('graph_calls', '?')} Graph "
        f"calls; 503 rates ingest {traffic.get('ingest_503_rate', '?')}, API "
        f"{traffic.get('api_503_rate', '?')} (the faults' price, retried by the clients).",
        "",
        "| fault | lasted | recovery |",
        "|---|---:|---:|",
    ]
    for f in d.get("faults", []):
        rec = f.get("recovery_s")
        lines.append(
            f"| {cell(f['name'])} | {f.get('duration_s', 0):,.1f} s | "
            + ("**not recovered**" if rec is None else f"{rec:,.1f} s")
            + " |"
        )
    if plotted:
        lines += ["", f"![recovery per fault]({plots}/chaos.png)"]
    return lines


def scale_section(
    points: Sequence[dict[str, Any]], runs: Sequence[Result], plotted: bool, plots: str
) -> list[str]:
    if not runs:
        return [
            "No `window-scale-*.json` yet: `make bench-scale` (about 10 minutes; not part of "
            "`make bench-quick`)."
        ]
    lines = [f"- {provenance(run)}" for run in runs]
    lines += [
        "",
        "| users | events | fold (rebuild) | restore after kill -9 | first start | RSS "
        "| memory per user | stored per user |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        lines.append(
            f"| {p['users']:,} | {p['events']:,} | {p['fold_events_per_s']:,.0f}/s "
            f"| {p['restore_after_kill_s']:,.1f} s | {p['restore_first_start_s']:,.1f} s "
            f"| {p['rss_bytes'] / 2**20:,.0f} MiB | {p['memory_per_user_bytes']:,.0f} B "
            f"| {p['stored_value_mean_bytes']:,.0f} B |"
        )
    lines += [
        "",
        "Restore after kill -9 includes the group waiting out the dead member's session "
        "(WINDOW_SESSION_TIMEOUT_S, 10 s) whatever the number of users; first start is the "
        "restore alone. Memory per user is (RSS after restore − empty worker) / users: the "
        "smallest run's is mostly noise. Each size's row is its latest run: `python -m "
        "bench.window --scale --users 5000000 --parallel-events 0` adds 5 M users to the runs "
        "before (about 5 GiB in the worker and as much in the bench process).",
    ]
    if plotted:
        lines += ["", f"![cost against users]({plots}/scale.png)"]
    for run in runs:
        if run.figures:
            lines += ["", f"`{run.path.name}`:", "", *figure_rows(run)]
    return lines


def render(results_dir: Path, out: Path, plots_dir: Path) -> str:
    """Writes the report and its plots; returns the report's text."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    rel = plots_dir.relative_to(out.parent) if plots_dir.is_relative_to(out.parent) else plots_dir
    plots = rel.as_posix()
    results = [r for r in (latest(results_dir, b) for b in BENCHES) if r is not None]
    points, scale_files = scale_runs(results_dir)
    chaos = latest(results_dir, "chaos")
    judged = [*results, *scale_files]
    lines = [
        "# Benchmark report",
        "",
        "Written by `python -m bench.report` from the latest results in `bench/results/` (the end "
        "of `make bench` / `make bench-quick`); do not edit by hand. Every figure stands beside a "
        "reference measured in the same run on the same machine, so a busy machine shows as a "
        "slow reference too. Targets are read, not asserted. The scaling plan built on these "
        "costs: [docs/scaling.md](../docs/scaling.md).",
        "",
        "## Targets missed",
        "",
    ]
    misses = missed(judged)
    lines += misses or ["None in the latest results."]
    lines += ["", "## Throughput", ""]
    if throughput_plot(results, plots_dir / "throughput.png"):
        lines.append(f"![throughput beside references]({plots}/throughput.png)")
    lines += ["", "## Latency", ""]
    if latency_plot(results, plots_dir / "latency.png"):
        lines += [
            "Produce → state visible (window), webhook → 200 (ingest); the request → decision → "
            "Graph call path is measured as rates (dispatcher), not latencies, by these benches.",
            "",
            f"![latency percentiles]({plots}/latency.png)",
        ]
    lines += ["", "## Cost against the number of users", ""]
    plotted = scale_plot(points, plots_dir / "scale.png")
    lines += scale_section(points, scale_files, plotted, plots)
    lines += ["", "## Fault test (latest `make chaos`)", ""]
    lines += chaos_section(
        chaos, chaos is not None and chaos_plot(chaos, plots_dir / "chaos.png"), plots
    )
    lines += ["", "## Every figure, by bench", ""]
    for r in results:
        lines += [f"### {TITLES.get(r.bench, r.bench)}", "", provenance(r), "", *figure_rows(r), ""]
    missing = [b for b in BENCHES if b not in {r.bench for r in results}]
    if missing:
        lines.append(f"No results yet for: {', '.join(missing)}.")
    text = "\n".join(lines).rstrip() + "\n"
    out.write_text(text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.report", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="default bench/results")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "REPORT.md")
    parser.add_argument("--plots", type=Path, default=BENCH_DIR / "plots")
    args = parser.parse_args(argv)
    render(args.results, args.out, args.plots)
    print(f"written: {args.out} and its plots in {args.plots}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
