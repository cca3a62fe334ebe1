"""RUN_DIR/metrics.jsonl: the one writer and the one reader of a run's metrics.

One JSON object per line: a line per optimizer step (`step`, `loss`, `lr`, `grad_norm`, `tokens`,
`tokens_per_s`, `peak_memory` in bytes, `mfu` on known GPUs) and validation lines (`step`, `tokens`,
`val_loss`, `val_ppl`, `val_bpb`). TensorBoard scalars are written beside it. After a resume the
lines past the checkpoint are dropped first: they are recomputed, identically.
"""

from __future__ import annotations

import json
from pathlib import Path

from compactlm.checkpoint.layout import METRICS_FILE, TENSORBOARD_DIR
from compactlm.fileio import atomic_write


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every record of a run, in order; a last line cut by a kill is ignored."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def step_records(records: list[dict]) -> list[dict]:
    return [r for r in records if "loss" in r]


def validation_records(records: list[dict]) -> list[dict]:
    return [r for r in records if "val_loss" in r]


def tokens_at_step(records: list[dict], step: int) -> int | None:
    """Tokens seen after `step` (the last record of that step wins)."""
    found = None
    for r in records:
        if r.get("step") == step and "tokens" in r:
            found = int(r["tokens"])
    return found


def truncate_metrics(run_dir: str | Path, step: int) -> None:
    """Keep the records of steps up to `step` (a resume recomputes the rest)."""
    path = Path(run_dir) / METRICS_FILE
    if path.is_file():
        kept = [json.dumps(r) + "\n" for r in read_metrics(run_dir) if r["step"] <= step]
        atomic_write(path, ["".join(kept).encode()])


class MetricsWriter:
    """Appends records to metrics.jsonl (flushed per line) and TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool, purge_step: int):
        self.file = open(Path(run_dir) / METRICS_FILE, "a")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR), purge_step=purge_step)
            except ImportError:
                self.tb = None

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and value is not None:
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


class NoMetrics:
    """What ranks other than 0 write: nothing."""

    def write(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass
