"""A conversation with a model through its chat template: `compactlm chat` and `generate --chat`.

Each reply renders the whole history with the template (the ids a fine-tune trained on), generates
until the template's end of turn or EOS, and keeps the reply as text in the history. When the
history no longer fits the model's context, the oldest exchanges are dropped (the system prompt stays).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from compactlm.errors import CompactlmError
from compactlm.model.generate import generate
from compactlm.tokenizer.chat import ChatTemplate, encode_chat, stop_ids
from compactlm.tokenizer.tokenizer import DecodeStream


class ChatSession:
    def __init__(self, model, tokenizer, template: ChatTemplate, system: str | None = None,
                 max_new_tokens: int = 256, **sampling):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.system = [{"role": "system", "content": system}] if system else []
        self.history: list[dict] = []
        self.max_new_tokens, self.sampling = max_new_tokens, sampling
        self.stop = stop_ids(tokenizer, template)

    def reset(self) -> None:
        self.history = []

    def prompt_ids(self, user_text: str) -> list[int]:
        """The rendered conversation ending in the assistant's turn; the oldest exchanges are dropped
        until it leaves room for max_new_tokens."""
        room = self.model.config.max_seq_len - self.max_new_tokens
        history = [*self.history, {"role": "user", "content": user_text}]
        while True:
            ids, _ = encode_chat(self.tokenizer, self.template, self.system + history, add_generation_prompt=True)
            if len(ids) <= room:
                return ids
            if len(history) <= 1:
                raise CompactlmError(f"the message and system prompt take {len(ids)} tokens; with "
                                     f"{self.max_new_tokens} new tokens that exceeds the model's context of "
                                     f"{self.model.config.max_seq_len}")
            history = history[2:] if len(history) > 2 else history[1:]  # one exchange: user + assistant

    def reply(self, user_text: str, on_text: Callable[[str], None] | None = None) -> str:
        """The assistant's answer to user_text (streamed to on_text piece by piece), kept in the history."""
        ids = self.prompt_ids(user_text)
        streamed = DecodeStream(self.tokenizer)

        def stream(token: torch.Tensor) -> None:
            if int(token[0]) not in self.stop:
                new = streamed.push(int(token[0]))
                if on_text is not None and new:
                    on_text(new)

        generate(self.model, torch.tensor([ids]), self.max_new_tokens, eos_id=self.stop, on_token=stream,
                 **self.sampling)
        # an end of turn that is not one token (ChatML's "<|im_end|>" in a vocabulary without it) is text
        text = streamed.text.split(self.template.end_of_turn)[0]
        if on_text is not None and text.startswith(streamed.shown) and text != streamed.shown:
            on_text(text[len(streamed.shown):])
        self.history += [{"role": "user", "content": user_text}, {"role": "assistant", "content": text}]
        return text
