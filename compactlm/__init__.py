"""compactlm: pretrain compact Llama-architecture language models the TinyLlama way.

The public names below are imported on first use, so that light entry points (data preparation
workers, the CLI's --help) do not pay for importing torch.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "build_model": "compactlm.checkpoint", "from_pretrained": "compactlm.checkpoint",
    "save_checkpoint": "compactlm.checkpoint", "PRESETS": "compactlm.config", "ModelConfig": "compactlm.config",
    "get_preset": "compactlm.config", "CompactlmError": "compactlm.errors", "Transformer": "compactlm.model",
    "Tokenizer": "compactlm.tokenizer", "load_tokenizer": "compactlm.tokenizer",
}
__all__ = [*_EXPORTS, "generate"]


def __getattr__(name: str):
    if name == "generate":  # the function, not the module of the same name
        return importlib.import_module("compactlm.generate").generate
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'compactlm' has no attribute {name!r}")
