"""The training config (`compactlm train CONFIG.yaml`) and `resolve_run`, which turns it into a run.

`resolve_run` is the one place where a config becomes concrete numbers: the tokenizer (the config's,
or the one stored with the first dataset), the vocabulary, the model config with the tokenizer's
special ids, the gradient accumulation for a number of ranks, and the step counts. The trainer, the
memory planner and the ladder all call it, so they cannot disagree.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from compactlm.config.loader import load_config, to_dict
from compactlm.config.model import ModelConfig, get_preset
from compactlm.data.mixture import MixtureSource
from compactlm.errors import ConfigError

# Field metadata: keys that change how a run is carried out or reported, never what it computes.
NO_RESULT_CHANGE = {"result": False}


@dataclass
class ModelSection:
    """A preset, optionally with some of its fields changed; vocabulary and context come from the data."""

    preset: str = "tinyllama-1m"
    n_layer: int | None = None
    d_model: int | None = None
    n_head: int | None = None
    n_kv_head: int | None = None
    ffn_dim: int | None = None
    rope_base: float | None = None
    tie_embeddings: bool | None = None

    def build_config(self, vocab_size: int, seq_len: int) -> ModelConfig:
        changes = {k: v for k, v in dataclasses.asdict(self).items() if k != "preset" and v is not None}
        preset = get_preset(self.preset)
        if "d_model" in changes and "n_head" not in changes:
            changes["n_head"] = changes["d_model"] // preset.head_dim
        if "d_model" in changes or "n_head" in changes:
            changes.setdefault("head_dim", 0)  # re-derived from d_model / n_head
        return get_preset(self.preset, vocab_size=vocab_size, max_seq_len=seq_len, **changes)


@dataclass
class DataSection:
    datasets: list[MixtureSource] = field(default_factory=list)  # prepared directories with weights
    tokenizer: str = ""  # default: the tokenizer stored with the first dataset
    seq_len: int = 2048
    seed: int = 1234
    val_fraction: float = 0.005
    num_workers: int = 0


@dataclass
class OptimSection:
    lr: float = 4e-4
    min_lr: float = 4e-5
    warmup_steps: int = 2000
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # 0 disables clipping (the norm is still logged)


@dataclass
class TrainSection:
    # sequences per forward/backward: the same math as another split of the global batch
    micro_batch: int = field(default=8, metadata=NO_RESULT_CHANGE)
    global_batch: int = 1024  # sequences per optimizer step (accumulation = global / (micro x ranks))
    max_steps: int = 0  # optimizer steps; 0: derived from max_tokens
    max_tokens: int = 0
    lr_decay_steps: int = 0  # length of warm-up + cosine; 0: max_steps
    precision: str = "auto"  # auto (bf16 autocast on CUDA and on CPUs with native bf16), bf16, fp32
    # auto | eager | compile (compactlm.train.runtime.apply_kernels)
    kernels: str = field(default="auto", metadata=NO_RESULT_CHANGE)
    activation_checkpointing: int = 0  # recompute every k-th block's activations in backward (0: off)
    max_nonfinite: int = 5  # consecutive non-finite steps that stop the run
    parallelism: str = "auto"  # several ranks: fsdp (auto) or ddp; one process: none
    checkpoint_format: str = "auto"  # full (one process: auto) | sharded (several ranks: auto)
    async_checkpoint: bool = True  # sharded checkpoints are written in the background while training goes on


@dataclass
class TrainConfig:
    run_dir: str = field(default="out/run", metadata=NO_RESULT_CHANGE)
    seed: int = 1234  # model initialisation
    device: str = "auto"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    checkpoint_every: int = field(default=1000, metadata=NO_RESULT_CHANGE)
    keep_checkpoints: int = field(default=3, metadata=NO_RESULT_CHANGE)
    eval_every: int = field(default=500, metadata=NO_RESULT_CHANGE)
    eval_samples: int = field(default=64, metadata=NO_RESULT_CHANGE)
    log_every: int = field(default=10, metadata=NO_RESULT_CHANGE)
    tensorboard: bool = field(default=True, metadata=NO_RESULT_CHANGE)
    peak_flops: float = 0.0  # per device, for MFU; 0: look the GPU up (CPU: no MFU)


def load_train_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    return load_config(TrainConfig, path, overrides)


def result_defining(config) -> dict:
    """The config as a dict without the keys marked as not changing what a run computes (run
    directory, logging, checkpoint cadence, micro-batch split, kernels): two runs equal here train
    the same model."""
    out = {}
    for f in dataclasses.fields(config):
        if f.metadata.get("result", True):
            value = getattr(config, f.name)
            out[f.name] = result_defining(value) if dataclasses.is_dataclass(value) else to_dict_value(value)
    return out


def to_dict_value(value):
    return [to_dict(v) if dataclasses.is_dataclass(v) else v for v in value] if isinstance(value, list) else value


# ---- resolution ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResolvedRun:
    """What a training config means for a given number of ranks."""

    model: ModelConfig  # vocabulary and special ids from the tokenizer, context from data.seq_len
    tokenizer_path: Path | None  # None when resolved with an explicit vocab_size (planning without data)
    world_size: int
    accumulation: int  # micro-batches per optimizer step on each rank
    max_steps: int
    decay_steps: int  # warm-up + cosine length
    tokens_per_step: int

    def tokenizer(self):
        from compactlm.tokenizer.tokenizer import Tokenizer

        if self.tokenizer_path is None:
            raise ConfigError("this run was resolved without a tokenizer")
        return Tokenizer(self.tokenizer_path)


def tokenizer_path(config: TrainConfig) -> Path:
    """data.tokenizer, or the tokenizer stored with the first dataset."""
    from compactlm.data.manifest import manifest_tokenizer

    if config.data.tokenizer:
        return Path(config.data.tokenizer)
    if not config.data.datasets:
        raise ConfigError("data.datasets is empty: list prepared dataset directories with weights")
    return manifest_tokenizer(config.data.datasets[0].path)


def resolve_run(config: TrainConfig, world_size: int = 1, vocab_size: int | None = None) -> ResolvedRun:
    """Tokenizer -> vocabulary -> model config -> accumulation -> steps, checked on the way.

    vocab_size: plan a run whose data (hence tokenizer) is not at hand; training never passes it.
    """
    if not config.data.datasets:
        raise ConfigError("data.datasets is empty: list prepared dataset directories with weights")
    path, bos_id, eos_id = None, None, None
    if vocab_size is None:
        from compactlm.tokenizer.tokenizer import Tokenizer

        path = tokenizer_path(config)
        tokenizer = Tokenizer(path)
        vocab_size, bos_id, eos_id = tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id
    model = config.model.build_config(vocab_size, config.data.seq_len)
    if path is not None:
        model = model.with_special_ids(bos_id, eos_id)
    train = config.train
    per_step = train.micro_batch * world_size
    if train.global_batch % per_step:
        raise ConfigError(f"train.global_batch {train.global_batch} is not a multiple of micro_batch x ranks "
                          f"({train.micro_batch} x {world_size} = {per_step})")
    tokens_per_step = train.global_batch * config.data.seq_len
    max_steps = train.max_steps or math.ceil(train.max_tokens / tokens_per_step)
    if max_steps <= 0:
        raise ConfigError("set train.max_steps or train.max_tokens")
    return ResolvedRun(model=model, tokenizer_path=path, world_size=world_size,
                       accumulation=train.global_batch // per_step, max_steps=max_steps,
                       decay_steps=train.lr_decay_steps or max_steps, tokens_per_step=tokens_per_step)
