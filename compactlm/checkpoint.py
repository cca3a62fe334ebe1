"""Model checkpoint directories: build, save and load, with the tensors checked before they land.

A compactlm checkpoint directory holds `config.json` (a `ModelConfig`, marked `"format":
"compactlm"`), `model.safetensors` and the tokenizer files. `from_pretrained` also accepts a
Hugging Face Llama directory (safetensors, sharded or not, or `pytorch_model.bin`) and converts it on
the fly. Nothing here unpickles code: safetensors, or `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from compactlm.config import ModelConfig, get_preset
from compactlm.errors import CheckpointError
from compactlm.model import Transformer
from compactlm.tokenizer import Tokenizer

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_TEST_DELAY = float(os.environ.get("COMPACTLM_TEST_CHECKPOINT_DELAY", "0"))  # lets tests kill a write mid-way


def build_model(config: ModelConfig | str, device: str | torch.device | None = None,
                dtype: torch.dtype | None = None, **overrides) -> Transformer:
    """A freshly initialised model for a preset name or a config; device="meta" allocates nothing."""
    if isinstance(config, str):
        config = get_preset(config, **overrides)
    elif overrides:
        raise TypeError("overrides are only accepted with a preset name")
    with torch.device(device or "cpu"):
        model = Transformer(config)
    return model.to(dtype) if dtype is not None else model


def model_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint stores: a tied head is stored once, as the embedding."""
    state = model.state_dict()
    if model.config.tie_embeddings:
        state.pop("lm_head.weight")
    return state


def load_weights(model: Transformer, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load `state` into `model` (possibly on the meta device), refusing any mismatch with one message."""
    current = model_state_dict(model)
    expected = {k: tuple(v.shape) for k, v in current.items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(f"{k} (file {list(state[k].shape)}, model {list(expected[k])})"
                       for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    problems = [f"{label}: {short_list(items)}" for label, items in
                (("missing tensors", missing), ("unexpected tensors", unexpected), ("wrong shapes", misshaped)) if items]
    if problems:
        raise CheckpointError(f"{source}: does not match the model config; " + "; ".join(problems))
    dtype = next(iter(current.values())).dtype
    state = {k: v.to(dtype) for k, v in state.items()}
    if model.config.tie_embeddings:
        state["lm_head.weight"] = state["embed.weight"]
    on_meta = model.embed.weight.device.type == "meta"
    model.load_state_dict(state, strict=True, assign=on_meta)
    if model.config.tie_embeddings:
        model.lm_head.weight = model.embed.weight  # assign=True replaces parameters and unties them


def short_list(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def save_checkpoint(model: Transformer, directory: str | Path, tokenizer: Tokenizer | None = None) -> Path:
    """Write config.json + model.safetensors (+ tokenizer) atomically."""
    with atomic_directory(directory) as tmp:
        config = config_with_tokenizer_ids(model.config, tokenizer)
        save_file(cpu_state(model), tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        config.save(tmp / CONFIG_FILE)
        if tokenizer is not None:
            tokenizer.save(tmp)
    return Path(directory)


def config_with_tokenizer_ids(config: ModelConfig, tokenizer: Tokenizer | None) -> ModelConfig:
    """The tokenizer decides bos/eos; the stored config records them for loaders without it."""
    if tokenizer is None:
        return config
    return dataclasses.replace(config, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id)


def cpu_state(model: Transformer) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model_state_dict(model).items()}


@contextmanager
def atomic_directory(directory: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory to fill; on success it is fsynced and renamed into place.

    A crash at any moment leaves either the old directory or the new one, never a half-written one
    under the final name (leftover `.NAME.tmp-*` siblings are ignored by loaders).
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
    """Make a filled temporary directory durable, then move it to its final name in one rename."""
    _fsync_tree(tmp)
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


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_dir():
            _fsync_tree(path)
        elif path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except ValueError as exc:
        raise CheckpointError(f"{path}: invalid JSON ({exc})") from None


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable safetensors file ({exc})") from None


def load_torch_weights(path: Path) -> dict:
    """A pickled PyTorch file, restricted to tensors and plain containers (no code is run)."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for bad or unsafe files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot load safely with weights_only=True ({first_line})") from None


def is_compactlm_dir(directory: Path) -> bool:
    return (directory / CONFIG_FILE).is_file() and read_json(directory / CONFIG_FILE).get("format") == "compactlm"


def from_pretrained(path: str | Path, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None) -> Transformer:
    """Load a compactlm checkpoint directory or a Hugging Face Llama directory.

    The model is built on the meta device and the file's tensors are assigned to it, so no memory is
    spent on a throw-away initialisation. dtype defaults to float32.
    """
    from compactlm.convert import hf

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory")
    if is_compactlm_dir(path):
        config_data = read_json(path / CONFIG_FILE)
        config_data = {k: v for k, v in config_data.items() if k not in ("format", "format_version")}
        config = ModelConfig.from_dict(config_data, source=str(path / CONFIG_FILE))
        if not (path / WEIGHTS_FILE).is_file():
            # torch.distributed.checkpoint takes ~0.7 s to import: only for sharded checkpoints
            from compactlm.train_checkpoint import is_sharded

            if is_sharded(path):
                return _consolidate(path, config, device, dtype)
        state = load_safetensors(path / WEIGHTS_FILE)
        source = path / WEIGHTS_FILE
    elif (path / CONFIG_FILE).is_file():
        config = hf.config_from_hf(read_json(path / CONFIG_FILE), source=str(path / CONFIG_FILE))
        state = hf.state_dict_from_hf(hf.load_hf_weights(path), config, source=path)
        source = path
    else:
        raise CheckpointError(f"{path}: no config.json (neither a compactlm nor a Hugging Face checkpoint)")
    model = build_model(config, device="meta")
    load_weights(model, state, source)
    return finish_loading(model, device, dtype)


def _consolidate(path: Path, config: ModelConfig, device, dtype) -> Transformer:
    """One model from a sharded (DCP) training checkpoint, written by any number of ranks."""
    from compactlm.train_checkpoint import load_sharded_weights

    with torch.device("meta"):
        model = Transformer(config)
    model.to_empty(device="cpu")  # DCP reads into real tensors; no time spent on a random init
    load_sharded_weights(path, model_state_dict(model))
    if config.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    return finish_loading(model, device, dtype)


def finish_loading(model: Transformer, device=None, dtype=None) -> Transformer:
    """Move a model whose weights were assigned on the meta device to its device and dtype."""
    model.rope.to_empty(device="cpu")  # its cos/sin tables are computed, never stored
    model = model.to(device=device or "cpu", dtype=dtype or torch.float32)
    model.rope.reset_tables()
    return model.eval()
