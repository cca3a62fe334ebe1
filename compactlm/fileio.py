"""Atomic file writes: a temporary sibling, fsynced, then renamed over the target.

A reader (or a re-run after a crash) sees either the old file or the complete new one, never a
half-written file under the final name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write(path: str | Path, chunks: Iterable[bytes]) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        for chunk in chunks:
            f.write(chunk)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write; on success it is synced and renamed to `path`, on any
    failure removed, so `path` is never seen half-written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_json(path: str | Path, error: type[Exception]):
    """The parsed JSON file, or `error` with one line naming the file and what is wrong with it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise error(f"{path}: invalid JSON ({exc})") from None
