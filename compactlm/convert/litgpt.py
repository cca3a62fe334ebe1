"""Import lit-gpt / TinyLlama training checkpoints.

Two fused-QKV layouts exist in the wild, told apart by the tensor's name:
- `transformer.h.N.attn.attn.weight` (lit-gpt as TinyLlama used it): rows grouped per KV head,
  each group [q_per_kv query heads | its key head | its value head];
- `transformer.h.N.attn.qkv.weight` (litgpt >= 0.5): [all query heads | all key heads | all value heads],
  which is compactlm's own layout.
TinyLlama's `iter-*.pth` training files wrap the weights as {"model": ..., "optimizer": ...}; bare
`lit_model.pth` state dicts are accepted too.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from compactlm.checkpoint.io import load_torch_weights
from compactlm.checkpoint.model import build_model, finish_loading, load_weights
from compactlm.config.model import ModelConfig, get_preset
from compactlm.errors import CheckpointError, ConfigError, short_list

_LAYER_MAP = {
    "norm_1.weight": "attn_norm.weight",
    "attn.proj.weight": "attn.proj.weight",
    "norm_2.weight": "mlp_norm.weight",
    "mlp.proj.weight": "mlp.down.weight",
}


def ungroup_qkv(weight: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """[per KV group: q... | k | v] rows -> [all q | all k | all v] rows."""
    q_per_kv, hd = config.n_head // config.n_kv_head, config.head_dim
    groups = weight.view(config.n_kv_head, q_per_kv + 2, hd, -1)
    q = groups[:, :q_per_kv].reshape(config.n_head * hd, -1)
    k = groups[:, q_per_kv].reshape(config.n_kv_head * hd, -1)
    v = groups[:, q_per_kv + 1].reshape(config.n_kv_head * hd, -1)
    return torch.cat([q, k, v])


def config_from_litgpt(path: Path) -> ModelConfig:
    """Read lit-gpt's `lit_config.json` or litgpt's `model_config.yaml`."""
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else _yaml(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read lit-gpt config ({exc})") from None
    try:
        if data.get("mlp_class_name", "LLaMAMLP") != "LLaMAMLP" or data.get("bias"):
            raise ConfigError(f"{path}: only Llama-style models (LLaMAMLP, no bias) can be imported")
        n_head = data["n_head"]
        return ModelConfig(
            n_layer=data["n_layer"], d_model=data["n_embd"], n_head=n_head,
            n_kv_head=data.get("n_query_groups") or n_head, ffn_dim=data["intermediate_size"],
            vocab_size=data.get("padded_vocab_size") or data["vocab_size"], max_seq_len=data.get("block_size", 2048),
            head_dim=data.get("head_size") or 0, norm_eps=data.get("norm_eps", 1e-5),
            rope_base=float(data.get("rope_base", 10000)), name=data.get("name", "litgpt"),
        )
    except KeyError as exc:
        raise ConfigError(f"{path}: missing field {exc.args[0]!r}") from None


def _yaml(text: str) -> dict:
    import yaml

    return yaml.safe_load(text)


def state_dict_from_litgpt(lit: dict[str, torch.Tensor], config: ModelConfig, source="checkpoint") -> dict:
    out, used = {}, set()

    def take(lit_name: str, ours: str, transform=None):
        if lit_name in lit:
            out[ours] = transform(lit[lit_name]) if transform else lit[lit_name]
            used.add(lit_name)

    take("transformer.wte.weight", "embed.weight")
    take("transformer.ln_f.weight", "norm.weight")
    take("lm_head.weight", "lm_head.weight")
    for i in range(config.n_layer):
        pre = f"transformer.h.{i}."
        for lit_name, ours in _LAYER_MAP.items():
            take(pre + lit_name, f"layers.{i}.{ours}")
        take(pre + "attn.attn.weight", f"layers.{i}.attn.qkv.weight", lambda w: ungroup_qkv(w, config))
        take(pre + "attn.qkv.weight", f"layers.{i}.attn.qkv.weight")
        if pre + "mlp.fc_1.weight" in lit and pre + "mlp.fc_2.weight" in lit:
            out[f"layers.{i}.mlp.gate_up.weight"] = torch.cat([lit[pre + "mlp.fc_1.weight"], lit[pre + "mlp.fc_2.weight"]])
            used.update({pre + "mlp.fc_1.weight", pre + "mlp.fc_2.weight"})
    if config.tie_embeddings and "lm_head.weight" in out:
        out.pop("lm_head.weight")
    unexpected = sorted(set(lit) - used)
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensors for this config: {short_list(unexpected)}")
    return out  # missing and mis-shaped tensors are reported by load_weights


def load_litgpt(checkpoint: str | Path, config: ModelConfig | str | Path = "tinyllama-1.1b"):
    """A compactlm model from a lit-gpt checkpoint file and its config (a file or a preset name)."""
    checkpoint = Path(checkpoint)
    if isinstance(config, (str, Path)) and Path(config).is_file():
        config = config_from_litgpt(Path(config))
    elif isinstance(config, str):
        config = get_preset(config)
    raw = load_torch_weights(checkpoint)
    state = raw.get("model", raw) if isinstance(raw, dict) else raw
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{checkpoint}: no state dict of tensors found (expected a lit-gpt checkpoint)")
    model = build_model(config, device="meta")
    load_weights(model, state_dict_from_litgpt(state, config, checkpoint), checkpoint)
    return finish_loading(model)
