"""SFT and DPO as objectives of the one trainer (compactlm.train.objective explains the interface).

Both draw fixed examples in an order that is a pure function of the sample index (a seeded
permutation per epoch), so `--resume` continues them exactly.

- SFT: rows of packed conversations; cross-entropy on the assistant's tokens only, attention and
  RoPE positions restarted per conversation (`segment_layout`), so a packed conversation is scored as
  if it were alone.
- DPO: pairs (chosen, rejected) right-padded into one batch; the reference model's sequence
  log-probs are computed once, before training, and cached in the run directory.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from compactlm.data.mixture import rank_indices
from compactlm.errors import CompactlmError
from compactlm.finetune.data import Encoded, Packed
from compactlm.finetune.dpo import dpo_loss, sequence_logps
from compactlm.model.fused_loss import IGNORE_INDEX
from compactlm.model.transformer import segment_layout
from compactlm.train.objective import to_device
from compactlm.train.runtime import autocast
from compactlm.train.validate import Validator


class Examples:
    """N fixed examples drawn epoch by epoch, each epoch in its own seeded order."""

    def __init__(self, n: int, seed: int, data_hash: str):
        self.n, self.seed, self.hash = n, seed, data_hash
        self._epoch, self._order = -1, None

    def example(self, index: int) -> int:
        epoch = index // self.n
        if epoch != self._epoch:
            self._epoch, self._order = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return int(self._order[index % self.n])

    def indices(self, micro_batch: int, start: int, rank: int, world_size: int):
        """Rank `rank`'s micro-batches of example indices, from global sample `start` on, forever: the global
        samples are split over ranks as pretraining's mixture splits them (data.mixture.rank_indices)."""
        for batch in itertools.count():
            yield [self.example(int(i)) for i in rank_indices(start, batch, micro_batch, rank, world_size)]

    def state(self, next_index: int) -> dict:
        return {"next_index": next_index, "examples": self.n, "seed": self.seed, "hash": self.hash}

    def check_state(self, state: dict, where: str) -> int:
        mine = self.state(state.get("next_index", 0))
        wrong = [k for k in ("examples", "seed", "hash") if state.get(k) != mine[k]]
        if wrong:
            raise CompactlmError(f"{where}: the fine-tuning data differ from the checkpoint's ({', '.join(wrong)}); "
                                 "resume with the same data files, template and data.seq_len")
        return int(state["next_index"])


class _FixedExamples:
    """What SFT and DPO share: their data position is an index into `self.examples`."""

    examples: Examples

    def state(self, next_index: int) -> dict:
        return self.examples.state(next_index)

    def check_state(self, state: dict, where: str) -> int:
        return self.examples.check_state(state, where)


class SFT(_FixedExamples):
    def __init__(self, train: Packed, val: Packed | None, seed: int, data_hash: str, fused: bool):
        self.train, self.val, self.fused = train, val, fused
        self.examples = Examples(len(train.tokens), seed, data_hash)

    @staticmethod
    def _batch(packed: Packed, rows) -> dict:
        return {"tokens": torch.from_numpy(packed.tokens[rows]), "mask": torch.from_numpy(packed.mask[rows]),
                "segments": torch.from_numpy(packed.segments[rows])}

    def batches(self, micro_batch: int, start: int, rank: int, world_size: int):
        for rows in self.examples.indices(micro_batch, start, rank, world_size):
            yield self._batch(self.train, rows)

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict]:
        tokens = batch["tokens"]
        targets = tokens[:, 1:].masked_fill(~batch["mask"][:, 1:], IGNORE_INDEX)
        attn_mask, positions = segment_layout(batch["segments"][:, :-1], restart_positions=True)
        return model(tokens[:, :-1], targets, fused_loss=self.fused, attn_mask=attn_mask,
                     position_ids=positions), {}

    def validator(self, samples: int, batch_size: int, device, amp_dtype) -> Validator:
        """All held-out rows (`samples` is for pretraining's blocks), averaged per assistant token."""
        if self.val is None:
            return Validator([], None, device, amp_dtype)
        chunks = [self._batch(self.val, list(range(s, min(s + batch_size, len(self.val.tokens)))))
                  for s in range(0, len(self.val.tokens), batch_size)]

        def score(model, chunk):
            chunk = to_device(chunk, device)
            return self.loss(model, chunk)[0], float(chunk["mask"][:, 1:].sum()), {}

        return Validator(chunks, score, device, amp_dtype)


