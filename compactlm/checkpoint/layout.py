"""Where everything of a checkpoint lives: the one owner of file names and the "complete" rule.

    RUN_DIR/
      config.yaml  metrics.jsonl  tensorboard/  eval/ (compactlm eval --run)
      checkpoints/
        step-00000180/            a complete checkpoint (renamed into place once fully written)
          config.json             ModelConfig ("format": "compactlm")
          model.safetensors       full format; or dcp/ (torch.distributed.checkpoint) when sharded
          tokenizer.json | tokenizer.model, tokenizer_config.json
          train_state.pt          step, tokens seen, data position, RNG (+ optimizer, full format)
          train_config.yaml       the run's config
        .step-00000360.tmp...     a write in progress or killed: ignored, removed on resume

A checkpoint is complete when its directory has its final name and holds train_state.pt; every
reader (resume, evaluation over a run, the ladder) asks this module which ones there are.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from compactlm.config.model import CONFIG_FILE
from compactlm.errors import CheckpointError

CHECKPOINTS_DIR = "checkpoints"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
CONFIG_COPY = "train_config.yaml"
DCP_DIR = "dcp"
METRICS_FILE = "metrics.jsonl"
RUN_CONFIG = "config.yaml"
TENSORBOARD_DIR = "tensorboard"
EVAL_DIR = "eval"
GGUF_SUFFIX = ".gguf"  # a llama.cpp model file stands in for a checkpoint directory wherever a model is read
_STEP_DIR = re.compile(r"step-(\d{8})")

__all__ = ["CHECKPOINTS_DIR", "CONFIG_COPY", "CONFIG_FILE", "DCP_DIR", "EVAL_DIR", "GGUF_SUFFIX", "METRICS_FILE", "RUN_CONFIG",
           "STATE_FILE", "TENSORBOARD_DIR", "WEIGHTS_FILE", "checkpoint_dir", "complete_checkpoints", "is_complete", "is_sharded",
           "latest_checkpoint", "remove_leftovers", "require_checkpoint", "step_of", "temporary_dir"]


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / f"step-{step:08d}"


def temporary_dir(checkpoint: Path) -> Path:
    """The fixed temporary name of a sharded checkpoint that several ranks fill."""
    return checkpoint.with_name(f".{checkpoint.name}.tmp")


def step_of(checkpoint: str | Path) -> int:
    match = _STEP_DIR.fullmatch(Path(checkpoint).name)
    if not match:
        raise ValueError(f"{checkpoint}: not a step-XXXXXXXX checkpoint directory")
    return int(match[1])


def is_complete(checkpoint: Path) -> bool:
    return _STEP_DIR.fullmatch(checkpoint.name) is not None and (checkpoint / STATE_FILE).is_file()


def is_sharded(checkpoint: str | Path) -> bool:
    return (Path(checkpoint) / DCP_DIR / ".metadata").is_file()


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """The complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if is_complete(p)), key=step_of)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def remove_leftovers(run_dir: str | Path) -> None:
    """Temporary directories of checkpoint writes killed before their rename."""
    for leftover in (Path(run_dir) / CHECKPOINTS_DIR).glob(".step-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def require_checkpoint(path: str | Path) -> Path:
    """`path` if it is a checkpoint directory (compactlm or Hugging Face) or a GGUF file, else one line saying
    what to give."""
    path = Path(path)
    if path.is_dir() and (path / CONFIG_FILE).is_file() or path.is_file() and path.suffix == GGUF_SUFFIX:
        return path
    hint = "give a checkpoint directory such as RUN_DIR/checkpoints/step-XXXXXXXX"
    if path.is_dir() and (path / CHECKPOINTS_DIR).is_dir():
        latest = latest_checkpoint(path)
        hint = f"this is a run directory; its newest checkpoint is {latest}" if latest else \
            "this run directory has no complete checkpoint yet"
    problem = ("no such checkpoint directory" if not path.exists() else
               "not a checkpoint directory" if not path.is_dir() else f"not a checkpoint (no {CONFIG_FILE})")
    raise CheckpointError(f"{path}: {problem}; {hint}")
