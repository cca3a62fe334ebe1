"""Figures for reports (demo, evaluation over a run, the ladder): headless, written atomically, and
with a record of what each one shows, so that tests check the data behind a picture, not its bytes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from compactlm.fileio import atomic_write


def pyplot():
    """matplotlib.pyplot on the headless Agg backend (no display is needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass
class Figure:
    """What a saved PNG shows: its size in pixels, and every plotted line as (label, x, y)."""

    path: Path
    width: int
    height: int
    lines: list[tuple[str, list[float], list[float]]] = field(default_factory=list)

    def line(self, label: str) -> tuple[list[float], list[float]]:
        for name, x, y in self.lines:
            if name == label:
                return x, y
        raise KeyError(f"{self.path.name} has no line labelled {label!r} ({[n for n, _, _ in self.lines]})")


def save_figure(fig, path: str | Path, dpi: int = 120) -> Figure:
    """Lay out, render and write `fig` as a PNG atomically, then close it."""
    path = Path(path)
    lines = [(str(line.get_label()), [float(v) for v in line.get_xdata()], [float(v) for v in line.get_ydata()])
             for ax in fig.axes for line in ax.get_lines()]
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    width, height = (round(v) for v in fig.get_size_inches() * dpi)
    pyplot().close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, [buffer.getvalue()])
    return Figure(path, width, height, lines)

