"""Conversations and preference pairs from jsonl, rendered with the chat template and tokenized.

Rows (one JSON object a line, as Hugging Face chat datasets store them):
- SFT: {"messages": [{"role", "content"}, ...]} or {"prompt": str, "response": str}
- DPO: {"prompt": str or messages, "chosen": str, "rejected": str}

A malformed row is one error naming the file and line. SFT rows become (ids, loss mask) with the loss
on assistant tokens; `pack` fills fixed rows with whole conversations, each tagged with its own
segment id so that attention stays inside it. Truncation is counted, never silent.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compactlm.errors import CompactlmError
from compactlm.tokenizer.chat import ChatError, ChatTemplate, check_messages, encode_chat


class FinetuneDataError(CompactlmError):
    pass


@dataclass
class Encoded:
    """Examples as token ids with their loss masks, and what encoding had to cut or drop."""

    examples: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (ids int64, mask bool)
    truncated: int = 0  # examples cut to the row length
    dropped: int = 0  # examples left with no token to learn from after the cut

    @functools.cached_property
    def hash(self) -> str:
        """Of the examples as encoded (read once they are complete: resume and the DPO cache check it)."""
        digest = hashlib.sha256()
        for ids, mask in self.examples:
            digest.update(ids.tobytes())
            digest.update(mask.tobytes())
        return digest.hexdigest()


def read_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line; one error line for the first bad one."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise FinetuneDataError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise FinetuneDataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FinetuneDataError(f"{path}:{number}: not JSON ({exc.msg}, column {exc.colno})") from None
        if not isinstance(row, dict):
            raise FinetuneDataError(f"{path}:{number}: a row must be a JSON object")
        rows.append((number, row))
    if not rows:
        raise FinetuneDataError(f"{path}: no rows")
    return rows


def conversation(row: dict) -> list[dict]:
    """The messages of an SFT row, either form."""
    if "messages" in row:
        if set(row) - {"messages"}:
            raise ChatError(f"unexpected keys beside 'messages': {', '.join(sorted(set(row) - {'messages'}))}")
        messages = check_messages(row["messages"])
    elif set(row) == {"prompt", "response"}:
        messages = check_messages([{"role": "user", "content": row["prompt"]},
                                   {"role": "assistant", "content": row["response"]}])
    else:
        raise ChatError("expected {\"messages\": [...]} or {\"prompt\": ..., \"response\": ...}, got keys "
                        f"{', '.join(sorted(row)) or '(none)'}")
    if not any(m["role"] == "assistant" for m in messages):
        raise ChatError("no assistant message to learn from")
    return messages


def preference(row: dict) -> tuple[list[dict], str, str]:
    """(prompt messages, chosen, rejected) of a DPO row."""
    if set(row) != {"prompt", "chosen", "rejected"}:
        raise ChatError(f"expected keys prompt, chosen, rejected; got {', '.join(sorted(row)) or '(none)'}")
    prompt = row["prompt"]
    messages = check_messages([{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt)
    if messages[-1]["role"] != "user":
        raise ChatError("the prompt must end with a user message")
    for key in ("chosen", "rejected"):
        if not isinstance(row[key], str):
            raise ChatError(f"'{key}' must be a string")
    return messages, row["chosen"], row["rejected"]


def encode_sft(path: str | Path, tokenizer, template: ChatTemplate, max_len: int,
               rows: list[tuple[int, dict]] | None = None) -> Encoded:
    """Every conversation of an SFT file as (ids, assistant mask), cut to max_len tokens. rows: the
    file's `read_jsonl`, when the caller has read it already."""
    out = Encoded()
    for number, row in rows if rows is not None else read_jsonl(path):
        ids, mask = _at_line(path, number, lambda: encode_chat(tokenizer, template, conversation(row)))
        _add(out, ids, mask, max_len)
    return out


def encode_pairs(path: str | Path, tokenizer, template: ChatTemplate, max_len: int) -> Encoded:
    """Every DPO pair as two examples, chosen then rejected: (ids, mask over the response's tokens)."""
    out = Encoded()
    for number, row in read_jsonl(path):
        def encode():
            prompt, chosen, rejected = preference(row)
            start = len(encode_chat(tokenizer, template, prompt, add_generation_prompt=True)[0])
            sides = []
            for response in (chosen, rejected):
                ids, mask = encode_chat(tokenizer, template, prompt + [{"role": "assistant", "content": response}])
                sides.append((ids, [m and i >= start for i, m in enumerate(mask)]))
            return sides

        sides = _at_line(path, number, encode)
        cut = [(np.asarray(ids[:max_len], np.int64), np.asarray(mask[:max_len], bool)) for ids, mask in sides]
        if any(len(ids) > max_len for ids, _ in sides):
            out.truncated += 1
        if not all(mask[1:].any() for _, mask in cut):
            out.dropped += 1
            continue
        out.examples.extend(cut)
    return out


def _at_line(path, number, encode):
    try:
        return encode()
    except ChatError as exc:
        raise FinetuneDataError(f"{path}:{number}: {exc}") from None


def _add(out: Encoded, ids: list[int], mask: list[bool], max_len: int) -> None:
    if len(ids) > max_len:
        out.truncated += 1
        ids, mask = ids[:max_len], mask[:max_len]
    if not any(mask[1:]):  # the first token is never a target
        out.dropped += 1
        return
    out.examples.append((np.asarray(ids, np.int64), np.asarray(mask, bool)))


def pad_id(tokenizer) -> int:
    """The id padding is filled with (EOS, else 0): never a target, so any id would do."""
    return tokenizer.eos_id if tokenizer.eos_id is not None else 0


@dataclass
class Packed:
    """Rows [N, L] of whole examples: tokens, loss mask and the segment (example) id of every token."""

    tokens: np.ndarray
    mask: np.ndarray
    segments: np.ndarray


def pack(examples: list[tuple[np.ndarray, np.ndarray]], row_len: int, pad_id: int = 0) -> Packed:
    """First-fit packing in order: each example goes into the first row with room for all of it. The
    unused tail of a row is padding, in a segment of its own with no loss."""
    rows: list[list[tuple[np.ndarray, np.ndarray]]] = []
    room: list[int] = []
    for ids, mask in examples:
        for r, free in enumerate(room):
            if len(ids) <= free:
                rows[r].append((ids, mask))
                room[r] -= len(ids)
                break
        else:
            rows.append([(ids, mask)])
            room.append(row_len - len(ids))
    tokens = np.full((len(rows), row_len), pad_id, np.int64)
    masks = np.zeros((len(rows), row_len), bool)
    segments = np.zeros((len(rows), row_len), np.int64)
    for r, row in enumerate(rows):
        at = 0
        for s, (ids, mask) in enumerate(row):
            tokens[r, at:at + len(ids)], masks[r, at:at + len(ids)], segments[r, at:at + len(ids)] = ids, mask, s
            at += len(ids)
        segments[r, at:] = len(row)
    return Packed(tokens, masks, segments)
