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

from compactlm.config.loader import load_config, plain
from compactlm.config.model import ModelConfig, get_preset
from compactlm.data.mixture import MixtureSource
from compactlm.errors import ConfigError

# Field metadata: keys that change how a run is carried out or reported, never what it computes.
NO_RESULT_CHANGE = {"result": False}
# Field metadata: a key added after runs were made; at its default it is left out of result_defining, so
# those runs (a ladder's finished points, identified by a hash of it) keep their identity.
ADDED_LATER = {"omit_at_default": True}
POSITION_MODES = ("continue", "restart")
PRECISIONS = ("auto", "bf16", "fp32")
KERNEL_MODES = ("auto", "eager", "compile")
PARALLELISMS = ("auto", "fsdp", "ddp", "none")
CHECKPOINT_FORMATS = ("auto", "full", "sharded")
SCHEDULES = ("cosine", "wsd")
DECAY_SHAPES = ("linear", "cosine", "1-sqrt")


@dataclass
class ModelSection:
    """A preset, optionally with some of its fields changed; vocabulary and context come from the data."""

    preset: str = "tinyllama-1m"  # a model preset (compactlm presets lists them)
    n_layer: int | None = None  # transformer blocks (default: the preset's)
    d_model: int | None = None  # model width; heads follow at the preset's head size unless n_head is set
    n_head: int | None = None  # attention heads (default: the preset's, or d_model / head size)
    n_kv_head: int | None = None  # key/value heads for grouped-query attention (must divide n_head)
    ffn_dim: int | None = None  # SwiGLU hidden width
    rope_base: float | None = None  # RoPE base (theta)
    tie_embeddings: bool | None = None  # share the embedding with the output head

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
    seq_len: int = 2048  # tokens per training sequence (the model's context)
    seed: int = 1234  # the mixture's order: which block comes when
    val_fraction: float = 0.005  # share of each dataset's blocks held out for validation
    num_workers: int = 0  # data-loader worker processes (0: in the training process)
    # attention stays inside each document of a packed sequence (documents end at the tokenizer's EOS)
    document_mask: bool = field(default=False, metadata=ADDED_LATER)
    # with document_mask, RoPE positions: continue through the sequence, or restart at 0 in each document
    document_positions: str = field(default="continue", metadata=ADDED_LATER)


@dataclass
class OptimSection:
    lr: float = 4e-4  # peak learning rate, reached after warm-up
    min_lr: float = 4e-5  # learning rate at the end of the cosine
    warmup_steps: int = 2000  # optimizer steps of linear warm-up
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.95  # AdamW second-moment decay
    eps: float = 1e-8  # AdamW epsilon
    weight_decay: float = 0.1  # decoupled weight decay on matrices (none on norm gains)
    grad_clip: float = 1.0  # 0 disables clipping (the norm is still logged)
    # cosine (warm-up, cosine to min_lr over the run) | wsd (warm-up, stable at lr, decay to min_lr at the end)
    schedule: str = field(default="cosine", metadata=ADDED_LATER)
    decay_fraction: float = field(default=0.2, metadata=ADDED_LATER)  # wsd: the share of the run spent decaying
    decay_shape: str = field(default="1-sqrt", metadata=ADDED_LATER)  # wsd: linear | cosine | 1-sqrt


@dataclass
class TrainSection:
    # sequences per forward/backward: the same math as another split of the global batch
    micro_batch: int = field(default=8, metadata=NO_RESULT_CHANGE)
    global_batch: int = 1024  # sequences per optimizer step (accumulation = global / (micro x ranks))
    max_steps: int = 0  # optimizer steps; 0: derived from max_tokens
    max_tokens: int = 0  # tokens to train on, when max_steps is 0
    lr_decay_steps: int = 0  # length of the schedule (warm-up + cosine, or all of WSD); 0: max_steps
    precision: str = "auto"  # auto (bf16 autocast on CUDA and on CPUs with native bf16), bf16, fp32
    # auto | eager | compile (compactlm.train.runtime.apply_kernels)
    kernels: str = field(default="auto", metadata=NO_RESULT_CHANGE)
    activation_checkpointing: int = 0  # recompute every k-th block's activations in backward (0: off)
    max_nonfinite: int = 5  # consecutive non-finite steps that stop the run
    parallelism: str = "auto"  # several ranks: fsdp (auto) or ddp; one process: none
    checkpoint_format: str = "auto"  # full (one process: auto) | sharded (several ranks: auto)
    async_checkpoint: bool = True  # sharded checkpoints are written in the background while training goes on
    # start from another run's checkpoint: weights, optimizer, step, RNG and data position (a WSD cooldown
    # branch: the same data and batch, another train.max_steps)
    init_from: str = field(default="", metadata=ADDED_LATER)
    # with init_from: the weights only, with a fresh optimizer, schedule and data (continued pretraining)
    init_weights_only: bool = field(default=False, metadata=ADDED_LATER)


