"""CPU training throughput: compactlm vs transformers' LlamaForCausalLM (vs litgpt's GPT), one process.

    python bench/train_cpu.py [--steps 10] [--litgpt] [--json out.json] [--profile-dir DIR]

The same ~20M-parameter Llama (compactlm's `tinyllama-4m` preset, 32000 vocabulary, untied head) is
trained by each implementation from the SAME initial weights on the SAME batches (B x (T + 1) token
ids drawn from a fixed seeded Zipf-like distribution; inputs [:, :-1], targets [:, 1:]):

- compactlm: `compactlm.train.optim.make_optimizer` (AdamW; fused where PyTorch has it) and
  `compactlm.model.transformer.lm_loss` (always called, never copied);
- transformers: `AutoModelForCausalLM.from_pretrained` of `compactlm.convert.hf.save_hf`'s export,
  default attention implementation, loss from `model(input_ids=x, labels=x, shift_labels=y)`, i.e.
  HF's own ForCausalLMLoss on the pre-shifted targets y (identical to compactlm's), `use_cache=False`;
  plain `torch.optim.AdamW` (default, non-fused);
- litgpt (`--litgpt`, from /tmp/trainbench/site appended to sys.path): `litgpt.model.GPT`, loss
  `F.cross_entropy(logits.float(), y)`; plain `torch.optim.AdamW`.

All optimizers: lr 4e-4 constant, betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on matrices and none
on norm gains (compactlm's `param_groups`, applied to all three); no gradient clipping, no accumulation.

Cases (steps interleaved a, b, c, a, b, c, ...; 2 warm-up steps, then the median of N timed steps):
  bf16    - `torch.autocast("cpu", dtype=torch.bfloat16)` for every implementation;
  default - compactlm as its Trainer does on the CPU (`autocast_dtype("auto", cpu)`: float32 today),
            transformers float32, litgpt float32.
Every case starts again from the initial weights, so the final losses of a case are comparable.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import compactlm
import compactlm.config.train as cconfig
import compactlm.model.transformer as cmodel
import compactlm.train.optim as coptim
import compactlm.train.runtime as cruntime
from compactlm.convert.hf import save_hf

LITGPT_SITE = "/tmp/trainbench/site"
VOCAB = 32000


# ---- data ---------------------------------------------------------------------------------------
def zipf_batches(n: int, batch: int, seq: int, seed: int = 1234, alpha: float = 1.1) -> list[torch.Tensor]:
    """n fixed [batch, seq + 1] LongTensors of ids drawn i.i.d. from a Zipf-like law over a seeded permutation."""
    g = torch.Generator().manual_seed(seed)
    ranks = torch.arange(1, VOCAB + 1, dtype=torch.float64)
    probs = ranks.pow(-alpha)
    probs /= probs.sum()
    perm = torch.randperm(VOCAB, generator=g)  # which id gets which rank
    out = []
    for _ in range(n):
        r = torch.multinomial(probs, batch * (seq + 1), replacement=True, generator=g)
        out.append(perm[r].view(batch, seq + 1).contiguous())
    return out


# ---- implementations ------------------------------------------------------------------------------
class Impl:
    name = ""

    def __init__(self, model, optimizer, loss_fn):
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.times: list[float] = []
        self.losses: list[float] = []

    def step(self, batch: torch.Tensor, amp: torch.dtype | None) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
            loss = self.loss_fn(self.model, batch)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        value = loss.item()
        self.times.append(time.perf_counter() - t0)
        self.losses.append(value)
        return value


def plain_adamw(model: torch.nn.Module) -> torch.optim.Optimizer:
    o = cconfig.OptimSection()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)


def make_compactlm(state: dict) -> Impl:
    model = compactlm.build_model("tinyllama-4m", vocab_size=VOCAB)
    model.load_state_dict(state)
    model.train()
    opt = coptim.make_optimizer(model, cconfig.OptimSection())
    impl = Impl(model, opt, lambda m, b: cmodel.lm_loss(m, b))
    impl.name = "compactlm"
    return impl


def hf_loss(model, batch):
    x, y = batch[:, :-1], batch[:, 1:].contiguous()  # HF .view()s the targets
    return model(input_ids=x, labels=x, shift_labels=y, use_cache=False).loss


def make_hf(hf_dir: Path) -> Impl:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.train()
    impl = Impl(model, plain_adamw(model), hf_loss)
    impl.name = "transformers"
    return impl


def import_litgpt():
    if LITGPT_SITE not in sys.path:
        sys.path.append(LITGPT_SITE)
    from litgpt.model import GPT, Config

    return GPT, Config


def litgpt_state(state: dict, n_layer: int, ffn: int) -> dict:
    out = {"transformer.wte.weight": state["embed.weight"], "transformer.ln_f.weight": state["norm.weight"],
           "lm_head.weight": state["lm_head.weight"]}
    for i in range(n_layer):
        s, d = f"layers.{i}.", f"transformer.h.{i}."
        out[d + "norm_1.weight"] = state[s + "attn_norm.weight"]
        out[d + "attn.qkv.weight"] = state[s + "attn.qkv.weight"]
        out[d + "attn.proj.weight"] = state[s + "attn.proj.weight"]
        out[d + "norm_2.weight"] = state[s + "mlp_norm.weight"]
        gate, up = state[s + "mlp.gate_up.weight"].split([ffn, ffn])
        out[d + "mlp.fc_1.weight"], out[d + "mlp.fc_2.weight"] = gate, up
        out[d + "mlp.proj.weight"] = state[s + "mlp.down.weight"]
    return {k: v.clone() for k, v in out.items()}


def litgpt_loss(model, batch):
    logits = model(batch[:, :-1])
    return F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())


def make_litgpt(state: dict, seq: int) -> Impl:
    GPT, Config = import_litgpt()
    cfg = Config(n_layer=6, n_embd=256, n_head=4, n_query_groups=1, head_size=64, intermediate_size=704,
                 vocab_size=VOCAB, padded_vocab_size=VOCAB, block_size=seq, bias=False, norm_class_name="RMSNorm",
                 mlp_class_name="LLaMAMLP", rotary_percentage=1.0, parallel_residual=False, norm_eps=1e-5)
    model = GPT(cfg)
    model.load_state_dict(litgpt_state(state, 6, 704), strict=True)
    model.train()
    impl = Impl(model, plain_adamw(model), litgpt_loss)
    impl.name = "litgpt"
    return impl


# ---- profiling ------------------------------------------------------------------------------------
def profile_step(impl: Impl, batch: torch.Tensor, amp: torch.dtype | None, label: str, out_dir: Path | None) -> dict:
    from torch.profiler import ProfilerActivity, profile

    impl.step(batch, amp)  # warm
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        impl.step(batch, amp)
        wall = time.perf_counter() - t0
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40)
    print(f"\n--- profile: one compactlm step, {label} (wall {wall:.3f} s under the profiler) ---")
    print(table)
    breakdown = categorize(prof, wall)
    print("breakdown (self CPU time, s):  " + ", ".join(f"{k} {v:.3f}" for k, v in breakdown.items()))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"profile_{label}.txt").write_text(
            table + "\n\n" + prof.key_averages(group_by_input_shape=True).table(
                sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=40, max_shapes_column_width=70)
            + "\n\nbreakdown (self CPU s): " + json.dumps(breakdown) + "\n")
    return breakdown


def _shapes_have(ev, n: int) -> bool:
    return any(n in s for s in (ev.input_shapes or []) if isinstance(s, (list, tuple)))


def categorize(prof, wall: float) -> dict:
    """Self CPU seconds by where they go: head (32000-wide) matmuls, CE, AdamW, other matmuls, attention, rest."""
    cats = {"head_matmul": 0.0, "cross_entropy": 0.0, "adamw": 0.0, "other_matmul": 0.0, "attention": 0.0,
            "embedding": 0.0, "dtype_copies": 0.0, "rest": 0.0}
    in_opt = set()
    events = prof.events()
    # AdamW: everything under the optimizer's record_function range
    opt_ranges = [(e.time_range.start, e.time_range.end) for e in events if e.name.startswith("Optimizer.step#")]
    for e in events:
        if e.name.startswith("Optimizer.") or e.name.startswith("ProfilerStep"):
            continue
        self_s = e.self_cpu_time_total / 1e6
        start = e.time_range.start
        name = e.name
        if any(a <= start <= b for a, b in opt_ranges):
            cats["adamw"] += self_s
            in_opt.add(id(e))
        elif name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear") or "gemm" in name:
            cats["head_matmul" if _shapes_have(e, VOCAB) else "other_matmul"] += self_s
        elif name in ("aten::_to_copy", "aten::copy_", "aten::to") and _shapes_have(e, VOCAB):
            cats["dtype_copies"] += self_s
        elif any(k in name for k in ("log_softmax", "nll_loss", "cross_entropy")) or (
                name.startswith("aten::") and _shapes_have(e, VOCAB) and "embedding" not in name):
            cats["cross_entropy"] += self_s  # incl. a fused/chunked CE's elementwise ops on [*, 32000]
        elif "scaled_dot_product" in name or "flash_attention" in name:
            cats["attention"] += self_s
        elif "embedding" in name:
            cats["embedding"] += self_s
        else:
            cats["rest"] += self_s
    cats["total_self"] = sum(cats.values())
    cats["wall"] = wall
    return {k: round(v, 4) for k, v in cats.items()}


# ---- main -----------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per implementation and case")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--cases", default="bf16,default", help="comma list of bf16, default, fp32 (float32 for all)")
    ap.add_argument("--litgpt", action="store_true", help=f"also litgpt's GPT (from {LITGPT_SITE})")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--profile-dir", default="", help="also profile one compactlm step per precision; tables here")
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}, load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    try:
        import transformers
        print(f"transformers {transformers.__version__}")
    except ImportError:
        pass

    torch.manual_seed(args.seed)
    base = compactlm.build_model("tinyllama-4m", vocab_size=VOCAB)
    n_params = sum(p.numel() for p in base.parameters())
    state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    print(f"model: {base.config.name} {n_params / 1e6:.2f}M params, batch {args.batch} x {args.seq} "
          f"= {args.batch * args.seq} tokens/step")
    tmp = tempfile.TemporaryDirectory(prefix="train_cpu_")
    hf_dir = save_hf(base, Path(tmp.name) / "hf")
    del base

    total_steps = args.warmup + args.steps
    data = zipf_batches(total_steps, args.batch, args.seq, seed=1234 + args.seed)

    def build_all() -> list[Impl]:
        impls = [make_compactlm(state), make_hf(hf_dir)]
        if args.litgpt:
            impls.append(make_litgpt(state, args.seq))
        return impls

    # ---- initial-loss agreement, float32, same weights, same batch
    results: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "params": n_params,
                     "batch": args.batch, "seq": args.seq, "steps": args.steps, "warmup": args.warmup, "cases": {}}
    impls = build_all()
    with torch.no_grad():
        init = {i.name: i.loss_fn(i.model, data[0]).item() for i in impls}
    ref = init["compactlm"]
    print("\ninitial loss, float32, same weights and batch: "
          + ", ".join(f"{k} {v:.6f}" for k, v in init.items())
          + f"  (max |diff| {max(abs(v - ref) for v in init.values()):.2e}, ln(32000) = {math.log(VOCAB):.4f})")
    agree = max(abs(v - ref) for v in init.values()) < 1e-4
    print("initial losses agree within 1e-4:", "yes" if agree else "NO")
    results["initial_loss"] = init
    results["initial_loss_agree"] = agree
    del impls

    default_amp = cruntime.autocast_dtype("auto", torch.device("cpu"))
    tokens = args.batch * args.seq
    for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
        if case == "bf16":
            amps = {"compactlm": torch.bfloat16, "transformers": torch.bfloat16, "litgpt": torch.bfloat16}
        elif case == "fp32":
            amps = {"compactlm": None, "transformers": None, "litgpt": None}
        elif case == "default":
            amps = {"compactlm": default_amp, "transformers": None, "litgpt": None}
        else:
            raise SystemExit(f"unknown case {case!r}")
        torch.manual_seed(args.seed)
        impls = build_all()
        for s in range(total_steps):
            for impl in impls:
                impl.step(data[s], amps[impl.name])
            print(f"  [{case}] step {s + 1}/{total_steps}: " + ", ".join(
                f"{i.name} {i.times[-1]:.2f}s loss {i.losses[-1]:.4f}" for i in impls), file=sys.stderr, flush=True)
        rows = {}
        for impl in impls:
            timed = impl.times[args.warmup:]
            med = statistics.median(timed)
            rows[impl.name] = {"precision": str(amps[impl.name]).replace("torch.", "") if amps[impl.name] else "float32",
                               "median_step_s": med, "min_step_s": min(timed), "tokens_per_s": tokens / med,
                               "final_loss": impl.losses[-1], "losses": impl.losses}
        ref_tps = rows["transformers"]["tokens_per_s"]
        for r in rows.values():
            r["ratio_vs_transformers"] = r["tokens_per_s"] / ref_tps
        results["cases"][case] = rows
        results.setdefault("loadavg_after", {})[case] = os.getloadavg()
        print(f"\n== case {case}: {args.warmup} warm-up + {args.steps} timed steps each, interleaved ==")
        print(f"{'implementation':<14} {'precision':<9} {'median s':>9} {'min s':>8} {'tokens/s':>9} "
              f"{'vs HF':>6} {'loss@' + str(total_steps):>9}")
        for name, r in rows.items():
            print(f"{name:<14} {r['precision']:<9} {r['median_step_s']:>9.3f} {r['min_step_s']:>8.3f} "
                  f"{r['tokens_per_s']:>9.0f} {r['ratio_vs_transformers']:>6.2f} {r['final_loss']:>9.4f}")
        del impls

    if not args.no_profile:
        out_dir = Path(args.profile_dir) if args.profile_dir else None
        results["profile"] = {}
        for label, amp in (("float32", None), ("bf16", torch.bfloat16)):
            impl = make_compactlm(state)
            results["profile"][label] = profile_step(impl, data[0], amp, label, out_dir)
            del impl

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return results


if __name__ == "__main__":
    main()
