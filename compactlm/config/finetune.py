"""The fine-tuning config (`compactlm finetune CONFIG.yaml`): a base checkpoint, conversations, and the
method (SFT or DPO, full or LoRA). The optimizer, batch and cadences are pretraining's (RunSettings),
with defaults for fine-tuning: a small learning rate, short warm-up, small batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from compactlm.config.loader import load_config
from compactlm.config.train import NO_RESULT_CHANGE, OptimSection, RunSettings, TrainSection

METHODS = ("sft", "dpo")
ADAPTERS = ("none", "lora")
LORA_TARGETS = ("qkv", "proj", "gate_up", "down")  # compactlm's linear layers in each block


@dataclass
class LoraSection:
    rank: int = 8  # r: the rank of each low-rank update
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0  # dropout on the adapters' input
    targets: list[str] = field(default_factory=lambda: ["qkv", "proj", "gate_up", "down"])  # layers adapted


@dataclass
class FinetuneSection:
    base: str = ""  # the model to start from: a compactlm or Hugging Face checkpoint directory, or a .gguf file
    method: str = "sft"  # sft (supervised, loss on assistant tokens) | dpo (preference pairs)
    adapter: str = "none"  # none (every weight trains) | lora (low-rank adapters; the base stays frozen)
    lora: LoraSection = field(default_factory=LoraSection)
    # zephyr | chatml | a .jinja file; empty: the base tokenizer's own template (saved with every checkpoint)
    chat_template: str = ""
    beta: float = 0.1  # DPO: strength of the pull towards the reference model
    epochs: float = 0.0  # passes over the training rows, when train.max_steps and train.max_tokens are 0


@dataclass
class ChatDataSection:
    train: str = ""  # jsonl: {"messages": [...]}, {"prompt", "response"}; DPO: {"prompt", "chosen", "rejected"}
    val: str = ""  # held-out jsonl of the same kind (empty: no validation)
    seq_len: int = 512  # tokens per packed row (SFT) or per sequence (DPO); longer conversations are truncated
    seed: int = 1234  # the order of rows in each epoch


def _finetune_optim() -> OptimSection:
    return OptimSection(lr=1e-4, min_lr=1e-5, warmup_steps=10, weight_decay=0.0)


def _finetune_batch() -> TrainSection:
    return TrainSection(micro_batch=8, global_batch=16)


@dataclass
class FinetuneConfig(RunSettings):
    run_dir: str = field(default="out/finetune", metadata=NO_RESULT_CHANGE)  # checkpoints, metrics.jsonl, config.yaml
    optim: OptimSection = field(default_factory=_finetune_optim)
    train: TrainSection = field(default_factory=_finetune_batch)
    checkpoint_every: int = field(default=200, metadata=NO_RESULT_CHANGE)  # optimizer steps between checkpoints
    eval_every: int = field(default=50, metadata=NO_RESULT_CHANGE)  # optimizer steps between validations
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    data: ChatDataSection = field(default_factory=ChatDataSection)

    def checks(self) -> list[tuple[str, bool, str]]:
        f, d, lora = self.finetune, self.data, self.finetune.lora
        return [
            ("finetune.base", bool(f.base), "is empty: name the checkpoint to fine-tune"),
            ("finetune.method", f.method in METHODS, f"{f.method!r}: choose {', '.join(METHODS)}"),
            ("finetune.adapter", f.adapter in ADAPTERS, f"{f.adapter!r}: choose {', '.join(ADAPTERS)}"),
            ("finetune.lora.rank", lora.rank >= 1, f"must be at least 1, got {lora.rank}"),
            ("finetune.lora.alpha", lora.alpha > 0, f"must be positive, got {lora.alpha}"),
            ("finetune.lora.dropout", 0 <= lora.dropout < 1, f"must be in [0, 1), got {lora.dropout}"),
            ("finetune.lora.targets", bool(lora.targets) and set(lora.targets) <= set(LORA_TARGETS),
             f"{lora.targets}: choose among {', '.join(LORA_TARGETS)}"),
            ("finetune.beta", f.beta > 0, f"must be positive, got {f.beta}"),
            ("finetune.epochs", f.epochs >= 0, f"must be >= 0, got {f.epochs}"),
            ("train.init_from", not self.train.init_from, "fine-tuning starts from finetune.base; leave it empty"),
            ("data.train", bool(d.train), "is empty: name a jsonl file of conversations"),
            ("data.seq_len", d.seq_len >= 2, f"must be at least 2, got {d.seq_len}"),
            *super().checks(),
            ("train.max_steps", self.train.max_steps > 0 or self.train.max_tokens > 0 or f.epochs > 0,
             "is 0 and so are train.max_tokens and finetune.epochs; set one of them"),
        ]


def load_finetune_config(path: str | Path | None, overrides: list[str] = ()) -> FinetuneConfig:
    return load_config(FinetuneConfig, path, overrides)
