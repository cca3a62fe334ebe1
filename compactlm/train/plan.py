"""`compactlm plan CONFIG --gpus N --gpu-memory 40GiB`: what a training run needs per device, before launching it.

Every figure is counted from what compactlm actually keeps alive, not from rules of thumb:

- weights, gradients and AdamW's two moments in float32 (16 bytes a parameter), divided by the
  number of ranks under FSDP; DDP keeps them whole plus its gradient buckets;
- the 16-bit copies of the weights that the compute uses: FSDP2 gathers the root (embedding, head)
  for the whole step and about two blocks at a time (one computing, one prefetched); a single
  process under autocast keeps a bf16 copy of each matmul weight from forward to backward;
- activations saved for backward, per token and per block, listed tensor by tensor in
  `_block_saved_bytes` after `model.Block.forward` (under autocast the residual stream and
  RMSNorm stay float32; matmul outputs are bf16); a checkpointed block keeps only its input, and
  one block is recomputed at a time;
- the loss: the fused head + cross-entropy keeps the head's gradients and one chunk of float32
  logits; the plain path (`train.kernels: eager`) keeps whole-batch logits, their float32 copy and
  log-softmax;
- a backward working set: one block's activations again (the gradients flowing through it).

The estimate is checked against measured peaks (bench/memory.py; docs/benchmarks.md): CPU peak
RSS growth for small models, `torch.cuda.max_memory_allocated` on a GPU. `torch.compile` fuses the
element-wise work and usually saves less than this eager count, so the plan is an upper bound there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from compactlm.config.model import ModelConfig
from compactlm.errors import CompactlmError
from compactlm.model.fused_loss import loss_chunk_rows

GIB = 1024 ** 3
# Kept free on a GPU for the CUDA context, NCCL buffers and allocator fragmentation.
GPU_RESERVE_FRACTION = 0.10


class PlanError(CompactlmError):
    pass


def parse_size(text: str) -> int:
    """'40GiB', '40GB', '80G', '512MiB', '1.5TiB' -> bytes (GB = 1e9, GiB and bare G = 2**30)."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)(i?B?)\s*", text, re.IGNORECASE)
    if not match:
        raise PlanError(f"--gpu-memory {text!r}: expected a size such as 40GiB, 80GB or 24G")
    value, prefix, suffix = float(match[1]), match[2].upper(), match[3]
    power = "KMGT".index(prefix) + 1 if prefix else 0
    base = 1000 if suffix.upper() == "B" and prefix else 1024  # 40GB = 40e9; 40GiB and 40G = 40 x 2**30
    return int(value * base ** power)


@dataclass
class Setup:
    """The knobs of a run that decide its memory."""

    micro_batch: int
    seq_len: int
    ranks: int = 1
    parallelism: str = "fsdp"  # fsdp | ddp | none (one process)
    precision: str = "bf16"  # bf16 (autocast, or FSDP bf16 parameters) | fp32
    activation_checkpointing: int = 0  # every k-th block recomputed (0: none)
    fused_loss: bool = True
    device: str = "cuda"  # cuda | cpu (the fused loss takes smaller chunks on a CPU)
    compiled: bool = False  # blocks under torch.compile (train.kernels auto on a GPU, or compile)
    accumulation: int = 1  # micro-batches per optimizer step: from the 2nd on, gradients sit beside activations


TRANSIENT = ("bf16 weight copies (autocast)", "activations", "recompute + backward working set",
             "loss (head + cross-entropy)")


@dataclass
class MemoryPlan:
    setup: Setup
    parts: dict[str, int] = field(default_factory=dict)  # bytes per device, by what holds them

    @property
    def total(self) -> int:
        """The peak: the larger of the end of forward (activations held) and the end of backward
        (all gradients). Gradients are created during backward, as activations are freed, so with a
        single micro-batch per step they do not add to the activations' peak; with accumulation they do."""
        transient = sum(v for k, v in self.parts.items() if k in TRANSIENT)
        gradients = self.parts["gradients (fp32)"]
        static = sum(self.parts.values()) - transient - gradients
        end_of_forward = transient + (gradients if self.setup.accumulation > 1 else 0)
        return static + max(end_of_forward, gradients)


