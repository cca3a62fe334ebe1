"""GPU training throughput of the 1.1B preset: transformers vs compactlm, each fast path added in turn.

    python bench/gpu_train.py [--preset tinyllama-1.1b] [--micro-batch 8] [--seq-len 2048] [--steps 20]
                              [--json gpu_train.json]

One process, one GPU, same micro-batch and sequence length for every contender; bf16 autocast with
float32 master weights and fused AdamW for all; each contender starts from the same weights, warms
up (compilation included) and is timed over --steps optimizer steps (median step time). Reports
tokens/s, MFU against the nominal dense bf16 peak and against a measured large-matmul peak, and peak
memory. Contenders run one after another (two 1.1B models with optimizer state would not both fit
beside their activations), which is fine on a GPU: its timings are stable from run to run.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time

import torch

import compactlm
from compactlm.checkpoint.io import cpu_state
from compactlm.convert.hf import config_to_hf, state_dict_to_hf
from compactlm.config.train import OptimSection
from compactlm.model.transformer import lm_loss
from compactlm.train.optim import make_optimizer
from compactlm.train.runtime import PEAK_FLOPS, apply_kernels


def matmul_peak(device, n=8192, repeats=10) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def time_steps(step, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def batches(vocab, micro_batch, seq_len, device, n=4):
    g = torch.Generator(device=device).manual_seed(0)
    return [torch.randint(0, vocab, (micro_batch, seq_len + 1), device=device, generator=g) for _ in range(n)]


def training_step(model, optimizer, data, loss_fn):
    """One optimizer step per call, cycling through `data`; the same recipe for every contender."""
    counter = {"i": 0}

    def step():
        batch = data[counter["i"] % len(data)]
        counter["i"] += 1
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def hf_loss(model, batch):
    logits = model(input_ids=batch[:, :-1]).logits
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())


def run_contender(name, build, args, device, flops_per_token, peaks, results, initial_state):
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    try:
        step = build(initial_state)
        times = time_steps(step, args.steps, args.warmup)
    except torch.OutOfMemoryError:
        print(f"{name:<44} out of memory at micro-batch {args.micro_batch}", flush=True)
        results.append({"name": name, "oom": True})
        return
    median = statistics.median(times)
    tokens = args.micro_batch * args.seq_len / median
    row = {"name": name, "step_s": median, "tokens_per_s": tokens,
           "mfu_nominal": tokens * flops_per_token / peaks["nominal"],
           "mfu_measured": tokens * flops_per_token / peaks["measured"],
           "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30}
    results.append(row)
    print(f"{name:<44}{tokens:>12,.0f}{row['mfu_nominal']:>9.1%}{row['mfu_measured']:>10.1%}"
          f"{row['peak_memory_gib']:>10.1f}", flush=True)
    del step
    gc.collect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tinyllama-1.1b")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--only", nargs="*", default=None, help="names (prefixes) of contenders to run")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name(device)
    nominal = next((p for k, p in PEAK_FLOPS if k in name), 989e12)
    peaks = {"nominal": nominal, "measured": matmul_peak(device)}
    config = compactlm.get_preset(args.preset, max_seq_len=args.seq_len)
    flops_per_token = config.flops_per_token(args.seq_len)
    torch.manual_seed(0)
    initial_state = cpu_state(compactlm.build_model(config))
    data = batches(config.vocab_size, args.micro_batch, args.seq_len, device)
    import transformers

    print(f"{name}; torch {torch.__version__}, transformers {transformers.__version__}; {args.preset} "
          f"({config.num_params:,} params), micro-batch {args.micro_batch} x {args.seq_len}, bf16 autocast, "
          f"fused AdamW; nominal peak {nominal / 1e12:.0f} TFLOP/s, measured matmul peak "
          f"{peaks['measured'] / 1e12:.0f} TFLOP/s; {flops_per_token / 1e9:.2f} GFLOP/token")
    print(f"{'contender':<44}{'tokens/s':>12}{'MFU nom':>9}{'MFU meas':>10}{'peak GiB':>10}", flush=True)

    def build_hf(state):
        from transformers import LlamaConfig, LlamaForCausalLM

        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**config_to_hf(config), attn_implementation="sdpa"))
        model.load_state_dict(state_dict_to_hf(state, config))
        optimizer = torch.optim.AdamW(model.parameters(), lr=4e-4, betas=(0.9, 0.95), fused=True)
        return training_step(model, optimizer, data, hf_loss)

    def build_ours(kernels, fused, checkpoint_every=0, whole_model=False):
        def build(state):
            model = compactlm.build_model(config, device=device)
            model.load_state_dict(state)
            model.checkpoint_every = checkpoint_every
            if whole_model:  # the trunk as one graph (forward calls self.hidden_states, overridden here)
                model.hidden_states = torch.compile(model.hidden_states, dynamic=False)
            else:
                apply_kernels(model, kernels, device)
            optimizer = make_optimizer(model, OptimSection())
            return training_step(model, optimizer, data, lambda m, b: lm_loss(m, b, fused))
        return build

    contenders = [
        ("transformers LlamaForCausalLM (sdpa)", build_hf),
        ("compactlm eager", build_ours("eager", fused=False)),
        ("compactlm + fused linear-CE", build_ours("eager", fused=True)),
        ("compactlm + fused linear-CE + compile/block", build_ours("compile", fused=True)),
        ("compactlm auto + activation ckpt (all)", build_ours("compile", fused=True, checkpoint_every=1)),
        ("compactlm whole-trunk compile + fused CE", build_ours("eager", fused=True, whole_model=True)),
    ]
    results = []
    for name_, build in contenders:
        if args.only and not any(name_.startswith(o) for o in args.only):
            continue
        run_contender(name_, build, args, device, flops_per_token, peaks, results, initial_state)
    baseline = next((r for r in results if r["name"].startswith("transformers") and "tokens_per_s" in r), None)
    if baseline:
        for r in results:
            if "tokens_per_s" in r:
                r["vs_transformers"] = r["tokens_per_s"] / baseline["tokens_per_s"]
                print(f"{r['name']:<44}{r['vs_transformers']:>8.2f}x transformers")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "args": vars(args), "peaks": peaks, "results": results}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
