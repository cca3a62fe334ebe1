"""Checkpoints: one owner for the layout, safe file I/O, model directories and training state.

- `layout.py`    file and directory names, the "complete checkpoint" rule, listing a run's checkpoints
- `io.py`        atomic directories, safetensors / weights-only loaders, the tensors a checkpoint stores
- `model.py`     build_model, save_checkpoint, from_pretrained (compactlm, Hugging Face, sharded)
- `training.py`  model + optimizer, full or sharded (torch.distributed.checkpoint), train_state.pt

The public names are imported on first use (`compactlm.checkpoint.from_pretrained` imports torch).
"""

import importlib

_EXPORTS = {"build_model": "model", "from_pretrained": "model", "save_checkpoint": "model", "load_weights": "model",
            "finish_loading": "model", "latest_checkpoint": "layout", "complete_checkpoints": "layout"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"compactlm.checkpoint.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'compactlm.checkpoint' has no attribute {name!r}")
