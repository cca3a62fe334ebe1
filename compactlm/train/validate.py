"""Held-out loss, perplexity and bits per byte: the one validator that training and the ladder share.

The held-out blocks are a mixture's validation region (`Mixture.val_samples`), scored in chunks
under the run's precision. Bits per byte divides the loss in bits by the UTF-8 bytes the target
tokens decode to, so it compares models with different tokenizers.
"""

from __future__ import annotations

import math

import torch

from compactlm.model.transformer import lm_loss
from compactlm.train.runtime import autocast


class Validator:
    """Scores a model on fixed held-out blocks [N, seq_len + 1]; the bytes per token are counted once."""

    def __init__(self, samples: torch.Tensor, tokenizer, batch_size: int, device: torch.device,
                 amp_dtype: torch.dtype | None = None, fused: bool = True, document_eos: int | None = None,
                 restart_positions: bool = False):
        """fused, document_eos, restart_positions: as `lm_loss` takes them, the same as training's."""
        self.samples, self.tokenizer, self.batch_size = samples, tokenizer, batch_size
        self.device, self.amp_dtype = device, amp_dtype
        self.loss_options = dict(fused=fused, document_eos=document_eos, restart_positions=restart_positions)
        self._bytes_per_token: float | None = None

    @property
    def bytes_per_token(self) -> float:
        if self._bytes_per_token is None:
            targets = self.samples[:, 1:]
            n_bytes = sum(len(self.tokenizer.decode(row.tolist()).encode("utf-8")) for row in targets)
            self._bytes_per_token = n_bytes / targets.numel()
        return self._bytes_per_token

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> dict:
        """{"val_loss", "val_ppl", "val_bpb", "val_blocks", "val_tokens"}; {} without held-out blocks."""
        if not len(self.samples):
            return {}
        was_training = model.training
        model.eval()
        total = 0.0
        for chunk in self.samples.split(self.batch_size):
            with autocast(self.device, self.amp_dtype):
                total += lm_loss(model, chunk.to(self.device), **self.loss_options).item() * len(chunk)
        model.train(was_training)
        loss = total / len(self.samples)
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50)),
                "val_bpb": loss / math.log(2) / self.bytes_per_token,
                "val_blocks": len(self.samples), "val_tokens": int(self.samples[:, 1:].numel())}
