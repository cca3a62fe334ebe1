"""Hugging Face `LlamaForCausalLM` <-> compactlm: config fields and tensor names.

The only layout difference is fusion: compactlm's `qkv` is HF's q_proj, k_proj and v_proj stacked
row-wise, and `gate_up` is gate_proj over up_proj. Concatenating and splitting along rows copies
values unchanged, so HF -> compactlm -> HF is bit-exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from compactlm.checkpoint.io import atomic_directory, cpu_state, load_safetensors, load_torch_weights, read_json
from compactlm.checkpoint.layout import CONFIG_FILE
from compactlm.config.model import ModelConfig
from compactlm.errors import CheckpointError, ConfigError, first_line, short_list, shown_key
from compactlm.model.transformer import Transformer
from compactlm.tokenizer.tokenizer import Tokenizer

# Tensors some HF checkpoints carry that are recomputed, not learned.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


# ---- config ----------------------------------------------------------------------------------
def config_from_hf(hf: dict, source: str = "config.json") -> ModelConfig:
    if not isinstance(hf, dict):
        raise ConfigError(f"{source}: not a model config (expected a JSON object)")
    if hf.get("model_type") != "llama":
        raise ConfigError(f"{source}: model_type is {hf.get('model_type')!r}, only 'llama' is supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported (Llama uses 'silu')")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ConfigError(f"{source}: linear biases are not supported (attention_bias/mlp_bias)")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise ConfigError(f"{source}: rope_parameters / rope_scaling must be an object, got {rope!r}")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ConfigError(f"{source}: RoPE scaling {rope_type!r} is not supported, only the default RoPE")
    try:
        n_head = hf["num_attention_heads"]
        eos = hf.get("eos_token_id", 2)
        return ModelConfig(
            n_layer=hf["num_hidden_layers"], d_model=hf["hidden_size"], n_head=n_head,
            n_kv_head=hf.get("num_key_value_heads") or n_head, ffn_dim=hf["intermediate_size"],
            vocab_size=hf["vocab_size"], max_seq_len=hf.get("max_position_embeddings", 2048),
            head_dim=hf.get("head_dim") or 0, norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_base=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            name=Path(hf.get("_name_or_path") or "hf-llama").name or "hf-llama",
            bos_id=hf.get("bos_token_id", 1), eos_id=eos[0] if isinstance(eos, list) else eos,
        )
    except KeyError as exc:
        raise ConfigError(f"{source}: missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError, IndexError) as exc:  # a string rope_theta, an empty eos_token_id list, ...
        raise ConfigError(f"{source}: invalid field value ({first_line(exc)})") from None
    except ConfigError as exc:  # ModelConfig's own checks
        raise ConfigError(f"{source}: {exc}") from None


def config_to_hf(config: ModelConfig) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.ffn_dim,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_base,  # transformers < 5 reads this
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base},
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": config.bos_id,
        "eos_token_id": config.eos_id,
        "torch_dtype": "float32",
        "use_cache": True,
    }


# ---- tensors ---------------------------------------------------------------------------------
def _layer_names(i: int) -> dict[str, list[str]]:
    """compactlm name -> the HF names it is stacked from, for layer i."""
    hf = f"model.layers.{i}."
    return {
        f"layers.{i}.attn_norm.weight": [hf + "input_layernorm.weight"],
        f"layers.{i}.attn.qkv.weight": [hf + f"self_attn.{p}_proj.weight" for p in "qkv"],
        f"layers.{i}.attn.proj.weight": [hf + "self_attn.o_proj.weight"],
        f"layers.{i}.mlp_norm.weight": [hf + "post_attention_layernorm.weight"],
        f"layers.{i}.mlp.gate_up.weight": [hf + "mlp.gate_proj.weight", hf + "mlp.up_proj.weight"],
        f"layers.{i}.mlp.down.weight": [hf + "mlp.down_proj.weight"],
    }


def tensor_name_map(config: ModelConfig) -> dict[str, list[str]]:
    """compactlm tensor name -> the HF names it is stacked from (one, or several for fused tensors)."""
    names = {"embed.weight": ["model.embed_tokens.weight"], "norm.weight": ["model.norm.weight"]}
    for i in range(config.n_layer):
        names.update(_layer_names(i))
    if not config.tie_embeddings:
        names["lm_head.weight"] = ["lm_head.weight"]
    return names


def _split_sizes(name: str, config: ModelConfig) -> list[int]:
    if name.endswith("qkv.weight"):
        hd = config.head_dim
        return [config.n_head * hd, config.n_kv_head * hd, config.n_kv_head * hd]
    if name.endswith("gate_up.weight"):
        return [config.ffn_dim, config.ffn_dim]
    return []


def state_dict_from_hf(hf_state: dict[str, torch.Tensor], config: ModelConfig, source="checkpoint") -> dict:
    hf_state = {k: v for k, v in hf_state.items() if not k.endswith(_IGNORED_SUFFIXES)}
    if config.tie_embeddings:
        # Some tied checkpoints still store the head; it must equal the embedding to be dropped.
        head = hf_state.pop("lm_head.weight", None)
        if head is not None and not torch.equal(head, hf_state.get("model.embed_tokens.weight", head)):
            raise CheckpointError(f"{source}: tie_word_embeddings is set but lm_head.weight differs from the embedding")
    names = tensor_name_map(config)
    wanted = {h for hf_names in names.values() for h in hf_names}
    missing = sorted(wanted - set(hf_state))
    unexpected = sorted(shown_key(k) for k in set(hf_state) - wanted)  # a file's names may hold line breaks
    if missing or unexpected:
        parts = [f"missing tensors: {short_list(missing)}" if missing else "",
                 f"unexpected tensors: {short_list(unexpected)}" if unexpected else ""]
        raise CheckpointError(f"{source}: not a Llama checkpoint of this config; " + "; ".join(p for p in parts if p))
    return {ours: hf_state[hf_names[0]] if len(hf_names) == 1 else _cat_checked(hf_state, hf_names, source)
            for ours, hf_names in names.items()}


def _cat_checked(state, names, source) -> torch.Tensor:
    widths = {state[n].shape[1:] for n in names}
    if len(widths) != 1:
        shapes = ", ".join(f"{n} {list(state[n].shape)}" for n in names)
        raise CheckpointError(f"{source}: tensors to fuse have mismatched shapes: {shapes}")
    return torch.cat([state[n] for n in names], dim=0)


def state_dict_to_hf(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    out = {}
    for ours, hf_names in tensor_name_map(config).items():
        sizes = _split_sizes(ours, config)
        parts = state[ours].split(sizes, dim=0) if sizes else [state[ours]]
        out.update({h: p.contiguous() for h, p in zip(hf_names, parts)})
    return out


# ---- files -----------------------------------------------------------------------------------
def load_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of an HF checkpoint directory: safetensors or pytorch_model.bin, sharded or not."""
    for index_name, loader in (("model.safetensors.index.json", load_safetensors),
                               ("pytorch_model.bin.index.json", load_torch_weights)):
        index = directory / index_name
        if index.is_file():
            data = read_json(index)
            weight_map = data.get("weight_map", {}) if isinstance(data, dict) else None
            # shard files lie beside the index: "/" or "../x" would read outside the checkpoint
            if not isinstance(weight_map, dict) or not all(isinstance(f, str) and f.isprintable() and f
                                                           and Path(f).name == f for f in weight_map.values()):
                raise CheckpointError(f"{index}: weight_map is not a mapping of tensor names to file names")
            shards = sorted(set(weight_map.values()))
            if not shards:
                raise CheckpointError(f"{index}: weight_map is empty")
            state = {}
            for shard in shards:
                state.update(loader(directory / shard))
            return state
    if (directory / "model.safetensors").is_file():
        return load_safetensors(directory / "model.safetensors")
    if (directory / "pytorch_model.bin").is_file():
        return load_torch_weights(directory / "pytorch_model.bin")
    raise CheckpointError(f"{directory}: no model.safetensors, pytorch_model.bin or shard index found")


def save_hf(model: Transformer, directory: str | Path, tokenizer: Tokenizer | None = None) -> Path:
    """Write a directory that `transformers.AutoModelForCausalLM.from_pretrained` loads offline."""
    with atomic_directory(directory) as tmp:
        config = model.config
        if tokenizer is not None:
            config = config.with_special_ids(tokenizer.bos_id, tokenizer.eos_id)
        save_file(state_dict_to_hf(cpu_state(model), config), tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(config_to_hf(config), indent=2) + "\n")
        generation = {"bos_token_id": config.bos_id, "eos_token_id": config.eos_id}
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save(tmp)
    return Path(directory)
