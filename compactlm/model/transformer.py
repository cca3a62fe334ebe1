"""The Llama-2 decoder TinyLlama uses, in one readable file.

    tokens -> embedding -> n_layer x [x + attn(rmsnorm(x)); x + swiglu(rmsnorm(x))] -> rmsnorm -> head

Matches `transformers.LlamaForCausalLM` numerically (tests/test_model_transformer.py checks the logits). Two
storage choices differ from Hugging Face's layout and are undone by `compactlm.convert.hf`:
q, k and v are one fused projection (`qkv`, rows [q heads | k heads | v heads]) and gate and up are
one (`gate_up`, rows [gate | up]), so each block runs two input matmuls instead of five.

Initialisation (`init_weights`) follows TinyLlama's lit-gpt recipe: every linear and the embedding
~ N(0, sqrt(2 / (5 d))) ("small init", Nguyen & Salazar 2019), and the two projections that write
into the residual stream (attention output, MLP down) ~ N(0, 1 / (sqrt(d) n_layer)) so the residual
stream's variance does not grow with depth. RMSNorm weights start at 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from compactlm.config.model import ModelConfig
from compactlm.model.fused_loss import IGNORE_INDEX, linear_cross_entropy, loss_chunk_rows, scored_count


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 whatever the activation dtype: bf16 sums of squares lose too much.
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for rotate-half RoPE over the whole head, cached for max_seq_len positions."""

    def __init__(self, head_dim: int, max_seq_len: int, base: float):
        super().__init__()
        self.head_dim, self.max_seq_len, self.base = head_dim, max_seq_len, base
        self.register_buffer("cos", torch.empty(max_seq_len, head_dim), persistent=False)
        self.register_buffer("sin", torch.empty(max_seq_len, head_dim), persistent=False)
        self.reset_tables()

    @torch.no_grad()
    def reset_tables(self) -> None:
        """(Re)compute the tables on the buffers' device; needed after building on the meta device."""
        if self.cos.device.type == "meta":
            return
        device = self.cos.device
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.head_dim, 2, dtype=torch.float, device=device) / self.head_dim))
        freqs = torch.arange(self.max_seq_len, dtype=torch.float, device=device)[:, None] * inv_freq[None, :]
        angles = torch.cat((freqs, freqs), dim=-1)
        self.cos.copy_(angles.cos())
        self.sin.copy_(angles.sin())

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B|1, T] -> cos, sin [B|1, T, 1, head_dim], ready to broadcast over heads."""
        return self.cos[positions].unsqueeze(2), self.sin[positions].unsqueeze(2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class KVCache:
    """Pre-allocated keys and values for every layer, plus which cached positions are real tokens.

    `length` is how many positions are filled; `key_valid` ([B, max_len] bool) is only kept when the
    batch has padding, so the common unpadded case runs SDPA without a mask.
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, device, dtype):
        shape = (batch_size, config.n_kv_head, max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.max_len = max_len
        self.length = 0
        self.key_valid: torch.Tensor | None = None

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.length, self.length + k.shape[2]
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.qkv = nn.Linear(config.d_model, (config.n_head + 2 * config.n_kv_head) * config.head_dim, bias=False)
        self.proj = nn.Linear(config.n_head * config.head_dim, config.d_model, bias=False)

    def forward(self, x, cos, sin, mask, is_causal: bool, cache: KVCache | None, layer: int):
        B, T, _ = x.shape
        heads = self.qkv(x).view(B, T, self.n_head + 2 * self.n_kv_head, self.head_dim)
        # Rotate queries and keys in one go: they sit side by side in the fused projection.
        qk = apply_rope(heads[:, :, :self.n_head + self.n_kv_head], cos, sin)
        q, k = qk.transpose(1, 2).split([self.n_head, self.n_kv_head], dim=1)
        v = heads[:, :, self.n_head + self.n_kv_head:].transpose(1, 2)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        # enable_gqa lets SDPA broadcast each KV head over its query group without copying K/V.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                           enable_gqa=self.n_kv_head != self.n_head)
        return self.proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class SwiGLU(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_up = nn.Linear(config.d_model, 2 * config.ffn_dim, bias=False)
        self.down = nn.Linear(config.ffn_dim, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x, cos, sin, mask=None, is_causal=True, cache=None, layer=0):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, is_causal, cache, layer)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.rope = RotaryEmbedding(config.head_dim, config.max_seq_len, config.rope_base)
        self.checkpoint_every = 0  # activation checkpointing: recompute every k-th block in backward (0: off)
        if self.embed.weight.device.type != "meta":
            self.init_weights()

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        d, n_layer = self.config.d_model, self.config.n_layer
        small = math.sqrt(2.0 / (5 * d))
        residual = 1.0 / math.sqrt(d) / n_layer
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(("attn.proj.weight", "mlp.down.weight")):
                p.normal_(0.0, residual, generator=generator)
            else:
                p.normal_(0.0, small, generator=generator)
        self.rope.reset_tables()

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, cache: KVCache | None = None,
                position_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, last_only: bool = False,
                fused_loss: bool = True) -> torch.Tensor:
        """idx [B, T] -> logits [B, T, vocab] (or [B, 1, vocab] with last_only).

        targets [B, T]: return the mean next-token cross-entropy instead. The head and the loss run
        fused over chunks of tokens (compactlm.model.fused_loss), never holding float32 logits for the whole
        batch; fused_loss=False is the reference path (full logits, then cross-entropy). The loss is
        computed here, inside forward, so that FSDP's hooks gather the head's weight for it.
        cache: continue from `cache.length` cached positions and append these T.
        position_ids [B, T]: defaults to start, start+1, ...; left-padded batches pass their own.
        attention_mask [B, T]: 1 for real tokens, 0 for padding (remembered in the cache).
        attn_mask [B|1, 1, T, T]: replaces the causal mask (see hidden_states and `document_layout`).
        """
        x = self.hidden_states(idx, cache=cache, position_ids=position_ids, attention_mask=attention_mask,
                               attn_mask=attn_mask)
        if targets is None:
            return self.lm_head(x[:, -1:] if last_only else x)
        if not fused_loss:
            targets = targets.flatten()
            return (F.cross_entropy(self.lm_head(x).float().flatten(0, 1), targets, reduction="sum",
                                    ignore_index=IGNORE_INDEX) / scored_count(targets))
        return linear_cross_entropy(x.flatten(0, 1), self.lm_head.weight, targets.flatten(),
                                    loss_chunk_rows(x.device.type))

    def hidden_states(self, idx: torch.Tensor, *, cache: KVCache | None = None,
                      position_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                      attn_mask: torch.Tensor | None = None):
        """The final-norm output [B, T, d_model] that the head turns into logits (see forward).

        attn_mask [B|1, 1, T, T] (bool, True = may attend): replaces the causal mask, e.g. for
        several sequences packed into one row that must not see each other (no cache).
        """
        T = idx.shape[1]
        start = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(start, start + T, device=idx.device)[None]
        cos, sin = self.rope(position_ids)
        if attn_mask is not None:
            if cache is not None or attention_mask is not None:
                raise ValueError("attn_mask replaces the causal mask: pass neither cache nor attention_mask with it")
            mask, is_causal = attn_mask, False
        else:
            key_valid = self._key_valid(attention_mask, cache, start)
            mask, is_causal = self._attention_mask(T, start, key_valid, idx.device)

        x = self.embed(idx)
        for i, layer in enumerate(self.layers):
            if self.checkpoint_every and self.training and i % self.checkpoint_every == 0:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, mask, is_causal, cache, i,
                                                      use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, is_causal, cache, i)
        if cache is not None:
            cache.length += T
        return self.norm(x)

    @staticmethod
    def _key_valid(attention_mask, cache, start):
        """Validity [B, S] of every key position seen so far, or None when nothing was ever padded."""
        if cache is None:
            return None if attention_mask is None else attention_mask.bool()
        if attention_mask is not None:
            if cache.key_valid is None:
                cache.key_valid = torch.ones(attention_mask.shape[0], cache.max_len, dtype=torch.bool,
                                             device=attention_mask.device)
            cache.key_valid[:, start:start + attention_mask.shape[1]] = attention_mask.bool()
        return cache.key_valid

    @staticmethod
    def _attention_mask(T, start, key_valid, device):
        """(bool mask [B|1, 1, T, S] or None, is_causal) for SDPA, S = start + T keys."""
        S = start + T
        if key_valid is None:
            if start == 0:
                return None, T > 1  # plain causal attention, SDPA's fast path
            if T == 1:
                return None, False  # one new token sees every cached key
        q_pos = torch.arange(start, S, device=device)[:, None]
        k_pos = torch.arange(S, device=device)[None, :]
        mask = k_pos <= q_pos  # [T, S]
        if key_valid is not None:
            # A padded query keeps sight of itself so that no softmax row is empty (NaN).
            mask = (mask & key_valid[:, None, :S]) | (k_pos == q_pos)
        return mask.view(-1, 1, T, S), False

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        max_len = max_len or self.config.max_seq_len
        w = self.embed.weight
        return KVCache(self.config, batch_size, max_len, w.device, w.dtype)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def document_layout(idx: torch.Tensor, eos_id: int, restart_positions: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(attn_mask [B, 1, T, T], position_ids [B, T] or None) keeping attention inside each document of
    packed rows [B, T]: a document ends with its EOS token, and the token after an EOS starts the next.

    With restart_positions, RoPE positions start at 0 in every document, as if it were alone; the row's
    first document may have begun in an earlier row, and counts from the row's start.
    """
    is_eos = (idx == eos_id).long()
    return segment_layout(is_eos.cumsum(dim=1) - is_eos, restart_positions)  # an EOS ends its own document


def segment_layout(segments: torch.Tensor, restart_positions: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(attn_mask [B, 1, T, T], position_ids [B, T] or None) for rows [B, T] whose tokens carry the id of
    the sequence they belong to (non-decreasing along a row): each token attends causally within its
    own sequence only, and with restart_positions each sequence's positions start at 0."""
    T = segments.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    mask = (segments[:, :, None] == segments[:, None, :]) & causal
    if not restart_positions:
        return mask[:, None], None
    t = torch.arange(T, device=segments.device).expand_as(segments)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    first = torch.where(starts, t, torch.zeros_like(t)).cummax(dim=1).values
    return mask[:, None], t - first


def lm_loss(model: nn.Module, batch: torch.Tensor, fused: bool = True, document_eos: int | None = None,
            restart_positions: bool = False) -> torch.Tensor:
    """Mean next-token cross-entropy of a [B, T + 1] batch (inputs [:, :-1], targets [:, 1:]).

    `model` may be the Transformer or its FSDP/DDP wrapper: the loss runs inside its forward.
    document_eos: attention stays inside each document (`document_layout`); None: plain causal attention.
    """
    inputs, targets = batch[:, :-1], batch[:, 1:]
    if document_eos is None:
        return model(inputs, targets, fused_loss=fused)
    mask, positions = document_layout(inputs, document_eos, restart_positions)
    return model(inputs, targets, fused_loss=fused, attn_mask=mask, position_ids=positions)
