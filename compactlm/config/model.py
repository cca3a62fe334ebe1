"""Typed model configuration and the preset ladder.

The ladder keeps TinyLlama's proportions at every size: head size 64, grouped-query attention,
SwiGLU hidden size about 2.75x the model width, pre-norm RMSNorm, RoPE base 10000, untied head.
The number in a ladder preset's name is its *non-embedding* parameter count (the quantity scaling
laws are written in); `tinyllama-1.1b` keeps the name of the published model, which counts all
1,100,048,384 parameters. The vocabulary size belongs to the tokenizer: presets default to Llama-2's
32000 and callers pass the tokenizer's size.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from compactlm.errors import ConfigError
from compactlm.fileio import read_json

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"  # beside the weights, as in Hugging Face checkpoints


MAX_SEQ_LEN = 1 << 20  # 1,048,576 tokens of context at most

@dataclass
class ModelConfig:
    n_layer: int
    d_model: int
    n_head: int
    n_kv_head: int
    ffn_dim: int
    vocab_size: int = 32000
    max_seq_len: int = 2048
    head_dim: int = 0  # 0 means d_model // n_head
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    tie_embeddings: bool = False
    name: str = "custom"
    bos_id: int | None = 1
    eos_id: int | None = 2

    def __post_init__(self) -> None:
        # config.json files come from anywhere: a string or float size must fail here, naming the
        # field, not as a TypeError deep inside torch; sizes are checked before they divide anything.
        for f in dataclasses.fields(self):
            value, kinds = getattr(self, f.name), _FIELD_KINDS[str(f.type)]
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise ConfigError(f"{f.name} must be {f.type}, got {value!r}")
        for name in ("n_layer", "d_model", "n_head", "n_kv_head", "ffn_dim", "vocab_size", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_seq_len > MAX_SEQ_LEN:
            # RoPE tables hold max_seq_len x head_dim floats: a damaged or absurd config would take all memory
            raise ConfigError(f"max_seq_len {self.max_seq_len:,} is above the {MAX_SEQ_LEN:,} tokens compactlm "
                              "supports")
        if self.head_dim < 0:
            raise ConfigError(f"head_dim must be positive (or 0: d_model // n_head), got {self.head_dim}")
        if self.head_dim == 0:
            if self.d_model % self.n_head:
                raise ConfigError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
            self.head_dim = self.d_model // self.n_head
        if self.n_head % self.n_kv_head:
            raise ConfigError(f"n_head {self.n_head} is not a multiple of n_kv_head {self.n_kv_head}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim {self.head_dim} must be even for rotary embeddings")

    # ---- parameter and FLOP accounting -------------------------------------------------------
    @property
    def layer_params(self) -> int:
        d, hd = self.d_model, self.head_dim
        attention = d * (self.n_head + 2 * self.n_kv_head) * hd + self.n_head * hd * d
        mlp = 3 * d * self.ffn_dim
        return attention + mlp + 2 * d  # two RMSNorm weights

    @property
    def non_embedding_params(self) -> int:
        """Transformer blocks plus the final norm: the N of scaling laws."""
        return self.n_layer * self.layer_params + self.d_model

    @property
    def num_params(self) -> int:
        embedding = self.vocab_size * self.d_model
        head = 0 if self.tie_embeddings else embedding
        return self.non_embedding_params + embedding + head

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs (forward + backward) per token, for MFU.

        6 x (weights that take part in a matmul: the blocks and the output head, not the input
        embedding, which is a lookup) + 12 x n_layer x n_head x head_dim x seq_len for the attention
        scores and their weighted sum over the whole (unmasked) T x T matrix, the PaLM appendix-B
        convention that Megatron and nanoGPT also use.
        """
        seq_len = seq_len or self.max_seq_len
        matmul_params = self.n_layer * (self.layer_params - 2 * self.d_model) + self.vocab_size * self.d_model
        attention = 12 * self.n_layer * self.n_head * self.head_dim * seq_len
        return 6 * matmul_params + attention

    # ---- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def with_special_ids(self, bos_id: int | None, eos_id: int | None) -> "ModelConfig":
        """The tokenizer decides bos/eos; the config records them for loaders without the tokenizer."""
        return dataclasses.replace(self, bos_id=bos_id, eos_id=eos_id)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "ModelConfig":
        data = {k: v for k, v in data.items() if k not in ("format", "format_version")}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown model config keys {unknown}")
        try:
            return cls(**data)
        except (TypeError, ConfigError) as exc:  # a missing field, or one that fails the checks
            raise ConfigError(f"{source}: {exc}") from None

    def save(self, path: str | Path) -> None:
        payload = {"format": "compactlm", "format_version": FORMAT_VERSION, **self.to_dict()}
        Path(path).write_text(json.dumps(payload, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        """Read a compactlm `config.json` (a file, or the checkpoint directory holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_FILE
        data = read_json(path, ConfigError)
        if not isinstance(data, dict) or data.get("format") != "compactlm":
            raise ConfigError(f"{path}: not a compactlm model config (no \"format\": \"compactlm\")")
        return cls.from_dict(data, source=str(path))


# The accepted Python types of each annotation above (bool is an int, but never a size).
_FIELD_KINDS = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "int | None": (int, type(None))}


def _ladder_rung(name: str, n_layer: int, d_model: int, n_kv_head: int) -> ModelConfig:
    """A preset with head size 64 and SwiGLU width 2.75 x d_model (rounded to a multiple of 32)."""
    ffn = int(round(2.75 * d_model / 32)) * 32
    return ModelConfig(n_layer=n_layer, d_model=d_model, n_head=d_model // 64, n_kv_head=n_kv_head,
                       ffn_dim=ffn, name=name)


PRESETS: dict[str, ModelConfig] = {
    cfg.name: cfg
    for cfg in [
        _ladder_rung("tinyllama-1m", n_layer=6, d_model=128, n_kv_head=1),
        _ladder_rung("tinyllama-4m", n_layer=6, d_model=256, n_kv_head=1),
        _ladder_rung("tinyllama-13m", n_layer=8, d_model=384, n_kv_head=2),
        _ladder_rung("tinyllama-23m", n_layer=8, d_model=512, n_kv_head=2),
        _ladder_rung("tinyllama-44m", n_layer=10, d_model=640, n_kv_head=2),
        _ladder_rung("tinyllama-77m", n_layer=12, d_model=768, n_kv_head=4),
        _ladder_rung("tinyllama-158m", n_layer=14, d_model=1024, n_kv_head=4),
        ModelConfig(n_layer=22, d_model=2048, n_head=32, n_kv_head=4, ffn_dim=5632, name="tinyllama-1.1b"),
    ]
}


def get_preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)
