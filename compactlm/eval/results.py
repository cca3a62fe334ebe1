"""Result files and tables of evaluations: one place that formats scores and writes them atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path

from compactlm.fileio import atomic_write


def write_text(path: Path, text: str) -> None:
    atomic_write(path, [text.encode()])


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, default=jsonable) + "\n")


def jsonable(value):
    """A JSON-safe form of an lm-eval value (NaN -> None, numpy scalars -> float, else str)."""
    if isinstance(value, (int, float, str, bool)) or value is None:
        return None if isinstance(value, float) and math.isnan(value) else value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def average(entries: list[dict | None]) -> float | None:
    values = [e["value"] for e in entries if e and e.get("value") is not None]
    return sum(values) / len(values) if len(values) == len(entries) and values else None


def _fmt(value: float | None, metric: str | None = None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}"


def format_tokens(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def markdown_table(rows: list[tuple[str, dict[str, dict]]], specs: list, first: str = "model") -> str:
    """The TinyLlama report's table shape: one row per model or checkpoint, one column per task (x100), then the average."""
    header = f"| {first} | " + " | ".join(t.title for t in specs) + " | avg |"
    lines = [header, "|" + "---|" * (len(specs) + 2)]
    for label, results in rows:
        entries = [results.get(t.key) for t in specs]
        cells = [_fmt(e and e["value"]) for e in entries]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {_fmt(average(entries))} |")
    metrics = ", ".join(f"{t.title}: {e['metric'].removesuffix(',none')}" for t in specs for e in [next(
        (r[t.key] for _, r in rows if r.get(t.key) and r[t.key].get("metric")), None)] if e)
    return "\n".join(lines) + (f"\n\nMetrics (x100): {metrics}." if metrics else "") + "\n"
