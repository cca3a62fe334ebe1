"""What a user weighs before shipping: file size and batch-1 decode speed in llama.cpp (f32, q8_0, q4_0)
next to `compactlm generate`, for the same model, side by side in one run.

    .venv/bin/python bench/llama_cpp_decode.py --checkpoint out/runs/demo/checkpoints/step-00000360 \
        --preset tinyllama-23m --threads 1 2 --new-tokens 128 --repeats 5

--checkpoint: a trained compactlm checkpoint (its tokenizer goes into the GGUF file); --preset adds a
model of that preset with random weights and the same tokenizer (speed does not depend on the
weights' values). Each side decodes greedily from the same prompt for the same number of tokens; the
runs alternate between sides so machine noise hits all alike; medians are reported. Needs
llama-cpp-python (the test extra builds it).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import compactlm
from compactlm.checkpoint.model import from_pretrained
from compactlm.convert.gguf import export_gguf
from compactlm.tokenizer.tokenizer import Tokenizer
from machine import cpu_name  # bench/machine.py

DTYPES = ("f32", "q8_0", "q4_0")


def llama_cpp_decoder(path: Path, threads: int, prompt: list[int], new_tokens: int):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(prompt) + new_tokens + 1, n_threads=threads,
                          n_threads_batch=threads, logits_all=True, verbose=False)

    def run() -> list[int]:
        llm.reset()
        llm.eval(prompt)
        out = []
        for _ in range(new_tokens):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))  # greedy, as compactlm below
            out.append(token)
            llm.eval([token])
        return out
    return run


def compactlm_decoder(model, prompt: list[int], new_tokens: int):
    ids = torch.tensor([prompt])

    def run() -> list[int]:
        return compactlm.generate(model, ids, new_tokens)[0, len(prompt):].tolist()
    return run


def bench_model(label: str, model, tokenizer: Tokenizer, threads: list[int], new_tokens: int, repeats: int,
                workdir: Path) -> list[dict]:
    prompt = tokenizer.encode("def main(argv):\n    parser = argparse.ArgumentParser(", bos=True)
    files = {dtype: export_gguf(model, workdir / f"{label}-{dtype}.gguf", tokenizer, dtype) for dtype in DTYPES}
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        runners = {"compactlm (float32)": compactlm_decoder(model, prompt, new_tokens)}
        runners.update({f"llama.cpp {d}": llama_cpp_decoder(files[d], n, prompt, new_tokens) for d in DTYPES})
        first = {name: run() for name, run in runners.items()}  # warm-up, and the tokens to compare
        times = {name: [] for name in runners}
        for _ in range(repeats):
            for name, run in runners.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        base = new_tokens / statistics.median(times["compactlm (float32)"])
        for name in runners:
            dtype = name.split()[-1]
            tps = new_tokens / statistics.median(times[name])
            size = files[dtype].stat().st_size if dtype in files else None
            rows.append({"model": label, "params": model.num_params(), "threads": n, "runtime": name,
                         "file_mib": None if size is None else size / 2**20, "tokens_per_s": tps,
                         "vs_compactlm": tps / base,
                         "same_tokens": first[name] == first["compactlm (float32)"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="a trained compactlm checkpoint")
    parser.add_argument("--preset", nargs="*", default=[], help="presets with random weights, same tokenizer")
    parser.add_argument("--tokenizer", default=None, help="tokenizer for --preset without --checkpoint")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import llama_cpp

    models = []
    tokenizer = Tokenizer.from_dir(args.checkpoint) if args.checkpoint else Tokenizer(args.tokenizer)
    if args.checkpoint:
        models.append((Path(args.checkpoint).name, from_pretrained(args.checkpoint).eval()))
    for preset in args.preset:
        torch.manual_seed(0)
        model = compactlm.build_model(preset, vocab_size=tokenizer.vocab_size).eval()
        model.init_weights(torch.Generator().manual_seed(0))
        models.append((preset, model))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, model in models:
            rows += bench_model(label, model, tokenizer, args.threads, args.new_tokens, args.repeats, Path(tmp))
    print(f"{cpu_name()}; torch {torch.__version__}; llama-cpp-python {llama_cpp.__version__}; "
          f"{args.new_tokens} new tokens at batch 1, greedy, median of {args.repeats}")
    print("| model | params | threads | runtime | file (MiB) | tokens/s | vs compactlm | same tokens as compactlm |")
    print("|---|---:|---:|---|---:|---:|---:|---|")
    for r in rows:
        size = "" if r["file_mib"] is None else f"{r['file_mib']:.1f}"
        print(f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['threads']} | {r['runtime']} | {size} | "
              f"{r['tokens_per_s']:.0f} | {r['vs_compactlm']:.2f}x | {r['same_tokens']} |")


if __name__ == "__main__":
    main()
