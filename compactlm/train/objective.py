"""What a run learns from: its data stream and its loss. The trainer's loop, checkpoints, resume and
metrics are the same for every objective; pretraining is one (here), SFT and DPO are others
(compactlm.finetune.objectives).

An objective's stream is a pure function of the global sample index, so a checkpoint that records
the index resumes it exactly: `batches(micro_batch, start, rank, world_size)` yields rank `rank`'s
micro-batches of samples start + rank, start + rank + world_size, ...; `state(index)` is what a
checkpoint records and `check_state` reads it back.
"""

from __future__ import annotations

import torch

from compactlm.config.train import TrainConfig
from compactlm.data.mixture import Mixture, batches
from compactlm.errors import ConfigError
from compactlm.model.transformer import lm_loss
from compactlm.train.validate import Validator


def to_device(batch, device: torch.device):
    """A batch (a tensor, or a dict of tensors) on the device."""
    if isinstance(batch, dict):
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    return batch.to(device, non_blocking=True)


class Pretraining:
    """Next-token prediction on the deterministic mixture of prepared datasets (compactlm.data.mixture)."""

    def __init__(self, config: TrainConfig, tokenizer, eos_id: int | None, fused: bool):
        data = config.data
        if data.document_mask and eos_id is None:
            raise ConfigError("data.document_mask: the tokenizer has no EOS token to find documents by")
        # How lm_loss runs, for training and validation alike: fused head, and documents kept apart.
        self.loss_options = dict(fused=fused, document_eos=eos_id if data.document_mask else None,
                                 restart_positions=data.document_positions == "restart")
        self.tokenizer, self.num_workers = tokenizer, data.num_workers
        self.mixture = Mixture(data.datasets, data.seq_len, data.seed, data.val_fraction, tokenizer_hash=tokenizer.hash)

    def batches(self, micro_batch: int, start: int, rank: int, world_size: int):
        return batches(self.mixture, micro_batch, start=start, rank=rank, world_size=world_size,
                       num_workers=self.num_workers)

    def loss(self, model: torch.nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return lm_loss(model, batch, **self.loss_options), {}

    def validator(self, samples: int, batch_size: int, device, amp_dtype) -> Validator:
        blocks = torch.from_numpy(self.mixture.val_samples(samples))
        return Validator.for_blocks(blocks, self.tokenizer, batch_size, device, amp_dtype, **self.loss_options)

    def state(self, next_index: int) -> dict:
        return self.mixture.state(next_index)

    def check_state(self, state: dict, where: str) -> int:
        return self.mixture.check_state(state, where)
