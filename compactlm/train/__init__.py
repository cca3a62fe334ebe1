"""Training: the trainer and the components it is built from, each used by everyone who needs it.

- `trainer.py`      `Trainer` / `train()`: setup -> fit -> validate -> checkpoint, exact resume
- `optim.py`        AdamW parameter groups and the learning-rate schedule
- `runtime.py`      device, precision, kernels (compile), peak FLOPs, peak memory
- `distributed.py`  torchrun process groups, FSDP2 / DDP, gradient sync, global-norm clipping
- `metrics.py`      metrics.jsonl: the one writer and reader
- `validate.py`     held-out loss, perplexity, bits per byte (also used by the ladder)
- `plan.py`         `compactlm plan`: memory per device before launching

The public names are imported on first use (the trainer imports torch).
"""

import importlib

_EXPORTS = {"train": "trainer", "Trainer": "trainer", "TrainingError": "trainer", "lr_at": "optim",
            "TrainConfig": "compactlm.config.train", "load_train_config": "compactlm.config.train",
            "resolve_run": "compactlm.config.train"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = _EXPORTS[name]
        return getattr(importlib.import_module(module if "." in module else f"compactlm.train.{module}"), name)
    raise AttributeError(f"module 'compactlm.train' has no attribute {name!r}")