@dataclass
class RunSettings:
    """What every training run has, pretraining or fine-tuning: where it goes, the optimizer, the batch
    and its cadences. `compactlm train` adds the model and the data mixture (TrainConfig); `compactlm
    finetune` adds the base checkpoint and the conversations (compactlm.config.finetune)."""

    run_dir: str = field(default="out/run", metadata=NO_RESULT_CHANGE)  # checkpoints, metrics.jsonl, config.yaml
    seed: int = 1234  # model initialisation
    device: str = "auto"  # auto (a GPU if there is one), cpu, cuda, cuda:1, mps
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    checkpoint_every: int = field(default=1000, metadata=NO_RESULT_CHANGE)  # optimizer steps between checkpoints
    # further steps to checkpoint at, never deleted by keep_checkpoints (WSD branch points of a ladder)
    checkpoint_steps: list[int] = field(default_factory=list, metadata=NO_RESULT_CHANGE)
    keep_checkpoints: int = field(default=3, metadata=NO_RESULT_CHANGE)  # newest checkpoints kept on disk
    eval_every: int = field(default=500, metadata=NO_RESULT_CHANGE)  # optimizer steps between validations
    eval_samples: int = field(default=64, metadata=NO_RESULT_CHANGE)  # held-out sequences per validation
    log_every: int = field(default=10, metadata=NO_RESULT_CHANGE)  # optimizer steps between console lines
    tensorboard: bool = field(default=True, metadata=NO_RESULT_CHANGE)  # TensorBoard events beside metrics.jsonl
    peak_flops: float = 0.0  # per device, for MFU; 0: look the GPU up (CPU: no MFU)

    def checks(self) -> list[tuple[str, bool, str]]:
        """(key, holds, what is wrong otherwise): run by the loader before any work starts."""
        o, t = self.optim, self.train
        return [
            ("optim.lr", o.lr > 0, f"must be positive, got {o.lr}"),
            ("optim.min_lr", 0 <= o.min_lr <= o.lr, f"must be in [0, optim.lr = {o.lr}], got {o.min_lr}"),
            ("optim.warmup_steps", o.warmup_steps >= 0, f"must be >= 0, got {o.warmup_steps}"),
            ("optim.beta1", 0 <= o.beta1 < 1, f"must be in [0, 1), got {o.beta1}"),
            ("optim.beta2", 0 <= o.beta2 < 1, f"must be in [0, 1), got {o.beta2}"),
            ("optim.eps", o.eps > 0, f"must be positive, got {o.eps}"),
            ("optim.weight_decay", o.weight_decay >= 0, f"must be >= 0, got {o.weight_decay}"),
            ("optim.grad_clip", o.grad_clip >= 0, f"must be >= 0 (0: no clipping), got {o.grad_clip}"),
            ("optim.schedule", o.schedule in SCHEDULES, f"{o.schedule!r}: choose {', '.join(SCHEDULES)}"),
            ("optim.decay_fraction", 0 < o.decay_fraction <= 1, f"must be in (0, 1], got {o.decay_fraction}"),
            ("optim.decay_shape", o.decay_shape in DECAY_SHAPES, f"{o.decay_shape!r}: choose {', '.join(DECAY_SHAPES)}"),
            ("train.init_weights_only", t.init_from or not t.init_weights_only, "needs train.init_from"),
            ("train.micro_batch", t.micro_batch >= 1, f"must be at least 1, got {t.micro_batch}"),
            ("train.global_batch", t.global_batch >= 1, f"must be at least 1, got {t.global_batch}"),
            ("train.max_steps", t.max_steps >= 0, f"must be >= 0 (0: derived from train.max_tokens), got {t.max_steps}"),
            ("train.max_tokens", t.max_tokens >= 0, f"must be >= 0, got {t.max_tokens}"),
            ("train.lr_decay_steps", t.lr_decay_steps >= 0, f"must be >= 0 (0: max_steps), got {t.lr_decay_steps}"),
            ("train.precision", t.precision in PRECISIONS, f"{t.precision!r}: choose {', '.join(PRECISIONS)}"),
            ("train.kernels", t.kernels in KERNEL_MODES, f"{t.kernels!r}: choose {', '.join(KERNEL_MODES)}"),
            ("train.activation_checkpointing", t.activation_checkpointing >= 0,
             f"must be >= 0 (0: off), got {t.activation_checkpointing}"),
            ("train.max_nonfinite", t.max_nonfinite >= 1, f"must be at least 1, got {t.max_nonfinite}"),
            ("train.parallelism", t.parallelism in PARALLELISMS, f"{t.parallelism!r}: choose {', '.join(PARALLELISMS)}"),
            ("train.checkpoint_format", t.checkpoint_format in CHECKPOINT_FORMATS,
             f"{t.checkpoint_format!r}: choose {', '.join(CHECKPOINT_FORMATS)}"),
            *((key, getattr(self, key) >= 1, f"must be at least 1, got {getattr(self, key)}")
              for key in ("checkpoint_every", "keep_checkpoints", "eval_every", "log_every")),
            ("eval_samples", self.eval_samples >= 0, f"must be >= 0, got {self.eval_samples}"),
            ("peak_flops", self.peak_flops >= 0, f"must be >= 0 (0: look the GPU up), got {self.peak_flops}"),
        ]