def pad_examples(examples: list[tuple[np.ndarray, np.ndarray]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded tokens and masks [len(examples), longest]; causal attention keeps padding out."""
    longest = max(len(ids) for ids, _ in examples)
    tokens = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), longest), dtype=torch.bool)
    for i, (ids, m) in enumerate(examples):
        tokens[i, :len(ids)], mask[i, :len(ids)] = torch.from_numpy(ids), torch.from_numpy(m)
    return tokens, mask


class DPO(_FixedExamples):
    """Pairs are examples 2i (chosen) and 2i + 1 (rejected) of an Encoded; `reference` [pairs, 2]."""

    def __init__(self, train: Encoded, val: Encoded | None, reference: torch.Tensor,
                 val_reference: torch.Tensor | None, beta: float, seed: int, pad_id: int):
        self.train, self.val, self.beta, self.pad_id = train, val, beta, pad_id
        self.reference, self.val_reference = reference, val_reference
        self.examples = Examples(len(train.examples) // 2, seed, train.hash)

    def _batch(self, encoded: Encoded, reference: torch.Tensor, pairs) -> dict:
        chosen = [encoded.examples[2 * p] for p in pairs]
        rejected = [encoded.examples[2 * p + 1] for p in pairs]
        tokens, mask = pad_examples(chosen + rejected, self.pad_id)
        return {"tokens": tokens, "mask": mask, "reference": reference[pairs]}

    def batches(self, micro_batch: int, start: int, rank: int, world_size: int):
        for pairs in self.examples.indices(micro_batch, start, rank, world_size):
            yield self._batch(self.train, self.reference, pairs)

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict]:
        chosen, rejected = sequence_logps(model, batch["tokens"], batch["mask"]).chunk(2)
        stats = dpo_loss(chosen, rejected, batch["reference"][:, 0], batch["reference"][:, 1], self.beta)
        return stats.loss, {"reward_chosen": stats.chosen_rewards.mean(),
                            "reward_rejected": stats.rejected_rewards.mean(),
                            "reward_margin": stats.margins.mean(), "reward_accuracy": stats.accuracies.mean()}

    def validator(self, samples: int, batch_size: int, device, amp_dtype) -> Validator:
        if self.val is None:
            return Validator([], None, device, amp_dtype)
        n = len(self.val.examples) // 2
        chunks = [self._batch(self.val, self.val_reference, list(range(s, min(s + batch_size, n))))
                  for s in range(0, n, batch_size)]

        def score(model, chunk):
            chunk = to_device(chunk, device)
            loss, extras = self.loss(model, chunk)
            return loss, float(len(chunk["reference"])), extras

        return Validator(chunks, score, device, amp_dtype)


@torch.no_grad()
def reference_logps(model, encoded: Encoded, batch_size: int, pad_id: int, device, amp_dtype) -> torch.Tensor:
    """[pairs, 2] summed log-probs of each pair's chosen and rejected response under `model` (eval mode)."""
    was_training = model.training
    model.eval()
    out = []
    examples = encoded.examples
    for start in range(0, len(examples), 2 * batch_size):
        tokens, mask = pad_examples(examples[start:start + 2 * batch_size], pad_id)
        with autocast(device, amp_dtype):
            out.append(sequence_logps(model, tokens.to(device), mask.to(device)).float().cpu())
    model.train(was_training)
    return torch.cat(out).view(-1, 2)
