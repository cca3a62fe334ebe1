"""Where a run's state comes from when it does not start from scratch: its own newest checkpoint
(`--resume`), or another run's (`train.init_from`: a branch such as a WSD cooldown, or the weights
only, for continued pretraining). A mixin of the Trainer, whose attributes it sets: the model and
optimizer, step, tokens seen, non-finite counters and the RNG; the objective checks the data position.
"""

from __future__ import annotations

from pathlib import Path

import torch

from compactlm.checkpoint import layout
from compactlm.checkpoint.io import safetensors_shapes
from compactlm.checkpoint.model import check_tensors
from compactlm.checkpoint.training import load_training_state, read_train_state
from compactlm.config.model import ModelConfig
from compactlm.errors import CompactlmError
from compactlm.train import metrics as metrics_file
from compactlm.train.distributed import barrier


class TrainingError(CompactlmError):
    pass


class Restoring:
    # ---- resume, and starting from another run --------------------------------------------------
    def _resume(self) -> bool:
        """Continue this run from its newest checkpoint; False when it has none yet."""
        if self.world.is_main:
            layout.remove_leftovers(self.run_dir)  # writes killed before their rename
        barrier(self.world)
        path = layout.latest_checkpoint(self.run_dir)
        if path is None:
            if self.world.is_main:
                metrics_file.truncate_metrics(self.run_dir, 0)  # a start killed before its first checkpoint
            self.console(f"no checkpoint in {self.run_dir / layout.CHECKPOINTS_DIR}: starting from scratch")
            return False
        self._restore(path)
        if self.world.is_main:
            metrics_file.truncate_metrics(self.run_dir, self.step)
        self.console(f"resumed from {path} (step {self.step}, {self.tokens_seen:,} tokens seen"
                     f"{', sharded checkpoint' if layout.is_sharded(path) else ''})")
        return True

    def _init_from(self, path: Path) -> None:
        """train.init_from: another run's checkpoint. Whole (weights, optimizer, step, RNG, data position):
        a branch of that run, e.g. a WSD cooldown to a budget of its own; or weights only: continued
        pretraining, with a fresh optimizer and schedule, on any data."""
        path = layout.require_checkpoint(path)
        if self.config.train.init_weights_only:
            self._check_model_config(path)
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            from compactlm.checkpoint.io import model_state_dict
            from compactlm.checkpoint.model import from_pretrained

            set_model_state_dict(self.model, model_state_dict(from_pretrained(path)),
                                 options=StateDictOptions(full_state_dict=True))
            self.console(f"weights from {path}; optimizer, schedule and data start afresh")
            return
        self._restore(path)
        if self.step >= self.max_steps:
            raise TrainingError(f"train.init_from {path}: its step {self.step} is not before train.max_steps "
                                f"{self.max_steps}")
        self.console(f"branched from {path} at step {self.step} (weights, optimizer, RNG, data position)")

    def _check_model_config(self, path: Path) -> None:
        saved = ModelConfig.load(path)
        if saved != self.model_config:
            diff = [f"{f}: {getattr(saved, f)} -> {getattr(self.model_config, f)}"
                    for f in saved.to_dict() if getattr(saved, f) != getattr(self.model_config, f)]
            raise TrainingError(f"{path}: checkpoint model config differs from this run's ({'; '.join(diff)})")

    def _restore(self, path: Path) -> None:
        """Weights, optimizer, counters, RNG and the data position of a checkpoint, checked against this run."""
        self._check_model_config(path)
        state = read_train_state(path)
        next_index = self.objective.check_state(state["data"], str(path / layout.STATE_FILE))
        # The global data stream depends on global_batch only: any number of ranks continues it.
        self._load_state(path, state)
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.nonfinite_total, self.nonfinite_run = state["nonfinite_total"], state["nonfinite_run"]
        torch.set_rng_state(state["rng_cpu"])
        if self.device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        if next_index != self.step * self.config.train.global_batch:
            raise TrainingError(f"{path}: data index {next_index} does not match step {self.step}")

    def _load_state(self, path: Path, state: dict) -> None:
        """Model and optimizer from a checkpoint of this run."""
        if not layout.is_sharded(path):  # the same one-line tensor report as from_pretrained
            check_tensors(self.module, safetensors_shapes(path / layout.WEIGHTS_FILE), path / layout.WEIGHTS_FILE)
        load_training_state(self.model, self.optimizer, path, state.get("optimizer"), self.model_config.tie_embeddings)

