"""Loglikelihood requests per second: compactlm's lm-eval backend vs lm-eval's own `hf` backend.

    .venv/bin/python bench/eval_loglik.py [--preset tinyllama-4m] [--batch-size 16] [--repeats 5] [--threads N]

Same weights (a random model with the Llama-2 32k vocabulary from tests/assets, exported with
save_hf for the hf backend), float32, CPU, the same 4-choice requests sent to both `loglikelihood`
methods. Two workloads: the repo's local task compactlm_facts (short questions, 1-5 token answers,
ARC-like) and a HellaSwag-shaped one (~96-token passages of Python's standard-library source, four
~24-token endings, one of them the true one). Runs alternate between the backends so that machine
noise hits both alike; the median of the repeats is reported with the ratio and the largest
difference between the two backends' log-likelihoods. Writes a JSON result with --json.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def facts_requests() -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in (REPO / "tasks" / "compactlm_facts.jsonl").read_text().splitlines()]
    return [(f"Question: {r['question']}\nAnswer:", f" {c}") for r in rows for c in r["choices"]]


def hellaswag_like_requests(tokenizer, n_questions: int = 48, ctx_tokens: int = 96, end_tokens: int = 24):
    import argparse as a, json as j, textwrap as t, inspect as i

    ids = tokenizer.encode("\n".join(inspect.getsource(m) for m in (a, j.decoder, t, i)))
    rng = random.Random(0)
    span = ctx_tokens + end_tokens
    reqs = []
    for _ in range(n_questions):
        start = rng.randrange(0, len(ids) - span)
        context = tokenizer.decode(ids[start:start + ctx_tokens])
        endings = [tokenizer.decode(ids[start + ctx_tokens:start + span])]
        while len(endings) < 4:
            other = rng.randrange(0, len(ids) - end_tokens)
            endings.append(tokenizer.decode(ids[other:other + end_tokens]))
        reqs += [(context, " " + e.strip()) for e in endings]
    return reqs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tinyllama-4m", help="tinyllama-4m with the 32k vocabulary: 20.6M params")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    import compactlm
    from compactlm.checkpoint.model import save_checkpoint
    from compactlm.convert.hf import save_hf
    from compactlm.eval.harness import CompactLM
    from compactlm.tokenizer.tokenizer import Tokenizer

    tokenizer = Tokenizer(REPO / "tests" / "assets" / "ggml-vocab-llama-spm.gguf")
    torch.manual_seed(0)
    model = compactlm.build_model(args.preset, vocab_size=tokenizer.vocab_size).eval()
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(model, Path(tmp) / "ck", tokenizer)
        save_hf(model, Path(tmp) / "hf", tokenizer)
        ours = CompactLM(str(Path(tmp) / "ck"), batch_size=args.batch_size, device=args.device, progress=False)
        theirs = HFLM(pretrained=str(Path(tmp) / "hf"), batch_size=args.batch_size, device=args.device,
                      dtype="float32")

    workloads = {"compactlm_facts (ARC-like)": facts_requests(), "HellaSwag-like": hellaswag_like_requests(tokenizer)}
    results = []
    for name, pairs in workloads.items():
        reqs = [SimpleNamespace(args=p) for p in pairs]
        first_ours = ours.loglikelihood(reqs, disable_tqdm=True)  # warm-up, and the agreement check
        first_theirs = theirs.loglikelihood(reqs, disable_tqdm=True)
        diff = max(abs(a[0] - b[0]) for a, b in zip(first_ours, first_theirs))
        same_greedy = all(a[1] == b[1] for a, b in zip(first_ours, first_theirs))
        times = {"compactlm": [], "hf": []}
        for _ in range(args.repeats):
            for label, lm in (("compactlm", ours), ("hf", theirs)):
                start = time.perf_counter()
                lm.loglikelihood(reqs, disable_tqdm=True)
                times[label].append(time.perf_counter() - start)
        ctx_tokens = statistics.mean(len(ours.tok_encode(c)) for c, _ in pairs)
        cont_tokens = statistics.mean(len(ours.tok_encode(c + x)) - len(ours.tok_encode(c)) for c, x in pairs)
        rps = {k: len(reqs) / statistics.median(v) for k, v in times.items()}
        row = {"workload": name, "requests": len(reqs), "mean_context_tokens": round(ctx_tokens, 1),
               "mean_continuation_tokens": round(cont_tokens, 1),
               "compactlm_requests_per_s": round(rps["compactlm"], 1),
               "hf_requests_per_s": round(rps["hf"], 1), "speedup": round(rps["compactlm"] / rps["hf"], 2),
               "max_abs_loglik_diff": diff, "same_is_greedy": same_greedy,
               "compactlm_s": [round(t, 3) for t in times["compactlm"]], "hf_s": [round(t, 3) for t in times["hf"]]}
        results.append(row)
        print(f"{name}: {len(reqs)} requests (context {ctx_tokens:.0f} tokens, continuation {cont_tokens:.1f}) | "
              f"compactlm {rps['compactlm']:.1f} req/s | hf {rps['hf']:.1f} req/s | {row['speedup']:.2f}x | "
              f"max |loglik diff| {diff:.2e}", flush=True)
    report = {"preset": args.preset, "params": model.num_params(), "vocab": tokenizer.vocab_size,
              "batch_size": args.batch_size, "threads": torch.get_num_threads(), "device": args.device,
              "torch": torch.__version__, "transformers": transformers.__version__, "lm_eval": lm_eval.__version__,
              "machine": platform.processor() or platform.machine(), "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
