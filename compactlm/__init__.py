"""compactlm: pretrain compact Llama-architecture language models the TinyLlama way.

The public names below are imported on first use, so that light entry points (data preparation
workers, the CLI's --help) do not pay for importing torch.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "build_model": "compactlm.checkpoint.model", "from_pretrained": "compactlm.checkpoint.model",
    "save_checkpoint": "compactlm.checkpoint.model", "PRESETS": "compactlm.config.model",
    "ModelConfig": "compactlm.config.model", "get_preset": "compactlm.config.model",
    "CompactlmError": "compactlm.errors", "Transformer": "compactlm.model.transformer",
    "Tokenizer": "compactlm.tokenizer.tokenizer", "load_tokenizer": "compactlm.tokenizer.tokenizer",
    "generate": "compactlm.model.generate",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'compactlm' has no attribute {name!r}")
