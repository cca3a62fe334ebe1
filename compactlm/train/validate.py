"""Held-out loss, perplexity and bits per byte: the one validator that training, fine-tuning and the
ladder share.

A validator scores fixed held-out chunks with a run's own loss under its precision, and averages by
the weight each chunk carries (sequences for pretraining, scored tokens for SFT, pairs for DPO).
Pretraining's chunks are a mixture's validation blocks (`Validator.for_blocks`); their bits per byte
divide the loss in bits by the UTF-8 bytes the target tokens decode to, so models with different
tokenizers compare.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from compactlm.model.transformer import lm_loss
from compactlm.train.runtime import autocast

# score(model, chunk) -> (mean loss over the chunk, the chunk's weight, {name: mean of a further metric})
Score = Callable[[torch.nn.Module, object], tuple[torch.Tensor, float, dict]]


class Validator:
    def __init__(self, chunks: list, score: Score, device: torch.device, amp_dtype: torch.dtype | None = None,
                 bytes_per_token: Callable[[], float] | None = None):
        self.chunks, self.score, self.device, self.amp_dtype = chunks, score, device, amp_dtype
        self._bytes_per_token_fn, self._bytes_per_token = bytes_per_token, None
        self.samples: torch.Tensor | None = None  # pretraining's blocks (for_blocks)

    @classmethod
    def for_blocks(cls, samples: torch.Tensor, tokenizer, batch_size: int, device: torch.device,
                   amp_dtype: torch.dtype | None = None, fused: bool = True, document_eos: int | None = None,
                   restart_positions: bool = False) -> "Validator":
        """Pretraining's validator: blocks [N, seq_len + 1] scored by `lm_loss` with the options training
        uses (fused head, document masking)."""
        options = dict(fused=fused, document_eos=document_eos, restart_positions=restart_positions)

        def score(model, chunk):
            return lm_loss(model, chunk.to(device), **options), len(chunk), {}

        def bytes_per_token():
            targets = samples[:, 1:]
            return sum(len(tokenizer.decode(row.tolist()).encode("utf-8")) for row in targets) / targets.numel()

        validator = cls(list(samples.split(batch_size)), score, device, amp_dtype, bytes_per_token)
        validator.samples = samples
        return validator

    @property
    def bytes_per_token(self) -> float | None:
        if self._bytes_per_token is None and self._bytes_per_token_fn is not None:
            self._bytes_per_token = self._bytes_per_token_fn()  # counted once
        return self._bytes_per_token

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> dict:
        """{"val_loss", "val_ppl", "val_<metric>"..., and for blocks "val_bpb", "val_blocks", "val_tokens"};
        {} without held-out data."""
        if not self.chunks:
            return {}
        was_training = model.training
        model.eval()
        total, weight, extras = 0.0, 0.0, {}
        for chunk in self.chunks:
            with autocast(self.device, self.amp_dtype):
                loss, w, more = self.score(model, chunk)
            total += loss.item() * w
            weight += w
            for name, value in more.items():
                extras[name] = extras.get(name, 0.0) + float(value) * w
        model.train(was_training)
        loss = total / weight
        result = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50)),
                  **{f"val_{name}": value / weight for name, value in extras.items()}}
        if self.samples is not None:
            result.update(val_bpb=loss / math.log(2) / self.bytes_per_token, val_blocks=len(self.samples),
                          val_tokens=int(self.samples[:, 1:].numel()))
        return result