@dataclass
class TrainConfig(RunSettings):
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)

    def checks(self) -> list[tuple[str, bool, str]]:
        d, t = self.data, self.train
        return [
            ("data.seq_len", d.seq_len >= 1, f"must be at least 1, got {d.seq_len}"),
            ("data.val_fraction", 0 <= d.val_fraction < 1, f"must be in [0, 1), got {d.val_fraction}"),
            ("data.num_workers", d.num_workers >= 0, f"must be >= 0, got {d.num_workers}"),
            ("data.document_positions", d.document_positions in POSITION_MODES,
             f"{d.document_positions!r}: choose {', '.join(POSITION_MODES)}"),
            ("data.document_positions", d.document_mask or d.document_positions == "continue",
             "'restart' needs data.document_mask: true (positions restart per document only when documents "
             "are kept apart)"),
            *((f"data.datasets[{i}].weight", 0 <= s.weight < math.inf, f"must be finite and >= 0, got {s.weight}")
              for i, s in enumerate(d.datasets)),
            *super().checks(),
            ("train.max_steps", t.max_steps > 0 or t.max_tokens > 0, "is 0 and so is train.max_tokens; set one of them"),
        ]


def load_train_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    return load_config(TrainConfig, path, overrides)


def result_defining(config) -> dict:
    """The config as a dict without the keys marked as not changing what a run computes (run
    directory, logging, checkpoint cadence, micro-batch split, kernels): two runs equal here train
    the same model."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not f.metadata.get("result", True) or (f.metadata.get("omit_at_default") and value == f.default):
            continue
        out[f.name] = result_defining(value) if dataclasses.is_dataclass(value) else plain(value)
    return out


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
    # the Tokenizer read from tokenizer_path (runs compare by the path, not the loaded object)
    tokenizer: object = field(default=None, compare=False, repr=False)


def resolve_run(config: TrainConfig, world_size: int = 1, vocab_size: int | None = None) -> ResolvedRun:
    """Tokenizer -> vocabulary -> model config -> accumulation -> steps, checked on the way.

    vocab_size: plan a run whose data (hence tokenizer) is not at hand; training never passes it.
    """
    if not config.data.datasets:
        raise ConfigError("data.datasets is empty: list prepared dataset directories with weights")
    path, tokenizer = None, None
    if vocab_size is None:  # data.tokenizer, or the tokenizer stored with the first dataset
        from compactlm.data.manifest import manifest_tokenizer
        from compactlm.tokenizer.tokenizer import Tokenizer

        path = Path(config.data.tokenizer or manifest_tokenizer(config.data.datasets[0].path))
        tokenizer = Tokenizer(path)
        vocab_size = tokenizer.vocab_size
    model = config.model.build_config(vocab_size, config.data.seq_len)
    if tokenizer is not None:
        model = model.with_special_ids(tokenizer.bos_id, tokenizer.eos_id)
    train = config.train
    tokens_per_step = train.global_batch * config.data.seq_len
    max_steps = train.max_steps or math.ceil(train.max_tokens / tokens_per_step)
    return ResolvedRun(model=model, tokenizer_path=path, tokenizer=tokenizer, world_size=world_size,
                       accumulation=accumulation(train, world_size), max_steps=max_steps,
                       decay_steps=train.lr_decay_steps or max_steps, tokens_per_step=tokens_per_step)


def checkpoint_format(name: str, parallelism: str) -> str:
    """full or sharded: auto is sharded under FSDP (no rank holds the whole model), else full."""
    if name not in CHECKPOINT_FORMATS:
        raise ConfigError(f"train.checkpoint_format {name!r}: choose one of {', '.join(CHECKPOINT_FORMATS)}")
    if name == "auto":
        return "sharded" if parallelism == "fsdp" else "full"
    return name


def accumulation(train: TrainSection, world_size: int) -> int:
    """Micro-batches per optimizer step on each rank, refused when the global batch does not divide."""
    per_step = train.micro_batch * world_size
    if train.global_batch % per_step:
        raise ConfigError(f"train.global_batch {train.global_batch} is not a multiple of micro_batch x ranks "
                          f"({train.micro_batch} x {world_size} = {per_step}); change train.micro_batch, "
                          "train.global_batch or the number of ranks")
    return train.global_batch // per_step
