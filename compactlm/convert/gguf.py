"""compactlm <-> GGUF, the file format of llama.cpp: metadata, tensor names, q/k layout, quantization.

Export goes through the Hugging Face tensor names (`convert.hf` owns the un-fusing of qkv and
gate_up), then renames them to llama.cpp's and reorders the q/k rows: compactlm and transformers
rotate the two halves of each head (rotate-half RoPE), llama.cpp's Llama rotates adjacent pairs,
so each head's rows are interleaved, exactly as llama.cpp's own `convert_hf_to_gguf.py` does.
Import undoes both. The `gguf` package writes and reads the file and holds llama.cpp's block
quantizers (q8_0, q4_0), so compactlm does not re-implement them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from compactlm.config.model import ModelConfig
from compactlm.errors import CheckpointError, CompactlmError, first_line, short_list, shown_key
from compactlm.fileio import atomic_file
from compactlm.tokenizer.gguf import add_tokenizer_fields, gguf_scalar, open_gguf, special_ids
from compactlm.tokenizer.tokenizer import Tokenizer

ARCH = "llama"
DTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
# llama.cpp's `general.file_type` (enum llama_ftype) for each choice.
_FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "bf16": 32}
_BLOCK = 32  # q8_0 and q4_0 quantize rows in blocks of 32 values

_GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                 "lm_head.weight": "output.weight"}
_LAYER_NAMES = {"input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
                "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
                "self_attn.o_proj.weight": "attn_output.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
                "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
                "mlp.down_proj.weight": "ffn_down.weight"}


def gguf_name(hf_name: str) -> str:
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)  # model.layers.{i}.{rest}
    return f"blk.{layer}.{_LAYER_NAMES[rest]}"


def hf_names(config: ModelConfig) -> dict[str, str]:
    """GGUF name -> HF name for every tensor of `config`'s model."""
    from compactlm.convert.hf import tensor_name_map

    names = [hf for group in tensor_name_map(config).values() for hf in group]
    return {gguf_name(hf): hf for hf in names}


# ---- the q/k row order --------------------------------------------------------------------------
def interleave_heads(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of each head from rotate-half order (x0..x{d/2-1}, y0..) to llama.cpp's pairs (x0, y0, x1, y1, ...)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def deinterleave_heads(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of interleave_heads."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


# ---- export -------------------------------------------------------------------------------------
def export_gguf(model, out: str | Path, tokenizer: Tokenizer, dtype: str = "f32") -> Path:
    """Write `model` and `tokenizer` (with its chat template, if any) as one GGUF file llama.cpp runs;
    atomically (no half-written file)."""
    import gguf

    from compactlm.checkpoint.io import cpu_state
    from compactlm.convert.hf import state_dict_to_hf

    if dtype not in DTYPES:
        raise CompactlmError(f"--dtype {dtype!r}: unknown; choose one of {', '.join(DTYPES)}")
    config = model.config.with_special_ids(tokenizer.bos_id, tokenizer.eos_id)
    out = Path(out)
    with atomic_file(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch=ARCH)
        _add_model_fields(writer, config, dtype)
        add_tokenizer_fields(writer, tokenizer, config.vocab_size, tokenizer.chat_template)
        for hf_name, tensor in state_dict_to_hf(cpu_state(model), config).items():
            name = gguf_name(hf_name)
            if name.endswith("attn_q.weight"):
                tensor = interleave_heads(tensor, config.n_head)
            elif name.endswith("attn_k.weight"):
                tensor = interleave_heads(tensor, config.n_kv_head)
            data, qtype = _encode(name, tensor.float().numpy(), dtype)
            writer.add_tensor(name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return out


def _add_model_fields(writer, config: ModelConfig, dtype: str) -> None:
    writer.add_name(config.name)
    writer.add_file_type(_FILE_TYPES[dtype])
    writer.add_quantization_version(2)  # GGML_QNT_VERSION: the block layout of q8_0 and q4_0
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.d_model)
    writer.add_block_count(config.n_layer)
    writer.add_feed_forward_length(config.ffn_dim)
    writer.add_head_count(config.n_head)
    writer.add_head_count_kv(config.n_kv_head)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_base)
    writer.add_layer_norm_rms_eps(config.norm_eps)


def _encode(name: str, array: np.ndarray, dtype: str):
    """(data, GGML type) for one tensor: norms stay f32 (llama.cpp computes them in f32); in q4_0 files the
    embedding and head stay q8_0, the tensors whose error every token meets (llama-quantize keeps them
    at higher precision too)."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    if array.ndim == 1 or dtype == "f32":
        return array.astype(np.float32), Q.F32
    if dtype == "f16":
        return array.astype(np.float16), Q.F16
    if dtype == "bf16":
        return quantize(array, Q.BF16), Q.BF16
    if array.shape[-1] % _BLOCK:
        raise CheckpointError(f"{name}: rows of {array.shape[-1]} values cannot be quantized to {dtype} (blocks of "
                              f"{_BLOCK}); export f16 or f32")
    qtype = Q.Q8_0 if dtype == "q8_0" or name in ("token_embd.weight", "output.weight") else Q.Q4_0
    return quantize(array, qtype), qtype


# ---- import -------------------------------------------------------------------------------------
def read_gguf(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(config with the file's bos/eos ids, compactlm state dict in float32) of a llama.cpp Llama GGUF file.
    Its tokenizer: `Tokenizer(path)`."""
    from compactlm.convert.hf import state_dict_from_hf

    path = Path(path)
    reader = open_gguf(path)
    try:
        config = _config_from_fields(reader, path)
        tensors = {t.name: t for t in reader.tensors}
        names = hf_names(config)
        _check_names(set(tensors), set(names), config, path)
        hf_state = {names[n]: _decode(tensors[n], config, path) for n in names if n in tensors}
        config = config.with_special_ids(*special_ids(reader))
    except (IndexError, ValueError, TypeError, KeyError) as exc:  # damaged fields or tensor data
        raise CheckpointError(f"{path}: malformed GGUF model ({first_line(exc)})") from None
    return config, state_dict_from_hf(hf_state, config, source=path)


