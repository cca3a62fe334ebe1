"""`compactlm train CONFIG.yaml`: the TinyLlama recipe, top to bottom: setup -> fit -> validate -> save.

- The learning rate is a function of the *optimizer* step (linear warm-up, cosine to min_lr), never
  of the micro-batch (TinyLlama's issue 172).
- Gradients are accumulated over micro-batches, clipped by global norm (the norm is logged), and a
  step whose loss is not finite is skipped and counted; `max_nonfinite` in a row stop the run with a
  checkpoint and a message.
- Checkpoints (every N steps, at the end, and on SIGTERM/SIGINT) are directories written atomically:
  the model as `compactlm.from_pretrained` reads it, plus `train_state.pt` (optimizer, step, RNG,
  the data loader's next sample index), loaded with `weights_only=True`. The data stream is a pure
  function of the sample index, so `--resume` is exact and immediate: training 2N steps straight or
  N, kill, resume gives bit-identical losses and weights on the CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from safetensors.torch import save_file

from compactlm.checkpoint import atomic_directory, build_model, config_with_tokenizer_ids, publish_directory
from compactlm.config import ModelConfig, get_preset
from compactlm.configuration import load_config, to_dict
from compactlm.data.mixture import Mixture, MixtureSource, batches
from compactlm.errors import CompactlmError
from compactlm.kernels import apply_kernels
from compactlm.model import Transformer
from compactlm.parallelize import (barrier, clip_grad_norm, close_distributed, gradient_sync, init_distributed,
                                   parallelize, resolve_parallelism)
from compactlm.tokenizer import Tokenizer
from compactlm.train_checkpoint import FORMATS, full_state, is_sharded, load_training_state, save_sharded

STATE_FILE = "train_state.pt"
CONFIG_COPY = "train_config.yaml"


class TrainingError(CompactlmError):
    pass


# ---- config --------------------------------------------------------------------------------------
@dataclass
class ModelSection:
    """A preset, optionally with some of its fields changed; vocabulary and context come from the data."""

    preset: str = "tinyllama-1m"
    n_layer: int | None = None
    d_model: int | None = None
    n_head: int | None = None
    n_kv_head: int | None = None
    ffn_dim: int | None = None
    rope_base: float | None = None
    tie_embeddings: bool | None = None

    def build_config(self, vocab_size: int, seq_len: int, tokenizer: Tokenizer | None = None) -> ModelConfig:
        changes = {k: v for k, v in dataclasses.asdict(self).items() if k != "preset" and v is not None}
        preset = get_preset(self.preset)
        if "d_model" in changes and "n_head" not in changes:
            changes["n_head"] = changes["d_model"] // preset.head_dim
        if "d_model" in changes or "n_head" in changes:
            changes.setdefault("head_dim", 0)  # re-derived from d_model / n_head
        if tokenizer is not None:
            changes.update(bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id)
        return get_preset(self.preset, vocab_size=vocab_size, max_seq_len=seq_len, **changes)


@dataclass
class DataSection:
    datasets: list[MixtureSource] = field(default_factory=list)  # prepared directories with weights
    tokenizer: str = ""  # default: the tokenizer recorded in the first dataset's manifest
    seq_len: int = 2048
    seed: int = 1234
    val_fraction: float = 0.005
    num_workers: int = 0


@dataclass
class OptimSection:
    lr: float = 4e-4
    min_lr: float = 4e-5
    warmup_steps: int = 2000
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # 0 disables clipping (the norm is still logged)


@dataclass
class TrainSection:
    micro_batch: int = 8  # sequences per forward/backward
    global_batch: int = 1024  # sequences per optimizer step (accumulation = global / (micro x ranks))
    max_steps: int = 0  # optimizer steps; 0: derived from max_tokens
    max_tokens: int = 0
    lr_decay_steps: int = 0  # length of warm-up + cosine; 0: max_steps
    precision: str = "auto"  # auto (bf16 autocast on CUDA and on CPUs with native bf16), bf16, fp32
    kernels: str = "auto"  # auto | eager | compile (compactlm.kernels.apply_kernels)
    activation_checkpointing: int = 0  # recompute every k-th block's activations in backward (0: off)
    max_nonfinite: int = 5  # consecutive non-finite steps that stop the run
    parallelism: str = "auto"  # several ranks: fsdp (auto) or ddp; one process: none
    checkpoint_format: str = "auto"  # full (one process: auto) | sharded (several ranks: auto), see train_checkpoint
    async_checkpoint: bool = True  # sharded checkpoints are written in the background while training goes on


@dataclass
class TrainConfig:
    run_dir: str = "out/run"
    seed: int = 1234  # model initialisation
    device: str = "auto"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    eval_every: int = 500
    eval_samples: int = 64
    log_every: int = 10
    tensorboard: bool = True
    peak_flops: float = 0.0  # per device, for MFU; 0: look the GPU up in PEAK_FLOPS (CPU: no MFU)


def load_train_config(path: str | None, overrides: list[str] = ()) -> TrainConfig:
    return load_config(TrainConfig, path, overrides)


# ---- schedule, optimizer, precision --------------------------------------------------------------
def lr_at(step: int, optim: OptimSection, decay_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up, then cosine to min_lr."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if step >= decay_steps:
        return optim.min_lr
    progress = (step - optim.warmup_steps) / max(1, decay_steps - optim.warmup_steps)
    return optim.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (optim.lr - optim.min_lr)


def param_groups(model: Transformer, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (projections, embedding, head); none on RMSNorm gains.

    Decaying a norm's gain pulls it towards 0 instead of its neutral 1, which only hurts (nanoGPT,
    OLMo and Llama-recipe reproductions exclude them). TinyLlama's lit-gpt decayed every parameter;
    set `optim.weight_decay` accordingly if you want to reproduce that exactly.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: Transformer, optim: OptimSection, device: torch.device) -> torch.optim.Optimizer:
    kwargs = dict(lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps)
    try:  # fused kernels on CUDA, and on the CPU in recent PyTorch
        return torch.optim.AdamW(param_groups(model, optim.weight_decay), fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(param_groups(model, optim.weight_decay), **kwargs)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast (float32 master weights) or None for plain float32.

    "auto" picks bf16 on CUDA, and on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX), where
    it is faster than float32; elsewhere a CPU would emulate bf16, slower than float32.
    """
    if precision not in ("auto", "bf16", "fp32"):
        raise TrainingError(f"train.precision {precision!r}: choose auto, bf16 or fp32")
    if precision == "fp32" or (precision == "auto" and device.type == "cpu" and not cpu_has_native_bf16()):
        return None
    if precision == "auto" and device.type not in ("cuda", "cpu"):
        return None
    return torch.bfloat16


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


