"""Speculative decoding on the CPU: the target alone vs. a small draft proposing K tokens per round.

Make the pair on the demo data (same tokenizer for both; docs/benchmarks.md used these):

    .venv/bin/compactlm prepare configs/prepare-demo.yaml        # out/prepared/demo, once
    .venv/bin/compactlm train configs/demo.yaml                  # draft: tinyllama-1m in out/runs/demo
    .venv/bin/compactlm train configs/demo.yaml run_dir=out/runs/spec-target model.preset=tinyllama-13m \
        optim.lr=2e-3 eval_every=120 checkpoint_every=360        # target: 16.0M params, ~21 min on 2 cores
    .venv/bin/compactlm train configs/demo.yaml run_dir=out/runs/spec-draft model.n_layer=1 \
        checkpoint_every=360                                     # a cheaper draft: 1 layer, 1.2M params, ~2 min

Or let this script run the first three, skipping any whose output exists:

    .venv/bin/python bench/speculative.py train-pair [--target-preset tinyllama-13m] [--target-steps 360]

Then measure (a run directory stands for its newest checkpoint):

    .venv/bin/python bench/speculative.py run --target out/runs/spec-target --draft out/runs/demo \\
        --prompts bench/speculative_prompts.txt [--new-tokens 128] [--repeats 3] [--draft-tokens 2 4 6] [--threads N]

Greedy decoding at batch 1, no early stop at </s>, so every method emits exactly --new-tokens per prompt:
the target alone (`generate`), the draft alone (what each of a round's K draft steps costs), and
`speculative_generate` for each K. Within every repeat each prompt runs every method back to back, so
machine noise hits all alike; the table gives the median over repeats of tokens/s summed over the prompts,
the acceptance rate, the tokens emitted per target forward pass, and whether the output equals the
target's own greedy decode (it must, up to float rounding in near-ties). Writes a JSON result with --json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import compactlm  # noqa: E402
from compactlm.checkpoint.layout import latest_checkpoint  # noqa: E402
from compactlm.model.speculative import speculative_generate  # noqa: E402
from machine import cpu_name  # noqa: E402  (bench/machine.py)

COMPACTLM = str(Path(sys.executable).with_name("compactlm"))


def checkpoint(path: str) -> Path:
    """A checkpoint directory, or a run directory's newest checkpoint."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        return latest_checkpoint(path) or path
    return path


def read_prompts(path: str) -> list[str]:
    lines = Path(path).read_text().splitlines()
    return [line.replace("\\n", "\n") for line in lines if line.strip()]


def train_pair(args) -> None:
    def run(argv, done: bool) -> None:
        if done:
            print("done already, skipping:", " ".join(argv))
            return
        print("+", " ".join(argv), flush=True)
        subprocess.run(argv, check=True, cwd=REPO)

    prepared = REPO / "out/prepared/demo"
    run([COMPACTLM, "prepare", "configs/prepare-demo.yaml"],
        all((prepared / part / "manifest.json").is_file() for part in ("natural_language", "code")))
    run([COMPACTLM, "train", "configs/demo.yaml", f"run_dir={args.draft_run}"],
        latest_checkpoint(REPO / args.draft_run) is not None)
    run([COMPACTLM, "train", "configs/demo.yaml", f"run_dir={args.target_run}", f"model.preset={args.target_preset}",
         f"optim.lr={args.target_lr}", f"train.max_steps={args.target_steps}", *args.overrides],
        latest_checkpoint(REPO / args.target_run) is not None)


