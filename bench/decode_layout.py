"""Short generations: `generate` with the decode layout kept on the model vs copied on every call.

    .venv/bin/python bench/decode_layout.py [--presets tinyllama-4m tinyllama-77m] [--new-tokens 16 128]

The "copied every call" side drops the kept [in, out] weight copies before each call, which is what
`generate` did before they were kept; the two sides alternate, median of --repeats, one thread.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import compactlm
from machine import cpu_name  # bench/machine.py


def tokens_per_s(model, prompt, new_tokens: int, repeats: int) -> tuple[float, float]:
    """(copied every call, kept) tokens/s."""
    kept, fresh = [], []
    compactlm.generate(model, prompt, 2)
    for _ in range(repeats):
        start = time.perf_counter()
        compactlm.generate(model, prompt, new_tokens)
        kept.append(time.perf_counter() - start)
        for module in model.modules():
            module.__dict__.pop("_decode_copy", None)
        start = time.perf_counter()
        compactlm.generate(model, prompt, new_tokens)
        fresh.append(time.perf_counter() - start)
    return new_tokens / statistics.median(fresh), new_tokens / statistics.median(kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tinyllama-4m", "tinyllama-77m"])
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[16, 128])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{cpu_name()}; torch {torch.__version__}; one thread; 16-token prompt; median of {args.repeats}")
    print("| model | params | new tokens | copied every call, tokens/s | kept, tokens/s | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for preset in args.presets:
        torch.manual_seed(0)
        model = compactlm.build_model(preset, vocab_size=args.vocab).eval()
        prompt = torch.randint(0, args.vocab, (1, 16), generator=torch.Generator().manual_seed(0))
        for new in args.new_tokens:
            fresh, kept = tokens_per_s(model, prompt, new, args.repeats)
            print(f"| {preset} | {model.num_params() / 1e6:.1f}M | {new} | {fresh:.1f} | {kept:.1f} | {kept / fresh:.2f}x |")


if __name__ == "__main__":
    main()
