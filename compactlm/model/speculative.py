"""Speculative decoding: a small draft model proposes, the target model verifies (batch size 1).

Leviathan et al. 2023, "Fast Inference from Transformers via Speculative Decoding"; Chen et al. 2023.
Each round the draft proposes K tokens one at a time, and the target scores all of them in one forward
pass: decoding one token is bound by reading the weights, so K + 1 positions cost the target far less
than K + 1 steps (on a 2-core CPU, a 27M-parameter target takes ~1.5x one step for 2 to 7). Draft
token i is accepted with probability min(1, p_i / q_i); the first rejected one is replaced by a sample
of normalize(max(0, p - q)), and when all K pass the target adds a bonus token of its own. The output
is distributed exactly as the target's own sampling (with its temperature, top-k and top-p), and at
temperature 0 it is the target's greedy decode, token for token.

Both KV caches only ever hold the sequence's accepted prefix: rejected positions are dropped by
lowering `cache.length` (the next forward overwrites them). Each forward feeds the tokens a model has
not seen yet, so no separate prefill is needed and the draft catches up with the target's tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from compactlm.errors import CompactlmError
from compactlm.model.generate import check_context, decode_layout, token_probs, valid_sampling
from compactlm.model.transformer import KVCache, Transformer


@dataclass
class SpeculativeStats:
    proposed: int = 0      # draft tokens the target verified
    accepted: int = 0      # of those, the ones it kept
    target_calls: int = 0  # target forward passes (plain decoding needs one per token)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


@torch.inference_mode()
def speculative_generate(target: Transformer, draft: Transformer, input_ids: torch.Tensor, max_new_tokens: int,
                         draft_tokens: int = 4, temperature: float = 0.0, top_k: int | None = None,
                         top_p: float | None = None, eos_id: int | None = None, seed: int | None = None,
                         on_token: Callable[[torch.Tensor], None] | None = None,
                         ) -> tuple[torch.Tensor, SpeculativeStats]:
    """input_ids [1, T] -> ([1, T + N], stats), N <= max_new_tokens (fewer only when eos_id stops it).

    Same arguments and output as `generate` for one sequence, plus the draft model and the number of
    tokens it proposes per round. on_token receives each emitted token [1], in order.
    """
    _check_arguments(target, draft, input_ids, max_new_tokens, draft_tokens, temperature, top_k, top_p)
    device = target.embed.weight.device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    sampling = (temperature, top_k, top_p)
    # A model drafting for itself (a test of the rule: everything is accepted) is laid out once.
    with decode_layout(target), decode_layout(draft) if draft is not target else nullcontext():
        ids, stats = _speculate(target, draft, input_ids[0].to(device), max_new_tokens, draft_tokens, sampling,
                                eos_id, generator, on_token)
    return ids[None], stats


def _check_arguments(target, draft, input_ids, max_new_tokens, draft_tokens, temperature, top_k, top_p) -> None:
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise CompactlmError("speculative_generate: input_ids must be one sequence [1, T], "
                             f"got {list(input_ids.shape)}")
    if max_new_tokens < 1 or draft_tokens < 1 or not valid_sampling(temperature, top_k, top_p):
        raise CompactlmError(f"speculative_generate: max_new_tokens {max_new_tokens} and draft_tokens {draft_tokens} "
                             f"must be >= 1, temperature {temperature} >= 0, top_k {top_k} >= 1 and top_p {top_p} "
                             "in (0, 1]")
    if target.config.vocab_size != draft.config.vocab_size:
        raise CompactlmError(f"the draft model's vocabulary ({draft.config.vocab_size} tokens) differs from the "
                             f"target's ({target.config.vocab_size}): speculative decoding needs the same tokenizer")
    if draft.embed.weight.device != target.embed.weight.device:
        raise CompactlmError(f"the draft model is on {draft.embed.weight.device}, the target on "
                             f"{target.embed.weight.device}: put both on one device")
    for role, model in (("target", target), ("draft", draft)):
        check_context(model, input_ids.shape[1], max_new_tokens, whose=f"the {role} model's")


def _speculate(target, draft, prompt, max_new_tokens, draft_tokens, sampling, eos_id, generator, on_token):
    T = prompt.shape[0]
    total = T + max_new_tokens
    seq = torch.empty(total, dtype=prompt.dtype, device=prompt.device)
    seq[:T] = prompt
    length = T
    target_cache, draft_cache = target.new_cache(1, total), draft.new_cache(1, total)
    stats = SpeculativeStats()
    while length < total:
        # One token of every round comes from the target (correction or bonus): leave room for it.
        k = min(draft_tokens, total - length - 1)
        drafted, q = _propose(draft, draft_cache, seq[draft_cache.length:length], k, sampling, generator)
        # The target scores the positions after its unseen tokens (at least the last one) and every draft.
        fed = torch.cat([seq[target_cache.length:length], drafted])
        n, token = _verify(_logits(target, target_cache, fed, k + 1), q, drafted, sampling, generator)
        stats.proposed += k
        stats.accepted += n
        stats.target_calls += 1
        # Keep what both caches saw of the accepted prefix; `token` itself is fed next round.
        target_cache.length = length + n
        draft_cache.length = min(draft_cache.length, length + n)
        for new in torch.cat([drafted[:n], token]):
            seq[length] = new
            length += 1
            if on_token is not None:
                on_token(new.view(1))
            if eos_id is not None and int(new) == eos_id:
                return seq[:length], stats
    return seq[:length], stats


def _logits(model: Transformer, cache: KVCache, tokens: torch.Tensor, last: int) -> torch.Tensor:
    """Feed tokens [S] after the cache; the head runs on the last `last` positions only -> [last, V]."""
    hidden = model.hidden_states(tokens[None], cache=cache)
    return model.lm_head(hidden[0, -last:])


def _propose(draft, cache, unseen, k, sampling, generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """k draft tokens [k], and the distributions q [k, V] they were sampled from (None when greedy).

    The last draft token is never fed: whether the draft needs it depends on the target's verdict.
    """
    greedy = sampling[0] == 0
    tokens, probs = [], []
    for i in range(k):
        logits = _logits(draft, cache, unseen if i == 0 else tokens[-1], 1)[0]
        if greedy:  # the argmax itself: no softmax over the vocabulary and no draw, per draft token
            tokens.append(logits.argmax().view(1))
            continue
        q = token_probs(logits, *sampling)
        tokens.append(torch.multinomial(q, 1, generator=generator))
        probs.append(q)
    if not tokens:
        return unseen.new_empty(0), None if greedy else torch.empty(0, draft.config.vocab_size, device=unseen.device)
    return torch.cat(tokens), None if greedy else torch.stack(probs)


def _verify(target_logits: torch.Tensor, q: torch.Tensor | None, drafted: torch.Tensor, sampling,
            generator) -> tuple[int, torch.Tensor]:
    """The rejection rule: (how many draft tokens to keep, the target's token [1] that follows them).

    target_logits [k + 1, V] come after each prefix, q [k, V] are the draft's distributions. Greedy
    (q is None): keep the draft while it agrees with the target's argmax, then take the target's argmax
    (what the sampling rule below reduces to when both distributions are one-hot).
    """
    k = drafted.shape[0]
    if q is None:
        best = target_logits.argmax(dim=-1)
        disagree = (best[:k] != drafted).nonzero()
        n = int(disagree[0]) if len(disagree) else k
        return n, best[n].view(1)
    p = token_probs(target_logits, *sampling)
    rows = torch.arange(k, device=p.device)
    p_drafted, q_drafted = p[rows, drafted], q[rows, drafted]
    # u < p/q, written without dividing: q > 0 for every token the draft sampled.
    u = torch.rand(k, generator=generator, device=p.device)
    rejected = (u * q_drafted >= p_drafted).nonzero()
    n = int(rejected[0]) if len(rejected) else k
    if n == k:
        return n, torch.multinomial(p[k], 1, generator=generator)
    residual = (p[n] - q[n]).clamp(min=0)
    # Rejection implies p < q somewhere, so p > q elsewhere; rounding could still leave nothing.
    if float(residual.sum()) <= 0:
        residual = p[n]
    return n, torch.multinomial(residual / residual.sum(), 1, generator=generator)