# Dense bf16 tensor-core peak per GPU (no sparsity), by a substring of torch.cuda.get_device_name().
PEAK_FLOPS = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("A100", 312e12),
              ("L40S", 362e12), ("L4", 121e12), ("A10", 125e12), ("A6000", 155e12), ("V100", 125e12)]


def device_peak_flops(device: torch.device, configured: float) -> float | None:
    if configured > 0:
        return configured
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_FLOPS if key in name), None)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto`: a GPU if there is one. With several ranks per node each takes GPU `local_rank`."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def resolve_checkpoint_format(name: str, parallelism: str) -> str:
    if name not in FORMATS:
        raise TrainingError(f"train.checkpoint_format {name!r}: choose one of {', '.join(FORMATS)}")
    if name == "auto":
        return "sharded" if parallelism == "fsdp" else "full"
    return name


def _silent(*args, **kwargs) -> None:
    pass


# ---- loss ---------------------------------------------------------------------------------------
def lm_loss(model: Transformer, batch: torch.Tensor, fused: bool = True) -> torch.Tensor:
    """Mean next-token cross-entropy of a [B, T + 1] batch (inputs [:, :-1], targets [:, 1:])."""
    return model(batch[:, :-1], batch[:, 1:], fused_loss=fused)


def manifest_tokenizer(directory: Path) -> str:
    """The tokenizer a prepared dataset directory was made with (recorded in its manifest.json)."""
    manifest = Path(directory) / "manifest.json"
    if not manifest.is_file():
        raise TrainingError(f"{directory}: no manifest.json; set data.tokenizer for lit-gpt data")
    return json.loads(manifest.read_text())["tokenizer"]["path"]


# ---- checkpoints ---------------------------------------------------------------------------------
def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary directories start with a dot)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if re.fullmatch(r"step-\d{8}", p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[5:]))


# ---- the trainer ---------------------------------------------------------------------------------
class Trainer:
    def __init__(self, config: TrainConfig, resume: bool = False, console=print):
        self.config, self.console = config, console
        self.run_dir = Path(config.run_dir)
        self.world = init_distributed(resolve_device(config.device).type)
        self.rank, self.world_size = self.world.rank, self.world.size
        self.device = resolve_device(config.device, self.world.local_rank)
        self.amp_dtype = autocast_dtype(config.train.precision, self.device)
        self.parallelism = resolve_parallelism(config.train.parallelism, self.world_size)
        self.checkpoint_format = resolve_checkpoint_format(config.train.checkpoint_format, self.parallelism)
        if not self.world.is_main:
            self.console = _silent
        self._stop_signal: int | None = None
        self._stop_requested = False
        self._pending_save: tuple | None = None  # (future, temporary dir, final dir) of a background write
        # Background checkpoint writes run their own collectives: on a group of their own, so they never
        # interleave with the training step's.
        self._checkpoint_group = (dist.new_group(backend="gloo") if self.world_size > 1 and
                                  self.checkpoint_format == "sharded" and config.train.async_checkpoint else None)
        self._setup_data()
        self._setup_model()
        self.step, self.tokens_seen, self.nonfinite_total, self.nonfinite_run = 0, 0, 0, 0
        if resume:
            self._resume()
        self._write_resolved_config()

    # ---- setup ----------------------------------------------------------------------------------
    def _setup_data(self) -> None:
        data = self.config.data
        if not data.datasets:
            raise TrainingError("data.datasets is empty: list prepared dataset directories with weights")
        tokenizer_path = data.tokenizer or manifest_tokenizer(Path(data.datasets[0].path))
        self.tokenizer = Tokenizer(tokenizer_path)
        self.mixture = Mixture(data.datasets, data.seq_len, data.seed, data.val_fraction,
                               tokenizer_hash=self.tokenizer.hash)
        train = self.config.train
        per_step = train.micro_batch * self.world_size
        if train.global_batch % per_step:
            raise TrainingError(f"train.global_batch {train.global_batch} is not a multiple of micro_batch x ranks "
                                f"({per_step})")
        self.accumulation = train.global_batch // per_step
        tokens_per_step = train.global_batch * data.seq_len
        self.max_steps = train.max_steps or math.ceil(train.max_tokens / tokens_per_step)
        if self.max_steps <= 0:
            raise TrainingError("set train.max_steps or train.max_tokens")
        self.decay_steps = train.lr_decay_steps or self.max_steps

    def _setup_model(self) -> None:
        self.model_config = self.config.model.build_config(self.tokenizer.vocab_size, self.config.data.seq_len,
                                                           self.tokenizer)
        torch.manual_seed(self.config.seed)  # the same initial weights on every rank
        module = build_model(self.model_config, device=self.device)
        module.checkpoint_every = self.config.train.activation_checkpointing
        self.kernels = apply_kernels(module, self.config.train.kernels, self.device)
        self.fused_loss = self.config.train.kernels != "eager"
        self.module = module  # the Transformer, for its config and parameter count
        self.model = parallelize(module, self.parallelism, self.device, self.amp_dtype)
        if self.parallelism != "none":
            self.kernels.append(f"{self.parallelism} over {self.world_size} ranks")
        self.optimizer = make_optimizer(module, self.config.optim, self.device)  # after sharding: it holds the shards
        self.peak_flops = device_peak_flops(self.device, self.config.peak_flops)
        self.flops_per_token = self.model_config.flops_per_token(self.config.data.seq_len)

    def _write_resolved_config(self) -> None:
        if not self.world.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(self.config), sort_keys=False))

    # ---- resume ---------------------------------------------------------------------------------
    def _resume(self) -> None:
        if self.world.is_main:
            for leftover in (self.run_dir / "checkpoints").glob(".step-*"):  # a write killed before its rename
                shutil.rmtree(leftover, ignore_errors=True)
        barrier(self.world)
        found = checkpoint_dirs(self.run_dir)
        if not found:
            if self.world.is_main:
                self._truncate_metrics(0)  # a start killed before its first checkpoint logged steps
            self.console(f"no checkpoint in {self.run_dir / 'checkpoints'}: starting from scratch")
            return
        path = found[-1]
        saved = ModelConfig.from_dict({k: v for k, v in json.loads((path / "config.json").read_text()).items()
                                       if k not in ("format", "format_version")}, str(path / "config.json"))
        if saved != self.model_config:
            diff = [f"{f}: {getattr(saved, f)} -> {getattr(self.model_config, f)}"
                    for f in saved.to_dict() if getattr(saved, f) != getattr(self.model_config, f)]
            raise TrainingError(f"{path}: checkpoint model config differs from this run's ({'; '.join(diff)})")
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        next_index = self.mixture.check_state(state["data"], str(path / STATE_FILE))
        # The global data stream depends on global_batch only: any number of ranks continues it.
        load_training_state(self.model, self.optimizer, path, state.get("optimizer"),
                            self.model_config.tie_embeddings)
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.nonfinite_total, self.nonfinite_run = state["nonfinite_total"], state["nonfinite_run"]
        torch.set_rng_state(state["rng_cpu"])
        if self.device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        expected = self.step * self.config.train.global_batch
        if next_index != expected:
            raise TrainingError(f"{path}: data index {next_index} does not match step {self.step}")
        if self.world.is_main:
            self._truncate_metrics(self.step)
        self.console(f"resumed from {path} (step {self.step}, {self.tokens_seen:,} tokens seen"
                     f"{', sharded checkpoint' if is_sharded(path) else ''})")

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric lines of steps after the checkpoint: they will be recomputed, identically."""
        path = self.run_dir / "metrics.jsonl"
        if path.is_file():
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
            path.write_text("".join(line + "\n" for line in kept))

    # ---- save -----------------------------------------------------------------------------------
    def save_checkpoint(self, final: bool = True) -> Path:
        """Write checkpoints/step-N atomically (a hidden temporary directory, renamed once complete).

        Collective: every rank calls it. Full format: rank 0 gathers and writes everything. Sharded:
        every rank writes its own shards; unless `final`, in the background (with
        train.async_checkpoint), published by the next save or at the end of the run.
        """
        self._publish_pending_save()
        path = self.run_dir / "checkpoints" / f"step-{self.step:08d}"
        if self.checkpoint_format == "full":
            model_sd, optim_sd = full_state(self.model, self.optimizer, self.model_config.tie_embeddings)
            if self.world.is_main:
                with atomic_directory(path) as tmp:
                    save_file(model_sd, tmp / "model.safetensors", metadata={"format": "pt"})
                    self._write_checkpoint_files(tmp, optimizer=optim_sd)
                self._drop_old_checkpoints()
            barrier(self.world)
            return path
        tmp = path.with_name(f".{path.name}.tmp")
        if self.world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            self._write_checkpoint_files(tmp)
        barrier(self.world)
        background = self.config.train.async_checkpoint and not final
        future = save_sharded(self.model, self.optimizer, tmp, background, self._checkpoint_group)
        self._pending_save = (future, tmp, path)
        if not background:
            self._publish_pending_save()
        return path

    def _write_checkpoint_files(self, directory: Path, **extra) -> None:
        config_with_tokenizer_ids(self.model_config, self.tokenizer).save(directory / "config.json")
        self.tokenizer.save(directory)
        state = {"step": self.step, "tokens_seen": self.tokens_seen,
                 "data": self.mixture.state(self.step * self.config.train.global_batch),
                 "nonfinite_total": self.nonfinite_total, "nonfinite_run": self.nonfinite_run,
                 "rng_cpu": torch.get_rng_state(), "world_size": self.world_size, **extra}
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        torch.save(state, directory / STATE_FILE)
        (directory / CONFIG_COPY).write_text(yaml.safe_dump(to_dict(self.config), sort_keys=False))

    def _publish_pending_save(self) -> None:
        """Wait for a background checkpoint write; rank 0 then renames it into place.

        Rank 0's write finishes last: it writes DCP's metadata after every rank reported its shards.
        """
        if self._pending_save is None:
            return
        future, tmp, path = self._pending_save
        self._pending_save = None
        if future is not None:
            future.result()
        if self.world.is_main:
            publish_directory(tmp, path)
            self._drop_old_checkpoints()

    def _drop_old_checkpoints(self) -> None:
        for old in checkpoint_dirs(self.run_dir)[:-self.config.keep_checkpoints or None]:
            shutil.rmtree(old, ignore_errors=True)

    # ---- fit ------------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg, train = self.config, self.config.train
        self.console(self._banner())
        loader = iter(batches(self.mixture, train.micro_batch, start=self.step * train.global_batch,
                              rank=self.rank, world_size=self.world_size, num_workers=cfg.data.num_workers))
        metrics = (_MetricsWriter(self.run_dir, cfg.tensorboard, purge_step=self.step + 1) if self.world.is_main
                   else _NoMetrics())
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        first_step, started, last = self.step, time.perf_counter(), {}
        try:
            while self.step < self.max_steps:
                step_start = time.perf_counter()
                lr = lr_at(self.step, cfg.optim, self.decay_steps)
                loss, grad_norm = self._optimizer_step(loader, lr)
                self.step += 1
                step_tokens = train.global_batch * cfg.data.seq_len
                self.tokens_seen += step_tokens
                record = self._step_record(loss, lr, grad_norm, step_tokens / (time.perf_counter() - step_start))
                metrics.write(record)
                last = record
                if self.step % cfg.log_every == 0 or self.step == self.max_steps:
                    elapsed = time.perf_counter() - started
                    self.console(self._step_line(record, elapsed / (self.step - first_step)))
                if self.step % cfg.eval_every == 0 or self.step == self.max_steps:
                    last = {**last, **self._log_validation(metrics)}
                if self.step % cfg.checkpoint_every == 0 and self.step != self.max_steps:
                    self.save_checkpoint(final=False)
                if self._stop_requested:
                    path = self.save_checkpoint()
                    raise TrainingError(f"stopped by signal {self._stop_signal or '(on another rank)'} at step "
                                        f"{self.step}; checkpoint {path}; continue with --resume")
            self.save_checkpoint()
        finally:
            metrics.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return last

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signum  # finish the step in flight, checkpoint, stop

    def _optimizer_step(self, loader, lr: float) -> tuple[float, float]:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        for i in range(self.accumulation):
            batch = next(loader).to(self.device, non_blocking=True)
            with gradient_sync(self.model, enabled=i == self.accumulation - 1):
                with self._autocast():
                    loss = lm_loss(self.model, batch, self.fused_loss)
                (loss / self.accumulation).backward()
            total += loss.detach()
        loss_value, self._stop_requested = self._reduce_across_ranks(total / self.accumulation)
        clip = self.config.optim.grad_clip if self.config.optim.grad_clip > 0 else float("inf")
        grad_norm = clip_grad_norm(self.model.parameters(), clip)
        if math.isfinite(loss_value) and math.isfinite(grad_norm):
            self.optimizer.step()
            self.nonfinite_run = 0
        else:
            self.nonfinite_total += 1
            self.nonfinite_run += 1
            self.console(f"step {self.step + 1}: non-finite loss or gradient ({loss_value}, {grad_norm}); "
                         f"step skipped ({self.nonfinite_run} in a row)")
            if self.nonfinite_run >= self.config.train.max_nonfinite:
                self.optimizer.zero_grad(set_to_none=True)
                path = self.save_checkpoint()
                raise TrainingError(f"{self.nonfinite_run} non-finite steps in a row at step {self.step + 1}; "
                                    f"stopped with checkpoint {path}. Lower optim.lr or check the data.")
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, grad_norm

    def _reduce_across_ranks(self, loss: torch.Tensor) -> tuple[float, bool]:
        """The loss averaged over ranks, and whether any rank was signalled to stop: one collective.

        Ranks must agree on stopping at the same step, or the others would wait forever in the next
        step's collectives.
        """
        if self.world_size == 1:
            return loss.item(), self._stop_signal is not None
        values = torch.stack([loss.float(), torch.tensor(float(self._stop_signal is not None), device=loss.device)])
        dist.all_reduce(values)
        return values[0].item() / self.world_size, values[1].item() > 0

    # ---- validate -------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict:
        samples = torch.from_numpy(self.mixture.val_samples(self.config.eval_samples))
        if not len(samples):
            return {}
        self.model.eval()
        losses = []
        for chunk in samples.split(self.config.train.micro_batch):
            chunk = chunk.to(self.device)
            with self._autocast():
                losses.append(lm_loss(self.model, chunk, self.fused_loss).item() * len(chunk))
        self.model.train()
        loss = sum(losses) / len(samples)
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50)),
                "val_bpb": loss / math.log(2) / self._val_bytes_per_token(samples)}

    def _val_bytes_per_token(self, samples: torch.Tensor) -> float:
        if not hasattr(self, "_bytes_per_token"):
            targets = samples[:, 1:]
            n_bytes = sum(len(self.tokenizer.decode(row.tolist()).encode("utf-8")) for row in targets)
            self._bytes_per_token = n_bytes / targets.numel()
        return self._bytes_per_token

    # ---- logging --------------------------------------------------------------------------------
    def _banner(self) -> str:
        cfg = self.config
        precision = "bf16 autocast" if self.amp_dtype is not None else "float32"
        return (f"model {self.model_config.name}: {self.module.num_params():,} parameters "
                f"({self.model_config.non_embedding_params:,} non-embedding), vocab {self.tokenizer.vocab_size}; "
                f"{self.device}, {precision}, kernels: {', '.join(self.kernels)}; batch {cfg.train.global_batch} x {cfg.data.seq_len} tokens "
                f"({cfg.train.micro_batch} x {self.accumulation} accumulation); steps {self.step} -> {self.max_steps}")

    def _step_record(self, loss, lr, grad_norm, tokens_per_s) -> dict:
        record = {"step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": self.tokens_seen,
                  "tokens_per_s": tokens_per_s}
        if self.peak_flops:
            record["mfu"] = tokens_per_s * self.flops_per_token / (self.peak_flops * self.world_size)
        return record

    def _step_line(self, record: dict, seconds_per_step: float) -> str:
        mfu = f" | MFU {record['mfu']:.1%}" if "mfu" in record else ""
        eta = _duration(seconds_per_step * (self.max_steps - self.step))
        return (f"step {self.step:>6}/{self.max_steps} | loss {record['loss']:.4f} | lr {record['lr']:.2e} | "
                f"grad {record['grad_norm']:.2f} | {record['tokens_per_s']:,.0f} tok/s{mfu} | ETA {eta}")

    def _log_validation(self, metrics) -> dict:
        result = self.validate()
        if result:
            metrics.write({"step": self.step, "tokens": self.tokens_seen, **result})
            self.console(f"validation at step {self.step}: loss {result['val_loss']:.4f} | "
                         f"ppl {result['val_ppl']:.2f} | {result['val_bpb']:.3f} bits/byte")
        return result


class _NoMetrics:
    """Ranks other than 0 log nothing."""

    def write(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


class _MetricsWriter:
    """metrics.jsonl (a line per step, validation lines apart) and TensorBoard scalars."""

    def __init__(self, run_dir: Path, tensorboard: bool, purge_step: int):
        self.file = open(run_dir / "metrics.jsonl", "a")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step)
            except ImportError:
                self.tb = None

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and value is not None:
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def train(config: TrainConfig, resume: bool = False, console=print) -> dict:
    """Train from a config; returns the last logged metrics. Under torchrun, every rank calls this."""
    try:
        return Trainer(config, resume=resume, console=console).fit()
    finally:
        close_distributed()
