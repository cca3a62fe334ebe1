"""Chat templates: conversations rendered to token ids, with the mask of the assistant's tokens.

A template is Jinja, rendered the way transformers' `apply_chat_template` renders it (a sandboxed
environment with trim_blocks and lstrip_blocks; `messages`, `bos_token`, `eos_token`,
`add_generation_prompt`), so the ids equal transformers' on the exported model. Two built-ins:
`zephyr` (the format of TinyLlama-Chat and Zephyr: `<|user|>\\n...</s>\\n<|assistant|>\\n`) and
`chatml` (`<|im_start|>user\\n...<|im_end|>\\n`); or the template stored with a tokenizer.

Message text is never parsed for control tokens: the template is rendered once with a placeholder
for each message, and only the template's own text may turn into special tokens ("</s>" typed by a
user stays text). The text between special tokens is encoded whole, as transformers does, so a
message and the template text around it tokenize together.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from compactlm.errors import CompactlmError

ZEPHYR = ("{% for message in messages %}"
          "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
          "{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")
CHATML = ("{% for message in messages %}"
          "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
BUILTIN_TEMPLATES = {"zephyr": ZEPHYR, "chatml": CHATML}
CHATML_END = "<|im_end|>"
ROLES = ("system", "user", "assistant")
_PLACEHOLDER = "\ue000{}\ue001"
_PLACEHOLDER_RE = re.compile("\ue000(\\d+)\ue001")


class ChatError(CompactlmError):
    pass


@dataclass(frozen=True)
class ChatTemplate:
    source: str  # Jinja
    end_of_turn: str  # the text that closes an assistant turn (trained on, and where generation stops)


def chat_template(tokenizer, name: str = "") -> ChatTemplate:
    """The template called `name` (zephyr, chatml, or a .jinja file), else the tokenizer's own."""
    if not name:
        if not tokenizer.chat_template:
            raise ChatError(f"{tokenizer.path}: the tokenizer has no chat template; choose one "
                            f"({', '.join(BUILTIN_TEMPLATES)} or a .jinja file)")
        source = tokenizer.chat_template
    elif name in BUILTIN_TEMPLATES:
        source = BUILTIN_TEMPLATES[name]
    else:
        try:
            source = Path(name).read_text(encoding="utf-8")
        except OSError as exc:
            raise ChatError(f"chat template {name!r}: not {' or '.join(BUILTIN_TEMPLATES)}, and cannot read it as "
                            f"a file ({exc.strerror})") from None
    eos = _piece(tokenizer, tokenizer.eos_id)
    end = CHATML_END if CHATML_END in source else eos
    if not end:
        raise ChatError(f"{tokenizer.path}: the tokenizer has no EOS token to close assistant turns")
    return ChatTemplate(source, end)


def check_messages(messages) -> list[dict]:
    """The messages as plain dicts, or ChatError saying what is wrong (callers add the file and line)."""
    if not isinstance(messages, list) or not messages:
        raise ChatError("'messages' must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) - {"role", "content"}:
            raise ChatError(f"messages[{i}] must be an object with 'role' and 'content' only")
        if message.get("role") not in ROLES:
            raise ChatError(f"messages[{i}].role {message.get('role')!r}: choose {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise ChatError(f"messages[{i}].content must be a string")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def render_chat(tokenizer, template: ChatTemplate, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as text, exactly as transformers' apply_chat_template(tokenize=False) gives it."""
    return _render(tokenizer, template, messages, add_generation_prompt)


def encode_chat(tokenizer, template: ChatTemplate, messages: list[dict], add_generation_prompt: bool = False
                ) -> tuple[list[int], list[bool]]:
    """(token ids, assistant mask): True on every token of an assistant message and on the end of turn
    that closes it, the tokens SFT learns to produce; False on the rest."""
    messages = check_messages(messages)
    shaped = [{**m, "content": _PLACEHOLDER.format(i)} for i, m in enumerate(messages)]
    skeleton = _render(tokenizer, template, shaped, add_generation_prompt)
    pieces, spans, text = [], [], ""  # pieces: ("text"|"special", str, start); spans: assistant [start, end)
    for i, part in enumerate(_PLACEHOLDER_RE.split(skeleton)):
        if i % 2:  # a message's content: text, never split at special tokens
            message = messages[int(part)]
            pieces.append(("text", message["content"], len(text)))
            end = len(text) + len(message["content"])
            if message["role"] == "assistant":
                spans.append((len(text), end))
            text += message["content"]
        else:
            for kind, chunk in _split_specials(tokenizer, part):
                pieces.append((kind, chunk, len(text)))
                text += chunk
    if text != _render(tokenizer, template, messages, add_generation_prompt):
        raise ChatError("the chat template changes message text (e.g. trims it); compactlm keeps message text "
                        "apart from control tokens and needs it rendered as given")
    spans = [(s, e + len(template.end_of_turn)) if text.startswith(template.end_of_turn, e) else (s, e)
             for s, e in spans]
    ids, starts = _encode_pieces(tokenizer, _merge_text(pieces))
    mask = [any(s <= start < e for s, e in spans) for start in starts]
    return ids, mask


def stop_ids(tokenizer, template: ChatTemplate) -> list[int]:
    """Token ids that end an assistant turn in generation: EOS, and the end of turn if it is one token."""
    ids = {tokenizer.eos_id} if tokenizer.eos_id is not None else set()
    end = tokenizer.special_tokens.get(template.end_of_turn)
    if end is not None:
        ids.add(end)
    return sorted(ids)


# ---- internals ------------------------------------------------------------------------------------
def _piece(tokenizer, token_id) -> str | None:
    return None if token_id is None else tokenizer.id_to_piece(token_id)


def _render(tokenizer, template: ChatTemplate, messages: list[dict], add_generation_prompt: bool) -> str:
    from jinja2 import TemplateError

    try:
        return _compiled(template.source).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=_piece(tokenizer, tokenizer.bos_id) or "", eos_token=_piece(tokenizer, tokenizer.eos_id) or "")
    except TemplateError as exc:
        raise ChatError(f"chat template: {exc}") from None


@functools.lru_cache(maxsize=8)
def _compiled(source: str):
    """A template compiled once (a dataset renders every conversation twice)."""
    from jinja2 import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ChatError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise ChatError(f"chat template: {exc}") from None


def _split_specials(tokenizer, text: str):
    specials = tokenizer.special_tokens
    if not specials:
        yield "text", text
        return
    pattern = "(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")"
    for i, chunk in enumerate(re.split(pattern, text)):
        if chunk:
            yield ("special" if i % 2 else "text"), chunk


def _merge_text(pieces):
    """Adjacent text pieces joined: transformers encodes the text between two special tokens whole."""
    merged = []
    for kind, chunk, start in pieces:
        if kind == "text" and merged and merged[-1][0] == "text":
            merged[-1] = ("text", merged[-1][1] + chunk, merged[-1][2])
        elif chunk:
            merged.append((kind, chunk, start))
    return merged


def _encode_pieces(tokenizer, pieces) -> tuple[list[int], list[int]]:
    """Token ids and the character offset (in the rendered text) at which each token starts."""
    specials = tokenizer.special_tokens
    ids, starts = [], []
    for kind, chunk, start in pieces:
        if kind == "special":
            ids.append(specials[chunk])
            starts.append(start)
            continue
        piece_ids, offsets = tokenizer.encode_with_offsets(chunk)
        ids.extend(piece_ids)
        starts.extend(start + offset for offset in offsets)
    return ids, starts
