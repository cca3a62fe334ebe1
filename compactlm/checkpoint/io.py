"""Reading and writing checkpoint files safely: atomic directories, and loaders that never run code.

Directories are filled under a temporary sibling name, fsynced, then renamed into place, so a
crash leaves the old directory or the new one, never a half-written one under the final name.
Tensors come from safetensors, or from `torch.load(weights_only=True)`, never from plain pickle.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from compactlm import fileio
from compactlm.errors import CheckpointError, first_line

_TEST_DELAY = float(os.environ.get("COMPACTLM_TEST_CHECKPOINT_DELAY", "0"))  # lets tests kill a write mid-way


# ---- the tensors a checkpoint stores ---------------------------------------------------------------
def model_state_dict(model) -> dict[str, torch.Tensor]:
    """A Transformer's tensors as checkpoints store them: a tied head once, as the embedding."""
    state = model.state_dict()
    if model.config.tie_embeddings:
        state.pop("lm_head.weight")
    return state


def cpu_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model_state_dict(model).items()}


# ---- atomic directories ---------------------------------------------------------------------------
@contextmanager
def atomic_directory(directory: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory to fill; on success it is fsynced and renamed into place.

    Leftover `.NAME.tmp-*` siblings of a killed write are ignored by loaders.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_directory(tmp, directory)


def publish_directory(tmp: Path, directory: Path) -> None:
    """Make a filled temporary directory durable, then move it to its final name in one rename.

    Modes follow the umask (755 / 644 under the usual 022): mkdtemp makes directories private and
    safetensors writes files 0600, but checkpoints and exports are read by other users and containers.
    """
    _fsync_tree(tmp, fileio.umask())
    if _TEST_DELAY:
        time.sleep(_TEST_DELAY)  # widens the window in which tests kill a checkpoint write
    _replace_directory(tmp, directory)


def _replace_directory(tmp: Path, directory: Path) -> None:
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, directory)
    _fsync_dir(directory.parent)


def _fsync_tree(directory: Path, umask: int) -> None:
    for path in directory.iterdir():
        if path.is_dir():
            _fsync_tree(path, umask)
        elif path.is_file():
            os.chmod(path, 0o666 & ~umask)
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    os.chmod(directory, 0o777 & ~umask)
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- safe loaders ---------------------------------------------------------------------------------
def read_json(path: Path) -> dict:
    return fileio.read_json(path, CheckpointError)


@contextmanager
def _safetensors_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (SafetensorError, OSError, ValueError) as exc:  # the header's JSON error quotes the bad bytes
        raise CheckpointError(f"{path}: unreadable safetensors file ({first_line(exc)})") from None


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    with _safetensors_errors(path):
        return load_file(path)


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors file, from its header (no tensor is read)."""
    with _safetensors_errors(path), safe_open(path, framework="pt") as f:
        return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}


def load_torch_weights(path: Path, mmap: bool = True) -> dict:
    """A pickled PyTorch file, restricted to tensors and plain containers (no code is run).

    mmap=False reads it whole: for tensors that will be updated in place (an optimizer's state).
    """
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as exc:
            if not mmap or "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for bad or unsafe files
        reason = first_line(exc).split(". ")[0]  # torch appends a paragraph of advice to some errors
        raise CheckpointError(f"{path}: cannot load safely with weights_only=True ({reason})") from None