def _block_saved_bytes(c: ModelConfig, precision: str, parallelism: str, compiled: bool) -> int:
    """Bytes per token that one block saves for backward (model.Block.forward).

    tests/test_train_plan.py checks the eager counts against the tensors autograd actually saves.
    """
    d, kv, f = c.d_model, c.n_kv_head * c.head_dim, c.ffn_dim
    act = 4 if precision == "fp32" else 2
    # qkv, rotated q|k, attention output (laid out so that the head merge is a view); the softmax's
    # float32 log-sum-exp per head; gate|up, silu(gate), silu * up. Each RMSNorm saves a float32 scalar.
    attention = act * ((d + 2 * kv) + (d + kv) + d) + 4 * c.n_head
    mlp = act * 4 * f
    scalars = 2 * 4
    if compiled:
        # Inductor's partitioner recomputes the norms, RoPE and SiLU in backward instead of saving
        # them: left are the block input and mid-block residual, qkv, rotated q|k, the attention
        # output, gate|up and silu * up.
        residual = 2 if parallelism == "fsdp" and precision == "bf16" else 4
        return residual * 2 * d + act * ((d + 2 * kv) + (d + kv) + d + 3 * f)
    if precision == "fp32":
        norms = 4 * 2 * (d + d + d)  # block input / mid-block residual, normalised x, scaled output
    elif parallelism == "fsdp":
        # bf16 parameters make the residual stream bf16: each RMSNorm saves its float32 upcast and
        # two bf16 tensors (normalised, scaled).
        norms = 2 * (4 * d + 2 * d + 2 * d)
    else:
        # autocast keeps the residual stream float32: block input and mid-block residual, each norm's
        # normalised float32 x, and the bf16 casts that the matmuls save.
        norms = 2 * (4 * d + 4 * d + 2 * d)
    return attention + mlp + norms + scalars


def _loss_bytes(c: ModelConfig, tokens: int, act: int, fused: bool, device: str) -> int:
    if fused:
        chunk = loss_chunk_rows(device)  # float32 logits of one chunk, and their exp
        return act * c.vocab_size * c.d_model + act * tokens * c.d_model + 2 * 4 * min(tokens, chunk) * c.vocab_size
    # float32 log-softmax saved for backward, then its gradient and the logits' float32 gradient
    return tokens * c.vocab_size * (4 + 4 + 4)


def plan_memory(config: ModelConfig, setup: Setup) -> MemoryPlan:
    if setup.parallelism not in ("fsdp", "ddp", "none"):
        raise PlanError(f"parallelism {setup.parallelism!r}: choose fsdp, ddp or none")
    if setup.precision not in ("bf16", "fp32"):
        raise PlanError(f"precision {setup.precision!r}: choose bf16 or fp32")
    c, n = config, config.num_params
    sharded = setup.parallelism == "fsdp" and setup.ranks > 1
    shards = setup.ranks if sharded else 1
    act = 2 if setup.precision == "bf16" else 4
    tokens = setup.micro_batch * setup.seq_len
    embedding = c.vocab_size * c.d_model * (1 if c.tie_embeddings else 2)
    block = c.layer_params

    parts = {
        "parameters (fp32 master)": 4 * n // shards,
        "gradients (fp32)": 4 * n // shards,
        "AdamW moments (fp32)": 8 * n // shards,
    }
    if setup.parallelism == "ddp" and setup.ranks > 1:
        parts["DDP gradient buckets"] = 4 * n
    if sharded:
        # gathered root (embedding, head) for the whole step + ~two gathered blocks
        parts["gathered parameters (FSDP)"] = act * (embedding + 2 * block)
    k = setup.activation_checkpointing
    checkpointed = 0 if k <= 0 else len(range(0, c.n_layer, k))
    if not sharded and setup.precision == "bf16":
        # Saved for backward from forward to backward, except in checkpointed blocks (re-cast there).
        parts["bf16 weight copies (autocast)"] = 2 * ((c.n_layer - checkpointed) * block + c.vocab_size * c.d_model)
    per_block = _block_saved_bytes(c, setup.precision, "fsdp" if sharded else setup.parallelism, setup.compiled)
    residual = 4 if setup.precision == "fp32" or not sharded else 2
    parts["activations"] = tokens * ((c.n_layer - checkpointed) * per_block + checkpointed * residual * c.d_model
                                     + 3 * 4 * c.d_model)  # embedding output and final norm
    parts["recompute + backward working set"] = tokens * per_block  # one block's worth
    parts["loss (head + cross-entropy)"] = _loss_bytes(c, tokens, act, setup.fused_loss, setup.device)
    return MemoryPlan(setup, parts)


