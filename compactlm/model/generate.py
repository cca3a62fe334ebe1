"""Autoregressive generation with the KV cache: greedy, temperature, top-k and top-p sampling.

One prefill pass over the prompt fills the cache; every later step feeds one token per sequence
and computes the head for that position only. Prompts of different lengths are left-padded and
described by an attention mask, as in transformers (positions count real tokens only).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from compactlm.errors import CompactlmError
from compactlm.model.transformer import Transformer


class _InputMajorLinear(nn.Module):
    """A bias-free linear layer holding its weight as [in, out]."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight_t = linear.weight.detach().t().contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight_t


def _input_major(linear: nn.Linear) -> _InputMajorLinear:
    """linear's [in, out] copy, made once and kept on the layer until its weight changes."""
    weight = linear.weight
    key = (weight.data_ptr(), weight._version, weight.dtype)  # in-place updates bump _version
    cached = linear.__dict__.get("_decode_copy")
    if cached is None or cached[0] != key:
        cached = (key, _InputMajorLinear(linear))
        linear.__dict__["_decode_copy"] = cached  # a plain attribute: not a submodule, not in state_dict
    return cached[1]


@contextmanager
def decode_layout(model: Transformer) -> Iterator[None]:
    """On the CPU, swap every projection for an [in, out] copy of its weight while decoding.

    Decoding one token is a matrix-vector product per projection, bound by memory bandwidth; MKL's
    kernel streams an [in, out] matrix about twice as fast as PyTorch's native [out, in] one (see
    docs/benchmarks.md). The copies stay with the layers between calls, so that short generations
    do not pay for re-laying out every weight each time (the weights' memory once more); a weight
    that changed since (an optimizer step, a load, a dtype change) is copied again.
    """
    if model.lm_head.weight.device.type != "cpu":
        yield
        return
    swapped = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, nn.Linear)]
    try:
        for parent, name, child in swapped:
            setattr(parent, name, _input_major(child))
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def token_probs(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None) -> torch.Tensor:
    """logits [..., V] -> the float32 distribution sample_next draws from (temperature 0: all mass on the argmax)."""
    if temperature <= 0:
        return torch.nn.functional.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float()
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p; the first always stays.
        drop_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(dim=-1)


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits [B, V] -> next token ids [B]; temperature 0 is greedy (argmax)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = token_probs(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def valid_sampling(temperature: float, top_k: int | None, top_p: float | None) -> bool:
    """Whether sample_next can draw with these settings (the decoding functions name what is wrong)."""
    return temperature >= 0 and (top_k is None or top_k >= 1) and (top_p is None or 0 < top_p <= 1)


def check_context(model: Transformer, prompt_len: int, max_new_tokens: int, whose: str = "the model's") -> None:
    """One line when the prompt and the tokens to generate do not fit the model's context."""
    if prompt_len + max_new_tokens > model.config.max_seq_len:
        raise CompactlmError(f"prompt ({prompt_len}) + max_new_tokens ({max_new_tokens}) exceeds {whose} context "
                             f"of {model.config.max_seq_len} tokens")


@torch.inference_mode()
def generate(model: Transformer, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, attention_mask: torch.Tensor | None = None,
             eos_id: int | Sequence[int] | None = None, seed: int | None = None,
             on_token: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """input_ids [B, T] -> [B, T + N] with N = max_new_tokens.

    attention_mask [B, T]: 1 for real tokens, 0 for left padding. With eos_id (one id, or several that
    all end a sequence, e.g. EOS and a chat template's end of turn), a sequence that produced one is
    continued with it, and generation stops early once every sequence has (the result is then
    shorter). on_token receives each step's new tokens [B] (for streaming).
    """
    T = input_ids.shape[1]
    if max_new_tokens < 1 or not valid_sampling(temperature, top_k, top_p):
        raise CompactlmError(f"generate: max_new_tokens {max_new_tokens} must be >= 1, temperature {temperature} >= 0, "
                             f"top_k {top_k} >= 1 and top_p {top_p} in (0, 1]")
    check_context(model, T, max_new_tokens)
    device = model.embed.weight.device
    input_ids = input_ids.to(device)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)

    position_ids = None
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)
        if bool(attention_mask.all()):
            attention_mask = None  # no padding: the cheaper unmasked path
        else:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    with decode_layout(model):
        return _decode(model, input_ids, max_new_tokens, temperature, top_k, top_p, attention_mask, position_ids,
                       eos_id, generator, on_token)


def _decode(model, input_ids, max_new_tokens, temperature, top_k, top_p, attention_mask, position_ids, eos_id,
            generator, on_token) -> torch.Tensor:
    B, T = input_ids.shape
    device = input_ids.device
    total = T + max_new_tokens
    cache = model.new_cache(B, total)
    logits = model(input_ids, cache=cache, attention_mask=attention_mask, position_ids=position_ids, last_only=True)
    out = torch.empty(B, total, dtype=input_ids.dtype, device=device)
    out[:, :T] = input_ids
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    stop = None if eos_id is None else torch.tensor([eos_id] if isinstance(eos_id, int) else list(eos_id),
                                                    device=device)
    length = T
    for step in range(max_new_tokens):
        token = sample_next(logits[:, -1], temperature, top_k, top_p, generator)
        if stop is not None:
            token = torch.where(finished, out[:, length - 1], token)  # a finished sequence repeats its stop token
            finished |= torch.isin(token, stop)
        out[:, length] = token
        length += 1
        if on_token is not None:
            on_token(token)
        if step == max_new_tokens - 1 or (eos_id is not None and bool(finished.all())):
            break
        if position_ids is not None:
            position_ids = position_ids[:, -1:] + 1
        logits = model(token[:, None], cache=cache, position_ids=position_ids, last_only=True)
    return out[:, :length]