def _config_from_fields(reader, path: Path) -> ModelConfig:
    arch = gguf_scalar(reader, "general.architecture")
    if arch != ARCH:
        raise CheckpointError(f"{path}: general.architecture is {arch!r}; only 'llama' models can be imported")

    def field(key, default=None):
        value = gguf_scalar(reader, f"{ARCH}.{key}", default)
        if value is None:
            raise CheckpointError(f"{path}: GGUF file has no {ARCH}.{key} field")
        return value

    n_layer = int(field("block_count"))
    blocks = {int(t.name.split(".")[1]) for t in reader.tensors
              if t.name.startswith("blk.") and t.name.split(".")[1].isdigit()}
    if n_layer != len(blocks) or blocks != set(range(n_layer)):
        raise CheckpointError(f"{path}: {ARCH}.block_count is {n_layer} but the file holds tensors of "
                              f"{len(blocks)} blocks")
    n_head = int(field("attention.head_count"))
    d_model = int(field("embedding_length"))
    head_dim = int(field("attention.key_length", d_model // max(n_head, 1)))
    if int(field("rope.dimension_count", head_dim)) != head_dim:
        raise CheckpointError(f"{path}: partial RoPE (rope.dimension_count != head size) is not supported")
    scaling = gguf_scalar(reader, f"{ARCH}.rope.scaling.type", "none")
    if scaling != "none":
        raise CheckpointError(f"{path}: RoPE scaling {scaling!r} is not supported, only the default RoPE")
    embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    vocab = int(field("vocab_size", None if embed is None else int(embed.shape[1])))
    try:
        return ModelConfig(
            n_layer=n_layer, d_model=d_model, n_head=n_head,
            n_kv_head=int(field("attention.head_count_kv", n_head)), ffn_dim=int(field("feed_forward_length")),
            vocab_size=vocab, max_seq_len=int(field("context_length")), head_dim=head_dim,
            norm_eps=_float32_decimal(field("attention.layer_norm_rms_epsilon")),
            rope_base=_float32_decimal(field("rope.freq_base", 1e4)),
            tie_embeddings=not any(t.name == "output.weight" for t in reader.tensors),
            name=str(gguf_scalar(reader, "general.name", path.stem)))
    except CompactlmError as exc:  # ModelConfig's own checks
        raise CheckpointError(f"{path}: {exc}") from None


def _float32_decimal(value) -> float:
    """GGUF stores these as float32: 1e-5 comes back as 9.99999974e-06. The shortest decimal that rounds to
    the same float32 restores what was written, so f32 -> GGUF -> compactlm keeps the config equal."""
    return float(str(np.float32(value)))


def _check_names(found: set[str], wanted: set[str], config: ModelConfig, path: Path) -> None:
    missing, unexpected = sorted(wanted - found), sorted(shown_key(n) for n in found - wanted)
    if missing or unexpected:
        parts = [f"{label}: {short_list(items)}" for label, items in
                 (("missing tensors", missing), ("unexpected tensors", unexpected)) if items]
        raise CheckpointError(f"{path}: not a Llama model of {config.n_layer} layers; " + "; ".join(parts))


def _decode(tensor, config: ModelConfig, path: Path) -> torch.Tensor:
    """One GGUF tensor as a float32 torch tensor in transformers' row order."""
    from gguf.quants import QuantError, dequantize

    try:
        array = dequantize(np.asarray(tensor.data), tensor.tensor_type)  # f32 and f16 included
    except (NotImplementedError, QuantError):
        raise CheckpointError(f"{path}: tensor {tensor.name} has GGML type {tensor.tensor_type.name}, which cannot "
                              "be dequantized to weights") from None
    shape = tuple(int(d) for d in reversed(tensor.shape))  # GGUF lists dimensions innermost first
    weight = torch.from_numpy(np.array(array, dtype=np.float32).reshape(shape))  # a copy: the file is read-only
    heads = {"attn_q.weight": config.n_head, "attn_k.weight": config.n_kv_head}.get(tensor.name.split(".", 2)[-1])
    if heads is None:
        return weight
    if weight.shape[0] != heads * config.head_dim:
        raise CheckpointError(f"{path}: {tensor.name} has {weight.shape[0]} rows, but the metadata gives {heads} "
                              f"heads of {config.head_dim}")
    return deinterleave_heads(weight, heads)
