"""The benches' figures as JSON in `bench/results/`: one shape for every bench.

A figure is a value beside the reference measured in the same run (its ratio follows), and the
target it is read against with whether it was met. Every document also says where it was
measured: machine, CPU model, cores, Python and library versions, commit, date. `bench.report`
reads the latest document of each bench to write `bench/REPORT.md`.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

RESULTS = Path(__file__).resolve().parent / "results"
LIBRARIES = ("aiokafka", "aiohttp", "orjson", "msgspec")
"""Versions recorded with every result (those the measured paths run on)."""


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    reference: str = "-"
    reference_value: float | None = None
    target: str = "-"
    met: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.reference_value is None or self.reference_value == 0:
            return None
        return self.value / self.reference_value


def show(value: float, unit: str) -> str:
    if unit in ("ms", "s", "µs"):
        return f"{value:,.1f} {unit}"
    if unit == "MiB":
        return f"{value:,.0f} MiB"
    return f"{value:,.0f} {unit}"


def verdict(met: bool | None) -> str:
    return "" if met is None else ("met" if met else "NOT met")


def print_table(figures: Sequence[Figure]) -> None:
    header = ("figure", "value", "reference (same run)", "ratio", "target")
    rows = [header, tuple("-" * len(h) for h in header)]
    for f in figures:
        ratio = "-" if f.ratio is None else f"{f.ratio:.2f}x"
        met = "" if f.met is None else f"  ({verdict(f.met)})"
        rows.append((f.name, show(f.value, f.unit), f.reference, ratio, f.target + met))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def memory_bytes() -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return None


def _git(*args: str) -> str:
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=10
    )
    return done.stdout.strip()


def commit() -> str:
    """The commit checked out now (when the figures are written), `+dirty` when tracked files
    had changes."""
    try:
        head = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+dirty" if dirty else head


def machine() -> dict[str, Any]:
    versions: dict[str, str] = {}
    for name in LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return {
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "memory_bytes": memory_bytes(),
        "python": platform.python_version(),
        "versions": versions,
        "commit": commit(),
    }


def write_results(
    bench: str,
    figures: Sequence[Figure],
    quick: bool,
    inputs: Mapping[str, Any],
    started: datetime,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """`bench/results/<bench>-<UTC date and time>.json`; returns its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{bench}-{started.strftime('%Y-%m-%dT%H%M%SZ')}.json"
    document = {
        "bench": bench,
        "quick": quick,
        "started": started.isoformat(timespec="seconds"),
        **machine(),
        "inputs": dict(inputs),
        **dict(extra or {}),
        "figures": [{**asdict(f), "ratio": f.ratio} for f in figures],
    }
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    return path


def shown(path: Path) -> str:
    """The path relative to the working directory when it is under it."""
    return str(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)
