"""LoRA (Hu et al. 2021) on compactlm's linear layers, through `peft`.

peft adapts any nn.Linear by name, so compactlm's fused projections are adapted whole: `qkv` gets one
low-rank update for the concatenated query, key and value projection (as peft does for GPT-2's fused
`c_attn`), `gate_up` one for SwiGLU's two input projections. The base weights are frozen; B starts at
zero, so a fresh adapter leaves the model's outputs unchanged.

A LoRA checkpoint holds the adapters (`adapter_model.safetensors`, `adapter_config.json`) and, beside
them, the base with the adapters merged in as `model.safetensors`: every tool that reads a compactlm
checkpoint (generate, chat, eval, convert to HF or GGUF) reads a fine-tuned model as it reads any.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from compactlm.config.finetune import LoraSection
from compactlm.errors import CheckpointError, ConfigError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_A, _B, _BASE = ".lora_A.default.weight", ".lora_B.default.weight", ".base_layer.weight"


def add_lora(module: torch.nn.Module, lora: LoraSection) -> torch.nn.Module:
    """Inject adapters into the targeted linear layers (in place); only the adapters stay trainable."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ConfigError("finetune.adapter: lora needs peft (pip install 'compactlm[finetune]')") from None

    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.targets), bias="none")
    return inject_adapter_in_model(config, module)


def adapter_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter tensors of a LoRA model's state dict."""
    return {k: v for k, v in state.items() if k.endswith((_A, _B))}


def merged_state(state: dict[str, torch.Tensor], lora: LoraSection) -> dict[str, torch.Tensor]:
    """A LoRA model's state dict as the plain model's: W + (alpha / rank) B A for each adapted layer."""
    scale = lora.alpha / lora.rank
    merged = {}
    for name, tensor in state.items():
        if name.endswith((_A, _B)):
            continue
        if name.endswith(_BASE):
            layer = name[:-len(_BASE)]
            a, b = state[layer + _A].float(), state[layer + _B].float()
            tensor = (tensor.float() + scale * (b @ a)).to(tensor.dtype)
            name = layer + ".weight"
        merged[name] = tensor.contiguous()
    return merged


def write_adapter_config(directory: Path, lora: LoraSection, base: str) -> None:
    config = {"peft_type": "LORA", "r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout,
              "target_modules": list(lora.targets), "bias": "none", "base_model_name_or_path": base}
    (Path(directory) / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def load_adapters(module: torch.nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """The adapter tensors of a LoRA checkpoint, checked against the module's adapters."""
    from compactlm.checkpoint.io import load_safetensors

    state = load_safetensors(Path(path) / ADAPTER_WEIGHTS)
    expected = {k: tuple(v.shape) for k, v in adapter_state(module.state_dict()).items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if found != expected:
        raise CheckpointError(f"{Path(path) / ADAPTER_WEIGHTS}: adapters do not match this run's "
                              "finetune.lora settings (rank, targets)")
    return state
