"""Model checkpoint directories: build, save and load, with the tensors checked before they land.

A compactlm checkpoint directory holds `config.json` (a `ModelConfig`, marked `"format":
"compactlm"`), `model.safetensors` (or a sharded `dcp/` training checkpoint) and the tokenizer files.
`from_pretrained` also accepts a Hugging Face Llama directory (safetensors, sharded or not, or
`pytorch_model.bin`) and a llama.cpp GGUF file (dequantized), and converts them on the fly. Nothing here
unpickles code.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file

from compactlm.checkpoint.io import atomic_directory, cpu_state, load_safetensors, model_state_dict, read_json
from compactlm.checkpoint.layout import CONFIG_FILE, GGUF_SUFFIX, WEIGHTS_FILE, is_sharded, require_checkpoint
from compactlm.config.model import ModelConfig, get_preset
from compactlm.errors import CheckpointError, first_line, short_list, shown_key
from compactlm.model.transformer import Transformer
from compactlm.tokenizer.tokenizer import Tokenizer


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


def load_weights(model: Transformer, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load `state` into `model` (possibly on the meta device), refusing any mismatch with one message."""
    check_tensors(model, {k: tuple(v.shape) for k, v in state.items()}, source)
    current = model_state_dict(model)
    dtype = next(iter(current.values())).dtype
    state = {k: v.to(dtype) for k, v in state.items()}
    if model.config.tie_embeddings:
        state["lm_head.weight"] = state["embed.weight"]
    on_meta = model.embed.weight.device.type == "meta"
    model.load_state_dict(state, strict=True, assign=on_meta)
    if model.config.tie_embeddings:
        model.lm_head.weight = model.embed.weight  # assign=True replaces parameters and unties them


def check_tensors(model: Transformer, shapes: dict[str, tuple[int, ...]], source: str | Path) -> None:
    """One line naming the missing, unexpected and misshaped tensors (name -> shape) for this model."""
    expected = {k: tuple(v.shape) for k, v in model_state_dict(model).items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(shown_key(k) for k in set(shapes) - set(expected))  # a file's names: any text
    misshaped = sorted(f"{k} (file {list(shapes[k])}, model {list(expected[k])})"
                       for k in set(expected) & set(shapes) if tuple(shapes[k]) != expected[k])
    problems = [f"{label}: {short_list(items)}" for label, items in
                (("missing tensors", missing), ("unexpected tensors", unexpected), ("wrong shapes", misshaped)) if items]
    if problems:
        raise CheckpointError(f"{source}: does not match the model config; " + "; ".join(problems))


def save_checkpoint(model: Transformer, directory: str | Path, tokenizer: Tokenizer | None = None) -> Path:
    """Write config.json + model.safetensors (+ tokenizer) atomically."""
    with atomic_directory(directory) as tmp:
        save_file(cpu_state(model), tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        write_model_files(tmp, model.config, tokenizer)
    return Path(directory)


def write_model_files(directory: Path, config: ModelConfig, tokenizer: Tokenizer | None) -> None:
    """config.json (with the tokenizer's special ids) and the tokenizer files: what every checkpoint
    directory holds besides its tensors."""
    if tokenizer is not None:
        config = config.with_special_ids(tokenizer.bos_id, tokenizer.eos_id)
        tokenizer.save(directory)
    config.save(directory / CONFIG_FILE)


def is_compactlm_dir(directory: Path) -> bool:
    if not (directory / CONFIG_FILE).is_file():
        return False
    data = read_json(directory / CONFIG_FILE)  # any JSON value: a list or a number is no compactlm config
    return isinstance(data, dict) and data.get("format") == "compactlm"


def from_pretrained(path: str | Path, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None) -> Transformer:
    """Load a compactlm checkpoint directory, a Hugging Face Llama directory or a llama.cpp GGUF file.

    The model is built on the meta device and the file's tensors are assigned to it, so no memory is
    spent on a throw-away initialisation. dtype defaults to float32.
    """
    path = require_checkpoint(path)
    if path.suffix == GGUF_SUFFIX and path.is_file():  # dequantized to float32
        from compactlm.convert.gguf import read_gguf

        config, state = read_gguf(path)
        source = path
    elif is_compactlm_dir(path):
        config = ModelConfig.load(path)
        if not (path / WEIGHTS_FILE).is_file() and is_sharded(path):
            return _consolidate(path, config, device, dtype)
        state, source = load_safetensors(path / WEIGHTS_FILE), path / WEIGHTS_FILE
    else:  # a Hugging Face directory
        from compactlm.convert import hf

        config = hf.config_from_hf(read_json(path / CONFIG_FILE), source=str(path / CONFIG_FILE))
        state, source = hf.state_dict_from_hf(hf.load_hf_weights(path), config, source=path), path
    with _memory_errors(path, config, device):
        model = build_model(config, device="meta")
        load_weights(model, state, source)
        return finish_loading(model, device, dtype)


@contextmanager
def _memory_errors(path: Path, config: ModelConfig, device):
    """One line instead of torch's bare RuntimeError when the model does not fit: the RoPE tables alone
    take max_seq_len x head_dim floats, and a config.json can ask for more than any machine has."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        raise CheckpointError(f"{path}: cannot build this model on {device or 'cpu'} (max_seq_len "
                              f"{config.max_seq_len}): {first_line(exc)}") from None


def _consolidate(path: Path, config: ModelConfig, device, dtype) -> Transformer:
    """One model from a sharded (DCP) training checkpoint, written by any number of ranks."""
    # torch.distributed.checkpoint takes ~0.7 s to import: only for sharded checkpoints
    from compactlm.checkpoint.training import load_sharded_weights

    with _memory_errors(path, config, device):
        model = build_model(config, device="meta")
        model.to_empty(device="cpu")  # DCP reads into real tensors; no time spent on a random init
    load_sharded_weights(path, model_state_dict(model))
    if config.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    with _memory_errors(path, config, device):
        return finish_loading(model, device, dtype)


def finish_loading(model: Transformer, device=None, dtype=None) -> Transformer:
    """Move a model whose weights were assigned on the meta device to its device and dtype."""
    model.rope.to_empty(device="cpu")  # its cos/sin tables are computed, never stored
    model = model.to(device=device or "cpu", dtype=dtype or torch.float32)
    model.rope.reset_tables()
    return model.eval()
