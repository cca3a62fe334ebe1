"""Decode speed at batch 1 with the KV cache: compactlm vs transformers' generate, same weights, one run.

    .venv/bin/python bench/decode.py [--presets tinyllama-23m tinyllama-4m] [--new-tokens 128] [--repeats 5]

Both sides decode greedily from the same prompt for the same number of tokens (no early stop); runs
alternate between the two so that machine noise hits both alike; the median of the repeats is reported
along with the ratio. Writes a JSON result with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import torch

import compactlm
from compactlm.convert.hf import save_hf


def time_call(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_preset(preset: str, vocab: int, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = compactlm.build_model(preset, vocab_size=vocab).eval()
    with tempfile.TemporaryDirectory() as tmp:
        save_hf(model, tmp)
        reference = AutoModelForCausalLM.from_pretrained(tmp, attn_implementation="sdpa").eval()
    prompt = torch.randint(0, vocab, (1, prompt_len), generator=torch.Generator().manual_seed(0))

    def ours():
        return compactlm.generate(model, prompt, new_tokens)

    def theirs():
        with torch.inference_mode():
            return reference.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                      do_sample=False, pad_token_id=0)

    same = ours().tolist() == theirs().tolist()
    ours_s, theirs_s = [], []
    for _ in range(repeats):
        ours_s.append(time_call(ours))
        theirs_s.append(time_call(theirs))
    ours_tps, theirs_tps = new_tokens / statistics.median(ours_s), new_tokens / statistics.median(theirs_s)
    return {"preset": preset, "params": model.num_params(), "non_embedding_params": model.config.non_embedding_params,
            "vocab": vocab, "prompt_len": prompt_len, "new_tokens": new_tokens, "identical_tokens": same,
            "compactlm_tokens_per_s": round(ours_tps, 1), "transformers_tokens_per_s": round(theirs_tps, 1),
            "speedup": round(ours_tps / theirs_tps, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tinyllama-23m", "tinyllama-4m"])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import transformers

    results = [bench_preset(p, args.vocab, args.prompt_len, args.new_tokens, args.repeats) for p in args.presets]
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cores")
    print(f"{'preset':<16}{'params':>12}{'compactlm tok/s':>17}{'transformers tok/s':>20}{'speedup':>9}{'same tokens':>13}")
    for r in results:
        print(f"{r['preset']:<16}{r['params']:>12,}{r['compactlm_tokens_per_s']:>17}{r['transformers_tokens_per_s']:>20}"
              f"{r['speedup']:>8}x{str(r['identical_tokens']):>13}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