def largest_micro_batch(config: ModelConfig, setup: Setup, budget: int, limit: int = 4096) -> int:
    """The largest micro-batch whose plan fits `budget` bytes (0 if not even 1 fits)."""
    from dataclasses import replace

    best, lo, hi = 0, 1, limit
    while lo <= hi:
        mid = (lo + hi) // 2
        if plan_memory(config, replace(setup, micro_batch=mid)).total <= budget:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best


def usable_memory(gpu_memory: int) -> int:
    return int(gpu_memory * (1 - GPU_RESERVE_FRACTION))


def format_plan(config: ModelConfig, setup: Setup, gpu_memory: int | None, global_batch: int | None = None) -> str:
    """The table `compactlm plan` prints: each part, with and without activation checkpointing."""
    from dataclasses import replace

    variants = [("no activation ckpt", replace(setup, activation_checkpointing=0)),
                ("ckpt every block", replace(setup, activation_checkpointing=1))]
    if setup.activation_checkpointing > 1:
        variants.append((f"ckpt every {setup.activation_checkpointing}", setup))
    plans = [(label, plan_memory(config, s)) for label, s in variants]
    mode = (f"FSDP2 over {setup.ranks} ranks" if setup.parallelism == "fsdp" and setup.ranks > 1 else
            f"DDP over {setup.ranks} ranks" if setup.parallelism == "ddp" and setup.ranks > 1 else "one device")
    lines = [f"{config.name}: {config.num_params:,} parameters, {config.n_layer} layers, d_model {config.d_model}, "
             f"vocab {config.vocab_size}",
             f"{mode}, {setup.precision}, micro-batch {setup.micro_batch} x {setup.seq_len} tokens, "
             f"{'compiled' if setup.compiled else 'eager'} blocks, {'fused' if setup.fused_loss else 'plain'} "
             f"head + loss", ""]
    width = max(len(name) for name in plans[0][1].parts) + 2
    lines.append(f"{'per device (GiB)':<{width}}" + "".join(f"{label:>22}" for label, _ in plans))
    for name in plans[0][1].parts:
        lines.append(f"{name:<{width}}" + "".join(f"{p.parts[name] / GIB:>22.2f}" for _, p in plans))
    lines.append(f"{'peak':<{width}}" + "".join(f"{p.total / GIB:>22.2f}" for _, p in plans))
    lines.append("(peak: gradients grow as activations are freed in backward; they coincide only "
                 "with accumulation)" if setup.accumulation == 1 else
                 f"(peak: with {setup.accumulation} micro-batches per step, gradients sit beside the activations)")
    if gpu_memory:
        budget = usable_memory(gpu_memory)
        lines.append("")
        lines.append(f"device memory {gpu_memory / GIB:.1f} GiB, {budget / GIB:.1f} GiB usable "
                     f"({GPU_RESERVE_FRACTION:.0%} kept for the CUDA context, communication buffers, fragmentation)")
        for label, p in plans:
            fits = "fits" if p.total <= budget else "does NOT fit"
            largest = largest_micro_batch(config, p.setup, budget)
            lines.append(f"  {label:<20} micro-batch {setup.micro_batch}: {fits} "
                         f"({p.total / GIB:.1f} GiB); largest micro-batch that fits: {largest}")
    if global_batch:
        lines.append(f"global batch {global_batch}: {setup.accumulation} accumulation steps")
    return "\n".join(lines)


def setup_from_train_config(train_config, ranks: int, device: str = "cuda",
                            vocab_size: int | None = None) -> tuple[ModelConfig, Setup]:
    """The model and memory setup of a `compactlm train` config on `ranks` devices, resolved exactly
    as the trainer resolves it (`resolve_run`); vocab_size plans without the data's tokenizer."""
    from compactlm.config.train import resolve_run
    from compactlm.train.distributed import resolve_parallelism

    run = resolve_run(train_config, ranks, vocab_size=vocab_size)
    t = train_config.train
    setup = Setup(micro_batch=t.micro_batch, seq_len=train_config.data.seq_len, ranks=ranks,
                  parallelism=resolve_parallelism(t.parallelism, ranks), accumulation=run.accumulation,
                  precision="fp32" if t.precision == "fp32" else "bf16",
                  activation_checkpointing=t.activation_checkpointing, fused_loss=t.kernels != "eager",
                  device=device, compiled=t.kernels == "compile" or (t.kernels == "auto" and device == "cuda"))
    return run.model, setup
