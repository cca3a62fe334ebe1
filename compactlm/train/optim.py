"""AdamW with TinyLlama's parameter groups, and the learning-rate schedule.

The learning rate is a function of the *optimizer* step (linear warm-up, cosine to min_lr), never
of the micro-batch (TinyLlama's issue 172).
"""

from __future__ import annotations

import math

import torch

from compactlm.config.train import OptimSection


def lr_at(step: int, optim: OptimSection, decay_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up, then cosine to min_lr."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if step >= decay_steps:
        return optim.min_lr
    progress = (step - optim.warmup_steps) / max(1, decay_steps - optim.warmup_steps)
    return optim.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (optim.lr - optim.min_lr)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (projections, embedding, head); none on RMSNorm gains.

    Decaying a norm's gain pulls it towards 0 instead of its neutral 1, which only hurts (nanoGPT,
    OLMo and Llama-recipe reproductions exclude them). TinyLlama's lit-gpt decayed every parameter;
    set `optim.weight_decay` accordingly if you want to reproduce that exactly.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:  # frozen weights (a LoRA base) get no optimizer state
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, optim: OptimSection) -> torch.optim.Optimizer:
    kwargs = dict(lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps)
    try:  # fused kernels on CUDA, and on the CPU in recent PyTorch
        return torch.optim.AdamW(param_groups(model, optim.weight_decay), fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(param_groups(model, optim.weight_decay), **kwargs)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
