"""SFT on the CPU: LoRA vs full fine-tuning of the same model, tokens/s and peak memory.

    .venv/bin/python bench/finetune.py [--presets tinyllama-13m tinyllama-77m] [--steps 12]
        [--precisions fp32 bf16] [--tokenizer out/runs/demo/checkpoints/step-00000360]

For each preset a randomly initialised base checkpoint (the demo's tokenizer) is fine-tuned on the
demo conversations (data/sft-demo/train.jsonl, Zephyr template, rows of 256 tokens, batch 16) by
`compactlm finetune`, once with every weight trained and once with LoRA (rank 8 on qkv, proj,
gate_up, down). Each run is its own process, so its peak resident memory (the trainer's
`peak_memory`) is its own; the sides alternate. tokens/s is the median over steps after the first
two, in packed-row tokens (the same count for both sides).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from compactlm.checkpoint.model import build_model, save_checkpoint
from compactlm.config.model import get_preset
from compactlm.tokenizer.tokenizer import load_tokenizer
from machine import cpu_name  # bench/machine.py

ROOT = Path(__file__).resolve().parents[1]


def make_base(preset: str, tokenizer_dir: str, out: Path) -> tuple[Path, int]:
    """A randomly initialised base checkpoint of the preset, and its parameter count."""
    tokenizer = load_tokenizer(tokenizer_dir)
    config = get_preset(preset, vocab_size=tokenizer.vocab_size, max_seq_len=256).with_special_ids(
        tokenizer.bos_id, tokenizer.eos_id)
    torch.manual_seed(0)
    return save_checkpoint(build_model(config), out, tokenizer), config.num_params


def run(base: Path, adapter: str, precision: str, steps: int, work: Path) -> dict:
    run_dir = work / f"{base.name}-{adapter}-{precision}"
    config = {"run_dir": str(run_dir), "device": "cpu", "tensorboard": False,
              "finetune": {"base": str(base), "adapter": adapter, "chat_template": "zephyr"},
              "data": {"train": str(ROOT / "data/sft-demo/train.jsonl"), "seq_len": 256},
              "train": {"micro_batch": 8, "global_batch": 16, "max_steps": steps, "precision": precision},
              "checkpoint_every": 10_000, "eval_every": 10_000, "log_every": 10_000}
    path = work / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    subprocess.run([sys.executable, "-m", "compactlm", "finetune", str(path), "--overwrite"], check=True,
                   stdout=subprocess.DEVNULL)
    steps_seen = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps_seen = [r for r in steps_seen if "tokens_per_s" in r]
    return {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in steps_seen[2:]),
            "peak_memory_mib": steps_seen[-1]["peak_memory"] / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tinyllama-13m", "tinyllama-77m"])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--tokenizer", default=str(ROOT / "out/runs/demo/checkpoints/step-00000360"))
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| model | precision | full tok/s | LoRA tok/s | LoRA/full | full peak MiB | LoRA peak MiB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for preset in args.presets:
            base, params = make_base(preset, args.tokenizer, work / preset)
            for precision in args.precisions:
                full = run(base, "none", precision, args.steps, work)
                lora = run(base, "lora", precision, args.steps, work)
                print(f"| {preset} ({params / 1e6:.1f}M) | {precision} | {full['tokens_per_s']:,.0f} | "
                      f"{lora['tokens_per_s']:,.0f} | {lora['tokens_per_s'] / full['tokens_per_s']:.2f} | "
                      f"{full['peak_memory_mib']:,.0f} | {lora['peak_memory_mib']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
