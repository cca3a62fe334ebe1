"""Perplexity and bits per byte of held-out text files.

Every document is tokenised without special tokens and scored in disjoint windows of the model's
context, the first token conditioned on BOS (EOS for tokenizers without one: compactlm's own
training data separates documents with EOS), each later window on the token before it, which is
lm-eval's rolling scheme (loglikelihood_rolling). Then

    perplexity    = exp(total NLL in nats / tokens)
    bits per byte = total NLL in bits / UTF-8 bytes of the text

Perplexity depends on the tokenizer; bits per byte does not, so it compares models with different
vocabularies. A model that gives every token the same probability scores log2(vocab) bits per
token, i.e. log2(vocab) / (bytes per token) bits per byte.

Files: `.jsonl` (one document per line, its "text" field), anything else is read as one UTF-8 text.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from compactlm.errors import CompactlmError


class TextError(CompactlmError):
    pass


def read_documents(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise TextError(f"{path}: no such text file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TextError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    if path.suffix == ".jsonl":
        docs = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                docs.append(json.loads(line)["text"])
            except (ValueError, KeyError, TypeError):
                raise TextError(f"{path}:{n}: expected a JSON object with a \"text\" field") from None
        return [d for d in docs if d]
    return [text] if text else []


def text_perplexity(lm, files: list[str | Path], progress: bool = True) -> dict:
    """{"files": [{file, documents, tokens, bytes, nll_nats, perplexity, bits_per_byte, bytes_per_token}],
    "total": {...}} for a CompactLM backend `lm` (its batching and shared-work scoring)."""
    tok = lm.tokenizer
    rows = []
    for path in files:
        docs = read_documents(path)
        if not docs:
            raise TextError(f"{path}: no text")
        windows = []
        n_tokens = n_bytes = 0
        for doc in docs:
            ids = tok.encode(doc)
            n_tokens += len(ids)
            n_bytes += len(doc.encode("utf-8"))
            windows += lm.rolling_windows(ids)
        scores = lm.token_loglikelihoods(windows, progress=progress)
        nll = -sum(lp for lp, _ in scores)
        rows.append(_row(str(path), len(docs), n_tokens, n_bytes, nll))
    total = _row("total", sum(r["documents"] for r in rows), sum(r["tokens"] for r in rows),
                 sum(r["bytes"] for r in rows), sum(r["nll_nats"] for r in rows))
    return {"files": rows, "total": total, "vocab_size": tok.vocab_size}


def _row(name: str, documents: int, tokens: int, n_bytes: int, nll: float) -> dict:
    return {"file": name, "documents": documents, "tokens": tokens, "bytes": n_bytes, "nll_nats": nll,
            "perplexity": math.exp(nll / tokens) if tokens else float("nan"),
            "bits_per_byte": nll / math.log(2) / n_bytes if n_bytes else float("nan"),
            "bytes_per_token": n_bytes / tokens if tokens else float("nan")}


def format_table(result: dict) -> str:
    lines = ["| file | tokens | bytes | bytes/token | perplexity | bits per byte |", "|---|---|---|---|---|---|"]
    rows = result["files"] + ([result["total"]] if len(result["files"]) > 1 else [])
    for r in rows:
        lines.append(f"| {r['file']} | {r['tokens']:,} | {r['bytes']:,} | {r['bytes_per_token']:.3f} | "
                     f"{r['perplexity']:.3f} | {r['bits_per_byte']:.4f} |")
    return "\n".join(lines) + "\n"
