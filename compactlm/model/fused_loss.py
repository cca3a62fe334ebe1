"""`linear_cross_entropy`: the output head and the cross-entropy loss in one pass over row chunks, so
the [tokens, vocab] float32 logits never exist for the whole batch. For a small model with a 32k
vocabulary those logits (and log-softmax's saved copy for backward) are most of the memory traffic
of a training step. The gradients of the head are computed chunk by chunk in the forward pass, as
in Liger-Kernel's fused linear cross-entropy, and handed to autograd at backward time.

Targets equal to IGNORE_INDEX (-100, as in torch and transformers) are not scored: the loss is the
mean over the others (0 when there are none, so a batch without a scored token is a no-op step).
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (hidden @ weight.t()).float()


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size: int):
        dtype = hidden.dtype
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        n = scored_count(targets)
        for start in range(0, hidden.shape[0], chunk_size):
            h, t = hidden[start:start + chunk_size], targets[start:start + chunk_size]
            scored = (t != IGNORE_INDEX)[:, None]
            t = t.clamp(min=0)[:, None]
            logits = _chunk_logits(h, weight)
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)
            total += ((lse - logits.gather(1, t)) * scored).sum()
            # d(mean loss)/d(logits) = (softmax - one_hot) / n on scored rows, reusing the logits' memory.
            grad = logits.sub_(lse).exp_()
            grad.scatter_add_(1, t, torch.full_like(t, -1, dtype=grad.dtype))
            grad = grad.mul_(scored).div_(n).to(dtype)
            grad_hidden[start:start + chunk_size] = grad @ weight
            grad_weight += (grad.t() @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return total / n

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_output, grad_weight * grad_output, None, None


def scored_count(targets: torch.Tensor) -> torch.Tensor:
    """The number of targets that count, at least 1 (a tensor: no host synchronisation)."""
    return (targets != IGNORE_INDEX).sum().clamp(min=1)


def loss_chunk_rows(device_type: str) -> int:
    """Rows per chunk of the fused head + loss. CPU: 256, so each chunk's logits stay in cache; GPU:
    fewer, larger chunks, fewer kernel launches."""
    return 256 if device_type == "cpu" else 4096


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_size: int = 1024) -> torch.Tensor:
    """mean(cross_entropy(hidden @ weight.T, targets)) for hidden [N, d], weight [V, d], targets [N].

    Logits are computed in the autocast dtype when autocast is on (as nn.Linear would) and reduced
    in float32; the weight's gradient is accumulated in float32.
    """
    dtype = _compute_dtype(hidden)
    with torch.autocast(hidden.device.type, enabled=False):
        h, w = hidden.to(dtype), weight.to(dtype)
        if not torch.is_grad_enabled() or not (h.requires_grad or w.requires_grad):
            total = sum(torch.nn.functional.cross_entropy(_chunk_logits(h[s:s + chunk_size], w),
                                                          targets[s:s + chunk_size], reduction="sum",
                                                          ignore_index=IGNORE_INDEX)
                        for s in range(0, h.shape[0], chunk_size))
            return total / scored_count(targets)
        return _LinearCrossEntropy.apply(h, w, targets, chunk_size)
