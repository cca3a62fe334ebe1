"""A ladder point: one training run of the study, what it trains and what it costs."""

from __future__ import annotations

import hashlib
import json
import typing
from dataclasses import dataclass, field

from compactlm.config.loader import from_dict
from compactlm.config.train import TrainConfig, result_defining


@dataclass
class Point:
    name: str
    size: str  # the size's label (ablations: the knob value's label)
    n_params: int  # non-embedding parameters: the N of the fits
    total_params: int
    flops_per_token: float  # training FLOPs per token, model.flops_per_token(seq_len)
    tokens: int  # D: tokens trained (steps x global batch x seq_len)
    steps: int
    seq_len: int
    budget: float | None = None  # isoflop: the compute budget this point spends
    depends_on: str | None = None  # wsd: the size's longest run, whose stable phase this point branches from
    branch_step: int | None = None  # wsd: the step it branches at (trained: only the steps after it)
    value: typing.Any = None  # ablation: the knob's value
    seed: int | None = None
    train_config: dict = field(default_factory=dict, repr=False)  # the resolved TrainConfig, as a dict

    def flops(self, measure: str = "model") -> float:
        """Training compute C: flops_per_token x D (model) or 6 N D (6nd)."""
        return self.flops_per_token * self.tokens if measure == "model" else 6.0 * self.n_params * self.tokens

    @property
    def spec_hash(self) -> str:
        """What the point trains (the config keys that can change its result): a finished point must match it."""
        cfg = result_defining(from_dict(TrainConfig, self.train_config, self.name))
        return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]
