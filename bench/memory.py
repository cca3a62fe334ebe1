"""The memory planner (`compactlm plan`) against measured peaks.

CPU: each case runs in a fresh process; the measure is the growth of peak RSS (VmHWM) from just
before the model is built to after a few training steps (weights, optimizer, activations, loss: all
that the plan counts). GPU (--device cuda): torch.cuda.max_memory_allocated over the same steps.

    .venv/bin/python bench/memory.py                 # the CPU table of docs/benchmarks.md
    .venv/bin/python bench/memory.py --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (label, preset, vocab, micro_batch, seq_len, precision, activation ckpt, fused loss, accumulation[, ranks])
CPU_CASES = [
    ("13m fp32", "tinyllama-13m", 32000, 8, 512, "fp32", 0, True, 1),
    ("13m fp32, accumulation 2", "tinyllama-13m", 32000, 8, 512, "fp32", 0, True, 2),
    ("13m fp32, plain loss", "tinyllama-13m", 32000, 8, 512, "fp32", 0, False, 1),
    ("13m bf16 autocast", "tinyllama-13m", 32000, 8, 512, "bf16", 0, True, 1),
    ("23m fp32, seq 1024", "tinyllama-23m", 32000, 4, 1024, "fp32", 0, True, 1),
    ("23m fp32, ckpt every block", "tinyllama-23m", 32000, 4, 1024, "fp32", 1, True, 1),
    ("44m bf16, mb 16", "tinyllama-44m", 32000, 16, 256, "bf16", 0, True, 2),
    ("44m bf16, ckpt every 2nd", "tinyllama-44m", 32000, 16, 256, "bf16", 2, True, 2),
    ("44m fp32, FSDP2 x 2 ranks", "tinyllama-44m", 32000, 8, 512, "fp32", 0, True, 1, 2),
]


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def measure(case: dict) -> dict:
    """Runs inside the child process: build, train 2 optimizer steps, report the peak."""
    import torch

    from compactlm.checkpoint.model import build_model
    from compactlm.config.train import OptimSection
    from compactlm.model.transformer import lm_loss
    from compactlm.train.optim import make_optimizer

    torch.manual_seed(0)
    device = torch.device(case["device"])
    if case["ranks"] > 1:
        from compactlm.train.distributed import init_distributed

        init_distributed(device.type)
    _warm_up(device, case["precision"] == "bf16")  # libraries' one-time set-up is not the model's memory
    data = torch.randint(0, case["vocab"], (case["micro_batch"], case["seq_len"] + 1), device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_kib("VmRSS") * 1024
    model = build_model(case["preset"], device=device, vocab_size=case["vocab"], max_seq_len=case["seq_len"])
    model.checkpoint_every = case["ckpt"]
    if case["ranks"] > 1:
        from compactlm.train.distributed import parallelize

        model = parallelize(model, "fsdp", device, torch.bfloat16 if case["precision"] == "bf16" else None)
    optimizer = make_optimizer(model, OptimSection())
    bf16 = case["precision"] == "bf16"
    for _ in range(2):
        for _ in range(case["accumulation"]):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = lm_loss(model, data, fused=case["fused"])
            (loss / case["accumulation"]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = _rss_kib("VmHWM") * 1024 - before
    if case["ranks"] > 1:  # the largest rank's peak
        import torch.distributed as dist

        peak_tensor = torch.tensor([float(peak)])
        dist.all_reduce(peak_tensor, op=dist.ReduceOp.MAX)
        peak = int(peak_tensor.item())
    return {"measured": peak}


def _warm_up(device, bf16: bool) -> None:
    """One step of a tiny model first: oneDNN/MKL (or CUDA) initialise their kernels and workspaces."""
    import torch

    from compactlm.checkpoint.model import build_model
    from compactlm.config.train import OptimSection
    from compactlm.model.transformer import lm_loss
    from compactlm.train.optim import make_optimizer

    model = build_model("tinyllama-1m", device=device, vocab_size=512, max_seq_len=64)
    model.checkpoint_every = 1
    optimizer = make_optimizer(model, OptimSection())
    for ckpt in (0, 1):
        model.checkpoint_every = ckpt
        for fused in (True, False):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = lm_loss(model, torch.randint(0, 512, (2, 65), device=device), fused=fused)
            loss.backward()
    optimizer.step()
    del model, optimizer, loss


def planned(case: dict) -> int:
    from compactlm.config.model import get_preset
    from compactlm.train.plan import Setup, plan_memory

    config = get_preset(case["preset"], vocab_size=case["vocab"], max_seq_len=case["seq_len"])
    setup = Setup(micro_batch=case["micro_batch"], seq_len=case["seq_len"], ranks=case["ranks"],
                  parallelism="fsdp" if case["ranks"] > 1 else "none",
                  precision=case["precision"], activation_checkpointing=case["ckpt"], fused_loss=case["fused"],
                  device=case["device"], compiled=False, accumulation=case["accumulation"])
    return plan_memory(config, setup).total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="*", help="cases whose label starts with one of these")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = measure(json.loads(args.child))
        if os.environ.get("RANK", "0") == "0":
            print(json.dumps(result))
        return
    keys = ("label", "preset", "vocab", "micro_batch", "seq_len", "precision", "ckpt", "fused", "accumulation")
    rows = []
    print(f"{'case':<30}{'planned MiB':>13}{'measured MiB':>14}{'planned/measured':>18}")
    for values in CPU_CASES:
        case = {"ranks": 1, **dict(zip((*keys, "ranks"), values)), "device": args.device}
        if args.only and not any(case["label"].startswith(o) for o in args.only):
            continue
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={case['ranks']}"]
                    if case["ranks"] > 1 else [sys.executable])
        env["OMP_NUM_THREADS"] = str(max(1, int(env["OMP_NUM_THREADS"]) // case["ranks"]))
        out = subprocess.run([*launcher, __file__, "--child", json.dumps(case)], capture_output=True, text=True,
                             env=env, check=True).stdout
        measured = json.loads(out.strip().splitlines()[-1])["measured"]
        plan = planned(case)
        rows.append({**case, "planned": plan, "measured": measured, "ratio": plan / measured})
        print(f"{case['label']:<30}{plan / 2**20:>13,.0f}{measured / 2**20:>14,.0f}{plan / measured:>18.3f}",
              flush=True)
    worst = max(abs(r["ratio"] - 1) for r in rows)
    print(f"largest deviation: {worst:.1%}")


if __name__ == "__main__":
    main()
