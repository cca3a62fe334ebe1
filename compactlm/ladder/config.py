"""The ladder config: a base train config, and what to vary around it.

Exactly one of three studies per config:

- grid:     `sizes` x `tokens` (token budgets), every size trained for every budget;
- isoflop:  `sizes` x `budgets` (compute budgets in FLOPs), each budget spent at every size, the token
            count derived as budget / FLOPs-per-token (isoFLOP profiles, Chinchilla's approach 2);
- ablation: `ablation.knob` (any train-config key) over `ablation.values` x `ablation.seeds` at one size
            and one token budget.

Everything else (data, optimizer, batch, precision) comes from `base`, the same for every point; the
warm-up is `warmup_fraction` of each run's steps and the cosine decays over the run's own steps.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

from compactlm.config.loader import load_config
from compactlm.errors import CompactlmError
from compactlm.config.train import ModelSection


class LadderError(CompactlmError):
    pass


# The fields that make a size: a size replaces the base config's, even with "unset" (the preset's own).
SHAPE_FIELDS = ("preset", "n_layer", "d_model", "n_head", "n_kv_head", "ffn_dim")


@dataclass
class SizeSpec(ModelSection):
    """A model size: the train config's `model` section (a preset, optionally reshaped), with a name."""

    name: str = ""  # default: the preset's name, or L<layers>-d<width> when the shape is given

    def shape(self) -> dict:
        """The train config's `model` entries this size sets (other fields only where given)."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k != "name" and (k in SHAPE_FIELDS or v is not None)}

    def label(self) -> str:
        if self.name:
            return self.name
        if self.n_layer is None and self.d_model is None:
            return self.preset
        parts = [f"L{self.n_layer}" if self.n_layer else "", f"d{self.d_model}" if self.d_model else ""]
        return "-".join(p for p in parts if p) or self.preset


@dataclass
class FitSection:
    huber_delta: float = 1e-3  # Huber loss on log-loss residuals (Chinchilla: 1e-3)
    starts: int = 32  # L-BFGS runs, from the best points of Chinchilla's initialisation grid
    bootstrap: int = 200  # refits on resampled points for the confidence intervals (0: none)
    confidence: float = 0.95  # of the bootstrap intervals
    min_steps: int = 0  # points trained for fewer optimizer steps stay in the table but out of the fits
    isoflop_window: int = 0  # approach 2: the parabola through all of a budget's sizes (0) or the k around its lowest loss
    seed: int = 0  # of the bootstrap resampling
    target: str = "tinyllama-1.1b"  # the model the law is extrapolated to (a preset)
    target_vocab: int = 32000  # the target's vocabulary, for its FLOPs per token
    target_seq_len: int = 2048  # the target's context, for its FLOPs per token
    target_tokens: float = 3e12  # what it was trained on (TinyLlama: 3T)
    inference_tokens: float = 1e12  # tokens it generates over its life, for the inference-aware verdict


@dataclass
class AblationSection:
    knob: str = ""  # a train-config key, dotted (optim.lr, model.n_kv_head, data.seq_len), or data.weights
    values: list[typing.Any] = field(default_factory=list)  # the knob's values to compare
    labels: list[str] = field(default_factory=list)  # default: the values as text
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])  # one run per value and seed
    seed_keys: list[str] = field(default_factory=lambda: ["seed", "data.seed"])  # set to each seed in turn
    size: SizeSpec | None = None  # default: the base config's model
    tokens: float = 0.0  # tokens each ablation run trains on


@dataclass
class HoldoutSpec:
    """A run the law predicts before it is trained (Gadre et al. 2024): e.g. a size larger than any fitted
    at more compute, or a small size trained far past its compute-optimal tokens."""

    name: str = ""  # the point is holdout-<name>
    size: SizeSpec = field(default_factory=SizeSpec)  # a preset or shape, as in sizes
    tokens: float = 0.0  # tokens it trains on
    lr_from: str = ""  # with lr_sweep: the size whose chosen learning rate it uses (default: the largest size)


@dataclass
class LadderConfig:
    base: str = "configs/demo.yaml"  # the train config every point starts from
    overrides: list[str] = field(default_factory=list)  # KEY=VALUE applied to the base for every point
    out_dir: str = "out/ladder"  # points/<name>/ run directories, ladder.md, ladder.json, plots
    sizes: list[SizeSpec] = field(default_factory=list)  # model sizes: presets or shapes (see SizeSpec)
    tokens: list[float] = field(default_factory=list)  # grid study: token budgets
    budgets: list[float] = field(default_factory=list)  # isoflop study: compute budgets (FLOPs)
    flops: str = "model"  # model: C = flops_per_token(seq_len) x D (head and attention included); 6nd: C = 6 N D
    tokens_per_param: list[float] = field(default_factory=list)  # isoflop: keep points with lo <= D/N <= hi
    min_steps: int = 20  # fewer optimizer steps: refused (grid, ablation) or dropped (isoflop)
    # cosine: a run per point, each decaying over its own steps; wsd: per size one run to the largest
    # budget (optim.schedule wsd), the smaller budgets cooldown branches of its stable phase (train.init_from)
    schedule: str = "cosine"
    # wsd: sizes whose WSD run is trained again with a cosine decay, same budget (reported, not fitted)
    cosine_baseline: list[str] = field(default_factory=list)
    warmup_fraction: float = 0.05  # warm-up as a share of each run's steps (wsd: of each size's shortest run)
    # peak learning rates tried for every size in short runs first; each size's points then use its best
    # (optim.min_lr keeps its ratio to optim.lr). Empty: the base config's lr for every size
    lr_sweep: list[float] = field(default_factory=list)
    lr_sweep_tokens: float = 0.0  # tokens of each sweep run (0: the smallest token budget of the study)
    checkpoint_every: int = 100  # optimizer steps; a killed point resumes from here
    eval_samples: int = 512  # validation blocks for each point's final loss (the same blocks for all)
    jobs: int = 1  # points trained at once, in separate processes
    threads: int = 0  # torch threads per job (0: CPU cores / jobs)
    fit: FitSection = field(default_factory=FitSection)  # the scaling-law fit and its target
    ablation: AblationSection | None = None  # an ablation study instead of sizes x tokens or budgets
    # runs predicted by the law fitted on the study's points, the prediction written (predictions.json) before
    # they are trained and never rewritten after
    holdout: list[HoldoutSpec] = field(default_factory=list)

    @property
    def mode(self) -> str:
        return "ablation" if self.ablation is not None else "isoflop" if self.budgets else "grid"

    def validate(self, source: str) -> None:
        def fail(message: str):
            raise LadderError(f"{source}: {message}")

        if self.flops not in ("model", "6nd"):
            fail(f"flops {self.flops!r}: choose model (flops_per_token x D) or 6nd (6 N D)")
        if self.ablation is not None:
            a = self.ablation
            if self.tokens or self.budgets:
                fail("an ablation takes its budget from ablation.tokens; remove tokens/budgets")
            if not a.knob:
                fail("ablation.knob is empty: name a train-config key, e.g. optim.lr")
            if len(a.values) < 2:
                fail("ablation.values needs at least two values to compare")
            if a.labels and len(a.labels) != len(a.values):
                fail(f"ablation.labels has {len(a.labels)} entries for {len(a.values)} values")
            if not a.seeds:
                fail("ablation.seeds is empty")
            if a.tokens <= 0:
                fail("ablation.tokens must be a positive token budget")
        else:
            if not self.sizes:
                fail("sizes is empty: list model sizes (presets or shapes)")
            if self.tokens and self.budgets:
                fail("give either tokens (a sizes x tokens grid) or budgets (isoFLOP profiles), not both")
            if not self.tokens and not self.budgets:
                fail("give tokens (a sizes x tokens grid), budgets (compute budgets in FLOPs) or an ablation")
            if any(t <= 0 for t in [*self.tokens, *self.budgets]):
                fail("tokens and budgets must be positive")
            labels = [s.label() for s in self.sizes]
            if len(set(labels)) != len(labels):
                fail(f"sizes have duplicate names {labels}: give each a name")
        names = [h.name for h in self.holdout]
        if self.holdout and (self.ablation is not None or not all(names) or len(set(names)) != len(names)
                             or any(h.tokens <= 0 for h in self.holdout)):
            fail("holdout: every entry needs a distinct name and positive tokens, and no ablation")
        if self.lr_sweep and (len(self.lr_sweep) < 3 or min(self.lr_sweep) <= 0 or self.ablation is not None):
            fail("lr_sweep needs at least three positive learning rates (so the best can be seen not to sit at an "
                 "edge), and no ablation")
        if self.schedule not in ("cosine", "wsd"):
            fail(f"schedule {self.schedule!r}: choose cosine (a run per point) or wsd (cooldown branches)")
        if self.schedule == "wsd" and self.ablation is not None:
            fail("schedule wsd branches the budgets of a size; an ablation has one budget: use cosine")
        unknown = sorted(set(self.cosine_baseline) - {s.label() for s in self.sizes})
        if self.cosine_baseline and (self.schedule != "wsd" or unknown):
            fail("cosine_baseline needs schedule wsd and names from sizes"
                 + (f" (not sizes: {', '.join(unknown)})" if unknown else ""))
        if self.tokens_per_param and (len(self.tokens_per_param) != 2
                                      or not 0 <= self.tokens_per_param[0] < self.tokens_per_param[1]):
            fail(f"tokens_per_param must be [low, high], got {self.tokens_per_param}")
        if not 0 <= self.warmup_fraction < 1:
            fail(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        for name in ("jobs", "min_steps", "eval_samples", "checkpoint_every"):
            if getattr(self, name) < 1:
                fail(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.threads < 0:
            fail(f"threads must be >= 0, got {self.threads}")
        if self.fit.huber_delta <= 0 or self.fit.starts < 1 or self.fit.bootstrap < 0:
            fail("fit: huber_delta must be > 0, starts >= 1, bootstrap >= 0")
        if self.fit.isoflop_window and self.fit.isoflop_window < 3:
            fail(f"fit.isoflop_window must be 0 (all sizes) or at least 3, got {self.fit.isoflop_window}")
        if not 0 < self.fit.confidence < 1:
            fail(f"fit.confidence must be in (0, 1), got {self.fit.confidence}")


def load_ladder_config(path: str | Path | None, overrides: list[str] = ()) -> LadderConfig:
    config = load_config(LadderConfig, path, overrides)
    config.validate(str(path or "config"))
    return config


def resolve_base(config: LadderConfig, config_path: str | Path | None) -> Path:
    """The base train config: as given (relative to the working directory), else beside the ladder config."""
    base = Path(config.base)
    if base.is_file() or base.is_absolute() or config_path is None:
        if not base.is_file():
            raise LadderError(f"base train config {base} not found")
        return base
    beside = Path(config_path).parent / base
    if beside.is_file():
        return beside
    raise LadderError(f"base train config {base} not found (also not beside {config_path})")
