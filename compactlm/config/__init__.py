"""Typed configuration: the YAML loader, the model config and presets, the training config.

- `loader.py`  YAML -> nested dataclasses, `key.sub=value` overrides, one-line errors
- `model.py`   `ModelConfig` (the architecture, its parameter and FLOP counts) and the preset ladder
- `train.py`   `TrainConfig` and `resolve_run`: the one place a run's tokenizer, vocabulary, model
               config, accumulation and step counts are worked out (trainer, planner and ladder call it)

Nothing here imports torch: data-preparation workers and the CLI's argument checks stay light.
"""

from compactlm.config.loader import load_config
from compactlm.config.model import PRESETS, ModelConfig, get_preset

__all__ = ["PRESETS", "ModelConfig", "get_preset", "load_config"]