def measure(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    target_dir, draft_dir = checkpoint(args.target), checkpoint(args.draft)
    target, draft = compactlm.from_pretrained(target_dir), compactlm.from_pretrained(draft_dir)
    tokenizer = compactlm.load_tokenizer(target_dir)
    if (target_dir / "tokenizer.json").read_bytes() != (draft_dir / "tokenizer.json").read_bytes():
        print("warning: the two checkpoints' tokenizer.json differ", file=sys.stderr)
    prompts = [torch.tensor([tokenizer.encode(p, bos=True)]) for p in read_prompts(args.prompts)]

    methods = {"target alone": lambda ids: (compactlm.generate(target, ids, args.new_tokens), None),
               "draft alone": lambda ids: (compactlm.generate(draft, ids, args.new_tokens), None)}
    for k in args.draft_tokens:
        methods[f"speculative K={k}"] = (lambda k: lambda ids: speculative_generate(
            target, draft, ids, args.new_tokens, draft_tokens=k))(k)
    for run in methods.values():  # warm-up: first-call allocations, MKL's thread pool
        run(prompts[0])

    seconds = {name: [] for name in methods}
    counts = {name: {"proposed": 0, "accepted": 0, "target_calls": 0, "same": True} for name in methods}
    for _ in range(args.repeats):
        total = dict.fromkeys(methods, 0.0)
        for ids in prompts:
            reference = None
            for name, run in methods.items():
                start = time.perf_counter()
                out, stats = run(ids)
                total[name] += time.perf_counter() - start
                reference = out if reference is None else reference
                if name != "draft alone":
                    counts[name]["same"] &= out.tolist() == reference.tolist()
                if stats is not None:
                    for key in ("proposed", "accepted", "target_calls"):
                        counts[name][key] += getattr(stats, key)
        for name in methods:
            seconds[name].append(total[name])

    tokens = args.new_tokens * len(prompts)
    rows = []
    for name in methods:
        c = counts[name]
        tps = tokens / statistics.median(seconds[name])
        rows.append({"method": name, "tokens_per_s": round(tps, 1),
                     "acceptance_rate": round(c["accepted"] / c["proposed"], 3) if c["proposed"] else None,
                     "tokens_per_target_call": round(tokens * args.repeats / c["target_calls"], 2)
                     if c["target_calls"] else None,
                     "same_as_target": c["same"] if name != "draft alone" else None})
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["speedup"] = round(row["tokens_per_s"] / base, 2)
    return {"cpu": cpu_name(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "target": {"checkpoint": str(target_dir), "params": target.num_params()},
            "draft": {"checkpoint": str(draft_dir), "params": draft.num_params()},
            "prompts": len(prompts), "new_tokens": args.new_tokens, "repeats": args.repeats, "rows": rows}


def print_table(result: dict) -> None:
    print(f"{result['cpu']}, torch {result['torch']}, {result['threads']} threads; "
          f"target {result['target']['checkpoint']} ({result['target']['params'] / 1e6:.1f}M params), "
          f"draft {result['draft']['checkpoint']} ({result['draft']['params'] / 1e6:.1f}M params); "
          f"{result['prompts']} prompts x {result['new_tokens']} tokens, median of {result['repeats']} repeats\n")
    print("| method | tokens/s | speedup | acceptance | tokens / target call | same tokens as target |")
    print("|---|---:|---:|---:|---:|---|")
    for r in result["rows"]:
        cells = [r["method"], f"{r['tokens_per_s']:.1f}", f"{r['speedup']:.2f}x",
                 "" if r["acceptance_rate"] is None else f"{r['acceptance_rate']:.1%}",
                 "" if r["tokens_per_target_call"] is None else f"{r['tokens_per_target_call']:.2f}",
                 "" if r["same_as_target"] is None else ("yes" if r["same_as_target"] else "NO")]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="measure the target alone vs. speculative decoding")
    run.add_argument("--target", required=True, help="checkpoint or run directory of the large model")
    run.add_argument("--draft", required=True, help="checkpoint or run directory of the small model")
    run.add_argument("--prompts", default=str(REPO / "bench" / "speculative_prompts.txt"),
                     help='text file, one prompt per non-empty line ("\\n" stands for a newline)')
    run.add_argument("--new-tokens", type=int, default=128)
    run.add_argument("--repeats", type=int, default=3)
    run.add_argument("--draft-tokens", type=int, nargs="+", default=[2, 4, 6])
    run.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    run.add_argument("--json", default=None)
    pair = sub.add_parser("train-pair", help="prepare the demo data and train the draft and the target")
    pair.add_argument("--draft-run", default="out/runs/demo")
    pair.add_argument("--target-run", default="out/runs/spec-target")
    pair.add_argument("--target-preset", default="tinyllama-13m")
    pair.add_argument("--target-lr", default="2e-3")
    pair.add_argument("--target-steps", type=int, default=360)
    pair.add_argument("overrides", nargs="*", help="more KEY=VALUE overrides for the target's training")
    args = parser.parse_args()

    if args.command == "train-pair":
        train_pair(args)
        return
    result = measure(args)
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
