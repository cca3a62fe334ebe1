"""The `compactlm` model backend for lm-evaluation-harness.

Scores equal lm-eval's own `hf` backend on the exported Hugging Face directory: the same
tokenisation (context/continuation split, trailing spaces moved to the continuation, BOS added
exactly when the Hugging Face tokenizer adds it), the same left truncation to the model's context,
the same rolling windows for perplexity and the same stop-sequence handling for generation. What
differs is how the work is done:

* **Shared contexts are computed once.** The choices of a multiple-choice question share their
  context. Requests are grouped by context and each group is packed into one sequence
  `context | choice 1 | choice 2 | ...` with a tree-shaped attention mask (every choice sees the
  context and itself, never another choice) and position ids that restart after the context for
  every choice. A 4-choice question costs one context instead of four.
* **The head runs only where a score is read.** Only the positions that predict continuation
  tokens go through the (vocabulary-sized) output head and the log-softmax.
* Batches are filled longest first, like lm-eval's, so the first batch shows any memory problem.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval import utils as lm_utils
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text

from compactlm.errors import CompactlmError

eval_logger = logging.getLogger(__name__)
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def _as_bool(value) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise CompactlmError(f"expected true or false, got {value!r}")


@register_model("compactlm")
class CompactLM(TemplateLM):
    """lm-eval `LM` over a compactlm model.

    `pretrained`: a compactlm checkpoint or Hugging Face Llama directory (from_pretrained), or pass
    `model=` and `tokenizer=` objects directly. `batch_size` counts sequences per forward pass, as
    in the hf backend; here a sequence is a packed context with all its continuations (at most twice
    the context window long), so one batch holds the choices of up to `batch_size` questions.
    `add_bos_token`: None (default) adds BOS exactly when the exported Hugging Face tokenizer
    would, as lm-eval's `hf` backend does.
    """

    backend = "causal"

    def __init__(self, pretrained: str | None = None, *, model=None, tokenizer=None, device: str | None = None,
                 dtype: str | torch.dtype | None = None, batch_size: int | str = 16, max_batch_size: int | None = None,
                 max_length: int | None = None, max_gen_toks: int = 256, add_bos_token: bool | str | None = None,
                 prefix_token_id: int | None = None, progress: bool | str = True, head_rows: int = 512,
                 **unused: Any):
        super().__init__()
        from compactlm.checkpoint.layout import require_checkpoint
        from compactlm.checkpoint.model import from_pretrained
        from compactlm.tokenizer.tokenizer import require_tokenizer

        if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
            eval_logger.warning("device %s requested but CUDA is not available: using the CPU", device)
            device = "cpu"  # as lm-eval's hf backend does (lm_eval's CLI defaults to --device cuda)
        if isinstance(dtype, str):
            if dtype == "auto":
                dtype = None
            elif dtype not in _DTYPES:
                raise CompactlmError(f"unknown dtype {dtype!r} (float32, bfloat16, float16 or auto)")
            else:
                dtype = _DTYPES[dtype]
        if model is None:
            if pretrained is None:
                raise CompactlmError("the compactlm backend needs pretrained=PATH (or model= and tokenizer=)")
            path = require_checkpoint(pretrained)
            model = from_pretrained(path, device=device, dtype=dtype)
            tokenizer = tokenizer or require_tokenizer(path)
        else:
            if tokenizer is None:
                raise CompactlmError("model= needs tokenizer= as well")
            if device is not None:
                model = model.to(device)
            if dtype is not None:
                model = model.to(dtype)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self._pipeline = None
        self._device = self.model.embed.weight.device
        self.pretrained = str(pretrained) if pretrained is not None else None
        if str(batch_size).startswith("auto"):
            batch_size = 16  # no automatic search: requests are small and a group's context is shared
        self.batch_size = max(1, int(batch_size))
        self._max_length = int(max_length) if max_length else self.model.config.max_seq_len
        if self._max_length > self.model.config.max_seq_len:
            raise CompactlmError(f"max_length {self._max_length} exceeds the model's context of "
                                 f"{self.model.config.max_seq_len} tokens")
        self._max_gen_toks = int(max_gen_toks)
        self.add_bos_token = _as_bool(add_bos_token)
        self.custom_prefix_token_id = None if prefix_token_id is None else int(prefix_token_id)
        self.progress = bool(_as_bool(progress))
        self.head_rows = int(head_rows)
        if tokenizer.eos_id is None and tokenizer.bos_id is None:
            raise CompactlmError(f"{tokenizer.path}: the tokenizer has neither BOS nor EOS; lm-eval needs one "
                                 "to condition on when a context is empty")

    # ---- what lm-eval asks of a model ---------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id if self.tokenizer.eos_id is not None else self.tokenizer.bos_id

    @property
    def prefix_token_id(self) -> int:
        if self.custom_prefix_token_id is not None:
            return self.custom_prefix_token_id
        return self.tokenizer.bos_id if self.tokenizer.bos_id is not None else self.tokenizer.eos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def device(self) -> torch.device:
        return self._device

    # ---- tokenisation: as transformers' tokenizer of the exported directory does it -------------------------
    def _hf_tokenizer(self):
        """The `tokenizers` pipeline transformers runs for the exported directory.

        A SentencePiece model is exported as the tokenizer.json that compactlm converts from it (BOS
        prepended by its post-processor, "<s>" in text kept as text); using the same pipeline here
        makes encoding and decoding, down to invalid byte sequences, identical to the hf backend's.
        """
        if self._pipeline is None:
            if self.tokenizer.kind == "sentencepiece":
                from tokenizers import Tokenizer as HFTokenizer

                from compactlm.tokenizer.tokenizer import sentencepiece_to_hf_json

                self._pipeline = HFTokenizer.from_str(sentencepiece_to_hf_json(self.tokenizer.model_bytes))
                self._pipeline.encode_special_tokens = True  # split_special_tokens in the exported config
            else:
                self._pipeline = self.tokenizer._hf
        return self._pipeline

    def _piece(self, token_id: int) -> str:
        """A special token's text, as `tokenizer.decode([id], skip_special_tokens=False)` gives it."""
        return self._hf_tokenizer().decode([token_id], skip_special_tokens=False)

    def _encode(self, text: str, special: bool) -> list[int]:
        return self._hf_tokenizer().encode(text, add_special_tokens=special).ids

    def _default_special(self, first: str) -> bool:
        if first.startswith(self._piece(self.prefix_token_id)):
            return False  # the text already starts with BOS
        return True if self.add_bos_token is None else self.add_bos_token

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs) -> list[int]:
        if add_special_tokens is None:
            special = self._default_special(string)
        else:
            special = add_special_tokens
        ids = self._encode(string, special)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        return self._hf_tokenizer().decode(list(tokens), skip_special_tokens=skip_special_tokens)

    # ---- log-likelihoods ------------------------------------------------------------------------------------
    def token_loglikelihoods(self, windows: list[tuple[list[int], list[int]]],
                             progress: bool = True) -> list[tuple[float, bool]]:
        """(context ids, continuation ids) -> (log p(continuation | context), is it the greedy choice?),
        batched and packed as for lm-eval's requests: the entry point for callers outside lm-eval."""
        return self._loglikelihood_tokens([(None, c, t) for c, t in windows], disable_tqdm=not progress)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: ((context, continuation) | None, context_ids, continuation_ids) -> (log p, greedy?)."""
        L = self.max_length
        groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
        for i, (_, context, continuation) in enumerate(requests):
            if not continuation:
                raise CompactlmError("lm-eval sent an empty continuation")
            if len(continuation) > L:
                raise CompactlmError(f"a continuation of {len(continuation)} tokens exceeds the context of {L}")
            # As lm-eval's hf backend: keep the last L + 1 tokens of context + continuation.
            window = (list(context) + list(continuation))[-(L + 1):]
            key = tuple(window[:len(window) - len(continuation)])
            groups.setdefault(key, []).append((i, list(continuation)))

        rows = self._pack_rows(groups)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="loglikelihood requests", disable=disable_tqdm or not self.progress,
                   leave=False)
        batch: list = []
        count = 0
        pending: list = []  # trunk outputs waiting for the head: (picked hidden rows, targets, owners)
        pending_rows = 0
        for n, row in enumerate(rows):
            batch.append(row)
            count += len(row[1])
            if len(batch) >= self.batch_size or n == len(rows) - 1:
                pending.append(self._trunk(batch))
                pending_rows += pending[-1][0].shape[0]
                # The head (vocabulary x d_model) is read once for many trunk batches: for short
                # continuations reading its weight costs more than the few rows it is applied to.
                if pending_rows >= self.head_rows or n == len(rows) - 1:
                    self._head(pending, results)
                    pending, pending_rows = [], 0
                bar.update(count)
                batch, count = [], 0
        bar.close()
        for i, (request, _, _) in enumerate(requests):
            if request is not None:
                self.cache_hook.add_partial("loglikelihood", request, results[i])
        return results  # type: ignore[return-value]

    def _pack_rows(self, groups) -> list[tuple[list[int], list[tuple[int, list[int]]]]]:
        """One row per context (split when its choices make it longer than twice the context window),
        longest first."""
        cap = max(2 * self.max_length, 256)
        rows = []
        for context, conts in groups.items():
            context = list(context)
            current, length = [], len(context)
            for i, cont in conts:
                extra = len(cont) - 1
                if current and length + extra > cap:
                    rows.append((context, current))
                    current, length = [], len(context)
                current.append((i, cont))
                length += extra
            rows.append((context, current))
        rows.sort(key=lambda r: -(len(r[0]) + sum(len(c) - 1 for _, c in r[1])))
        return rows

    @torch.inference_mode()
    def _trunk(self, rows):
        """Run packed rows through the trunk; return the hidden states that predict continuation tokens,
        the tokens they predict and, per request, (index, number of tokens)."""
        device = self.device
        lengths = [len(ctx) + sum(len(c) - 1 for _, c in conts) for ctx, conts in rows]
        B, T = len(rows), max(lengths)
        tokens = torch.zeros(B, T, dtype=torch.long)
        positions = torch.zeros(B, T, dtype=torch.long)
        segments = torch.full((B, T), -1, dtype=torch.long)  # 0 context, k+1 choice k, -1 padding
        sources_b, sources_t, targets, owners = [], [], [], []
        for b, (ctx, conts) in enumerate(rows):
            c = len(ctx)
            tokens[b, :c] = torch.tensor(ctx)
            positions[b, :c] = torch.arange(c)
            segments[b, :c] = 0
            offset = c
            for k, (i, cont) in enumerate(conts):
                m = len(cont) - 1  # the last continuation token is predicted, never fed
                if m:
                    tokens[b, offset:offset + m] = torch.tensor(cont[:-1])
                    positions[b, offset:offset + m] = torch.arange(c, c + m)
                    segments[b, offset:offset + m] = k + 1
                # Token 0 of the continuation is predicted at the context's last position, token j
                # at the choice's own position j - 1.
                src = [c - 1, *range(offset, offset + m)]
                sources_b += [b] * len(src)
                sources_t += src
                targets += cont
                owners.append((i, len(cont)))
                offset += m
        seg_q, seg_k = segments[:, :, None], segments[:, None, :]
        mask = ((seg_k == 0) | (seg_k == seg_q)) & (positions[:, None, :] <= positions[:, :, None]) & (seg_k >= 0)
        mask |= torch.eye(T, dtype=torch.bool)[None]  # padded queries see themselves: no empty softmax row
        hidden = self.model.hidden_states(tokens.to(device), position_ids=positions.to(device),
                                          attn_mask=mask[:, None].to(device))
        picked = hidden[torch.tensor(sources_b, device=device), torch.tensor(sources_t, device=device)]
        return picked, targets, owners

    @torch.inference_mode()
    def _head(self, pending, results) -> None:
        picked = torch.cat([p for p, _, _ in pending])
        target_ids = torch.tensor([t for _, targets, _ in pending for t in targets], device=self.device)
        logprobs = F.log_softmax(self.model.lm_head(picked).float(), dim=-1)
        token_lp = logprobs.gather(1, target_ids[:, None]).squeeze(1).double().cpu()
        greedy = (logprobs.argmax(dim=-1) == target_ids).cpu()
        start = 0
        for _, _, owners in pending:
            for i, n in owners:
                results[i] = (float(token_lp[start:start + n].sum()), bool(greedy[start:start + n].all()))
                start += n

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Sum of log-likelihoods of whole texts in disjoint windows of max_length (lm-eval's scheme)."""
        windows, owners = [], []
        for n, (string,) in enumerate(req.args for req in requests):
            for context, continuation in self.rolling_windows(self.tok_encode(string)):
                windows.append((None, context, continuation))
                owners.append(n)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for n, (lp, _) in zip(owners, scores):
            totals[n] += lp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def rolling_windows(self, token_ids: list[int]) -> list[tuple[list[int], list[int]]]:
        return [lm_utils.make_disjoint_window(w) for w in lm_utils.get_rolling_token_windows(
            token_list=token_ids, prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1)]

    # ---- generation -----------------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        args = [req.args for req in requests]
        results: list[str | None] = [None] * len(args)
        eos_text = self._piece(self.eot_token_id)
        by_kwargs: dict[str, list[int]] = {}
        for i, (_, gen_kwargs) in enumerate(args):
            by_kwargs.setdefault(repr(sorted(gen_kwargs.items())), []).append(i)
        bar = tqdm(total=len(args), desc="generate_until requests", disable=disable_tqdm or not self.progress,
                   leave=False)
        for indices in by_kwargs.values():
            kwargs = normalize_gen_kwargs(copy.deepcopy(args[indices[0]][1]), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
            max_gen_toks = int(kwargs.pop("max_gen_toks"))
            max_ctx_len = self.max_length - max_gen_toks
            if max_ctx_len <= 0:
                raise CompactlmError(f"max_gen_toks {max_gen_toks} leaves no room for a prompt in the model's "
                                     f"context of {self.max_length} tokens")
            indices = sorted(indices, key=lambda i: (-len(self.tok_encode(args[i][0])), args[i][0]))
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                contexts = [args[i][0] for i in chunk]
                special = self._default_special(contexts[0])  # as hf's tok_batch_encode: the first decides
                prompts = [self._encode(c, special)[-max_ctx_len:] for c in contexts]
                outputs = self._greedy(prompts, max_gen_toks, until, kwargs)
                for i, context, text in zip(chunk, contexts, outputs):
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", (context, args[i][1]), text)
                bar.update(len(chunk))
        bar.close()
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _greedy(self, prompts: list[list[int]], max_new: int, until: list[str], kwargs: dict) -> list[str]:
        """Left-padded batch decoding with the KV cache; a sequence stops at EOS or once a stop string shows."""
        from compactlm.model.generate import decode_layout, sample_next

        device, model = self.device, self.model
        B, T = len(prompts), max(len(p) for p in prompts)
        ids = torch.zeros(B, T, dtype=torch.long)
        valid = torch.zeros(B, T, dtype=torch.long)
        for b, p in enumerate(prompts):
            ids[b, T - len(p):] = torch.tensor(p)
            valid[b, T - len(p):] = 1
        ids, valid = ids.to(device), valid.to(device)
        padded = not bool(valid.all())
        attention_mask = valid if padded else None
        position_ids = (valid.cumsum(-1) - 1).clamp(min=0) if padded else None
        temperature = float(kwargs.get("temperature", 0.0) or 0.0) if kwargs.get("do_sample") else 0.0
        generator = None
        if temperature > 0:
            generator = torch.Generator(device=device).manual_seed(int(kwargs.get("seed", 1234)))
        eos = self.tokenizer.eos_id
        generated: list[list[int]] = [[] for _ in range(B)]
        done = [False] * B
        stops = [s for s in until if s]
        with decode_layout(model):
            cache = model.new_cache(B, T + max_new)
            logits = model(ids, cache=cache, attention_mask=attention_mask, position_ids=position_ids, last_only=True)
            for step in range(max_new):
                token = sample_next(logits[:, -1], temperature, kwargs.get("top_k"), kwargs.get("top_p"), generator)
                for b, t in enumerate(token.tolist()):
                    if done[b]:
                        continue
                    if eos is not None and t == eos:
                        done[b] = True
                        continue
                    generated[b].append(t)
                    if stops:
                        text = self.tok_decode(generated[b][-64:]) if len(generated[b]) > 64 else None
                        tail = text if text is not None else self.tok_decode(generated[b])
                        if any(s in tail for s in stops):
                            done[b] = True
                if all(done) or step == max_new - 1:
                    break
                if position_ids is not None:
                    position_ids = position_ids[:, -1:] + 1
                logits = model(token[:, None], cache=cache, position_ids=position_ids, last_only=True)
        return [postprocess_generated_text(self.tok_decode(g), until, None) for g in generated]
