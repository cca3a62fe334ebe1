"""`compactlm demo`: what the project can do today, end to end on the CPU in well under a minute.

Until the trainer lands this demo shows the model stage: the preset ladder, a model exported to
Hugging Face format and reloaded by transformers with identical logits and identical greedy output,
and decoding speed side by side.
"""

from __future__ import annotations

import tempfile
import time

import torch

from compactlm.checkpoint import build_model, from_pretrained
from compactlm.convert.hf import save_hf
from compactlm.generate import generate


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def run_demo(preset: str = "tinyllama-4m", vocab_size: int = 32000, new_tokens: int = 64) -> None:
    from compactlm.cli import _cmd_presets

    print("== Model presets (TinyLlama's proportions; the 1.1B row is TinyLlama itself)")
    _cmd_presets(None)

    torch.manual_seed(0)
    model = build_model(preset, vocab_size=vocab_size).eval()
    print(f"\n== {preset}: {model.num_params():,} parameters, random weights, vocabulary {vocab_size}")
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        print("transformers is not installed (pip install 'compactlm[hf]'): skipping the comparison")
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_hf(model, tmp)
        reference = AutoModelForCausalLM.from_pretrained(tmp).eval()
        reloaded = from_pretrained(tmp)
    prompt = torch.randint(0, vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (model(prompt) - reference(prompt).logits).abs().max().item()
        roundtrip = (model(prompt) - reloaded(prompt)).abs().max().item()
    print(f"exported to Hugging Face format; transformers' LlamaForCausalLM logits differ by {diff:.1e} (max abs),")
    print(f"and re-importing the export gives logits within {roundtrip:.1e}")

    ours, ours_s = _timed(lambda: generate(model, prompt, new_tokens))
    with torch.inference_mode():
        theirs, theirs_s = _timed(lambda: reference.generate(prompt, max_new_tokens=new_tokens, do_sample=False,
                                                            min_new_tokens=new_tokens, pad_token_id=0))
    same = "identical" if ours.tolist() == theirs.tolist() else "DIFFERENT"
    print(f"\n== Greedy decoding of {new_tokens} tokens at batch 1 with the KV cache ({same} tokens)")
    print(f"compactlm     {new_tokens / ours_s:7.1f} tokens/s")
    print(f"transformers  {new_tokens / theirs_s:7.1f} tokens/s   ({theirs_s / ours_s:.2f}x)")
    print("\nNext: `compactlm generate --checkpoint DIR --prompt TEXT` on any compactlm or Hugging Face Llama checkpoint.")
