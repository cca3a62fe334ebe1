"""AdamW with TinyLlama's parameter groups, and the learning-rate schedule.

The learning rate is a function of the *optimizer* step, never of the micro-batch (TinyLlama's issue
172). Two schedules, both after a linear warm-up:

- cosine: from lr down to min_lr over the schedule's length (TinyLlama's);
- wsd (warm-up, stable, decay; Hu et al. 2024 "MiniCPM", Hägele et al. 2024 "Scaling Laws and
  Compute-Optimal Training Beyond Fixed Training Durations"): lr until the last `decay_fraction` of
  the run, then down to min_lr, reached at the last step, along a linear, cosine or 1-sqrt curve.
  Until its decay starts, a WSD run does not depend on its length, so one long run's checkpoints
  branch into cooldowns to every shorter budget (`train.init_from`).
"""

from __future__ import annotations

import math

import torch

from compactlm.config.train import OptimSection

DECAY_CURVES = {"linear": lambda p: 1 - p, "cosine": lambda p: 0.5 * (1 + math.cos(math.pi * p)),
                "1-sqrt": lambda p: 1 - math.sqrt(p)}


def lr_at(step: int, optim: OptimSection, decay_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based) of a schedule `decay_steps` long."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.schedule == "wsd":
        start = wsd_decay_start(optim, decay_steps)
        if step < start:
            return optim.lr
        progress = min(1.0, (step - start + 1) / (decay_steps - start))
        return optim.min_lr + DECAY_CURVES[optim.decay_shape](progress) * (optim.lr - optim.min_lr)
    if step >= decay_steps:
        return optim.min_lr
    progress = (step - optim.warmup_steps) / max(1, decay_steps - optim.warmup_steps)
    return optim.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (optim.lr - optim.min_lr)


def wsd_decay_start(optim: OptimSection, decay_steps: int) -> int:
    """The first step of a WSD run's decay: its last decay_fraction of steps (at least one), never
    inside the warm-up."""
    return max(optim.warmup_steps, decay_steps - max(1, round(optim.decay_fraction * decay_steps)))


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
