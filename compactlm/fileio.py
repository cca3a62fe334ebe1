"""Atomic file writes: a temporary sibling, fsynced, then renamed over the target.

A reader (or a re-run after a crash) sees either the old file or the complete new one, never a
half-written file under the final name.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def atomic_write(path: str | Path, chunks: Iterable[bytes]) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
