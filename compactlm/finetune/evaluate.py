"""How a chat model does on held-out conversations: `compactlm eval --checkpoint CKPT --chat FILE`.

- the loss on the assistant's tokens (the SFT objective's own validator, so it is the number
  fine-tuning logs as val_loss);
- greedy replies to each conversation's last user turn: the share that end their turn (the
  template's end of turn or EOS within the token budget), and a few samples to read.
"""

from __future__ import annotations

import torch

from compactlm.checkpoint.model import from_pretrained
from compactlm.finetune.data import conversation, encode_sft, pack, pad_id, read_jsonl
from compactlm.finetune.objectives import SFT
from compactlm.model.generate import generate
from compactlm.tokenizer.chat import chat_template, encode_chat, stop_ids
from compactlm.tokenizer.tokenizer import require_tokenizer


def evaluate_chat(checkpoint, path, template_name: str = "", max_new_tokens: int = 64, samples: int = 3,
                  batch_size: int = 16, device=None) -> dict:
    model = from_pretrained(checkpoint, device=device)
    tokenizer = require_tokenizer(checkpoint)
    template = chat_template(tokenizer, template_name)
    row_len = model.config.max_seq_len + 1
    rows = read_jsonl(path)
    encoded = encode_sft(path, tokenizer, template, row_len, rows)
    device = model.embed.weight.device
    packed = pack(encoded.examples, row_len, pad_id(tokenizer))
    loss = SFT(packed, packed, 0, encoded.hash, fused=False).validator(0, batch_size, device, None)(model)["val_loss"]

    stop = stop_ids(tokenizer, template)
    ended, shown = 0, []
    for messages in (conversation(row) for _, row in rows):
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        prompt, _ = encode_chat(tokenizer, template, messages[:last_user + 1], add_generation_prompt=True)
        budget = min(max_new_tokens, model.config.max_seq_len - len(prompt))
        if budget < 1:
            continue
        out = generate(model, torch.tensor([prompt]), budget, eos_id=stop)[0, len(prompt):].tolist()
        finished = bool(out) and out[-1] in stop
        ended += finished
        if len(shown) < samples:
            reply = tokenizer.decode(out[:-1] if finished else out)
            reference = next((m["content"] for m in messages[last_user + 1:] if m["role"] == "assistant"), "")
            shown.append({"user": messages[last_user]["content"], "reference": reference, "reply": reply,
                          "ended_turn": finished})
    return {"file": str(path), "conversations": len(rows), "assistant_tokens": int(packed.mask[:, 1:].sum()),
            "assistant_loss": loss, "truncated": encoded.truncated, "ended_turn": ended,
            "ended_turn_fraction": ended / len(rows), "max_new_tokens": max_new_tokens, "samples": shown}


def format_chat_eval(result: dict) -> str:
    lines = [f"{result['file']}: {result['conversations']} conversations, {result['assistant_tokens']:,} assistant "
             f"tokens; assistant-token loss {result['assistant_loss']:.4f}; "
             f"{result['ended_turn']}/{result['conversations']} greedy replies "
             f"({result['ended_turn_fraction']:.0%}) end their turn within {result['max_new_tokens']} tokens"]
    for sample in result["samples"]:
        lines += [f"  user:      {sample['user']}", f"  reference: {sample['reference']}",
                  f"  reply:     {sample['reply']}{'' if sample['ended_turn'] else ' [no end of turn]'}"]
    return "\n".join(lines)
