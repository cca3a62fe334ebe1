"""Claiming a run directory: one process at a time, and never over another run by accident.

A fresh `compactlm train` into a directory that already holds a run (metrics, checkpoints or a
config) is refused: continue it with `--resume`, replace it with `--overwrite`, or choose another
`run_dir`. An exclusive lock (`RUN_DIR/.lock`, `flock`) makes a second process fail at once; the
kernel drops the lock when its holder exits, however it exits, so a lock file left by a killed run
is never in the way.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from compactlm.checkpoint import layout
from compactlm.errors import CompactlmError

LOCK_FILE = ".lock"
# What a run writes into its directory; --overwrite removes exactly these.
RUN_ENTRIES = (layout.CHECKPOINTS_DIR, layout.METRICS_FILE, layout.RUN_CONFIG, layout.TENSORBOARD_DIR,
               layout.EVAL_DIR)


class RunDirError(CompactlmError):
    pass


def holds_a_run(run_dir: Path) -> bool:
    return any((run_dir / name).exists() for name in RUN_ENTRIES[:3])


class RunLock:
    """An exclusive lock on a run directory, held until `release` (or the process's exit)."""

    def __init__(self, run_dir: Path):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / LOCK_FILE
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(self._fd)
            raise RunDirError(f"{run_dir}: in use by {holder} (a run is training there); wait for it, or "
                              "choose another run_dir") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"process {os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def claim(run_dir: str | Path, resume: bool, overwrite: bool) -> RunLock:
    """Lock `run_dir` for this run; refuse to start afresh over an existing run unless asked to."""
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite contradict each other: continue the run, or replace it")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: run_dir is a file, not a directory")
    lock = RunLock(run_dir)
    try:
        if holds_a_run(run_dir) and not resume:
            if not overwrite:
                raise RunDirError(f"{run_dir}: already holds a run; continue it with --resume, replace it with "
                                  "--overwrite, or set another run_dir=...")
            for name in RUN_ENTRIES:
                target = run_dir / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
    except BaseException:
        lock.release()
        raise
    return lock
