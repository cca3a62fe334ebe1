"""`compactlm train CONFIG.yaml`: the TinyLlama recipe, top to bottom: setup -> fit -> validate -> save.

- The run is resolved from its config in one place (`compactlm.config.train.resolve_run`): the
  tokenizer, vocabulary, model config, accumulation and step counts.
- Gradients are accumulated over micro-batches, clipped by global norm (the norm is logged), and a
  step whose loss is not finite is skipped and counted; `max_nonfinite` in a row stop the run with a
  checkpoint and a message. The learning rate follows the optimizer step (`compactlm.train.optim`).
- Checkpoints (every N steps, at the end, and on SIGTERM/SIGINT) are directories written atomically
  (`compactlm.checkpoint`): the model as `compactlm.from_pretrained` reads it, plus `train_state.pt`
  (optimizer, step, RNG, the data loader's next sample index). The data stream is a pure function of
  the sample index, so `--resume` is exact and immediate: training 2N steps straight or N, kill,
  resume gives bit-identical losses and weights on the CPU.
"""

from __future__ import annotations

import math
import shutil
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from safetensors.torch import save_file

from compactlm.checkpoint import layout
from compactlm.checkpoint.io import atomic_directory, publish_directory
from compactlm.checkpoint.model import build_model, write_model_files
from compactlm.checkpoint.training import full_state, save_sharded, write_train_state
from compactlm.config.loader import to_dict
from compactlm.config.model import ModelConfig
from compactlm.config.train import TrainConfig, checkpoint_format, resolve_run
from compactlm.train import metrics as metrics_file
from compactlm.train.distributed import (barrier, clip_grad_norm, close_distributed, gradient_sync, init_distributed,
                                         parallelize, resolve_parallelism)
from compactlm.train.objective import Pretraining, to_device
from compactlm.train.optim import lr_at, make_optimizer, set_lr
from compactlm.train.restore import Restoring, TrainingError
from compactlm.train.run_dir import claim
from compactlm.train.runtime import (apply_kernels, autocast, autocast_dtype, device_peak_flops, peak_memory,
                                     resolve_device)


class Interrupted(TrainingError):
    """Stopped by a signal (Ctrl-C, SIGTERM) after a checkpoint; the CLI exits 128 + the signal number."""

    def __init__(self, message: str, signum: int | None = None):
        super().__init__(message)
        self.exit_code = 128 + (signum or signal.SIGTERM)

    def __reduce__(self):  # crosses process boundaries (the ladder's workers) intact
        return type(self), (str(self), self.exit_code - 128)


def _silent(*args, **kwargs) -> None:
    pass


class Trainer(Restoring):
    """The training loop every objective shares. Subclasses change what is trained (fine-tuning:
    compactlm.finetune.trainer) through the hooks `_resolve`, `_make_objective`, `_make_module`,
    `_write_weights` and `_load_state`; the loop, checkpoints, resume and metrics stay this class's."""

    def __init__(self, config: TrainConfig, resume: bool = False, console=print, overwrite: bool = False):
        self.config, self.console = config, console
        self.run_dir = Path(config.run_dir)
        self.world = init_distributed(resolve_device(config.device).type)
        self.rank, self.world_size = self.world.rank, self.world.size
        self.device = resolve_device(config.device, self.world.local_rank)
        self.amp_dtype = autocast_dtype(config.train.precision, self.device)
        self.parallelism = resolve_parallelism(config.train.parallelism, self.world_size)
        self.checkpoint_format = checkpoint_format(config.train.checkpoint_format, self.parallelism)
        if not self.world.is_main:
            self.console = _silent
        self._stop_signal: int | None = None
        self._stop_requested = False
        self._pending_save: tuple | None = None  # (future, temporary dir, final dir) of a background write
        # Background checkpoint writes run their own collectives: on a group of their own, so they never
        # interleave with the training step's.
        self._checkpoint_group = (dist.new_group(backend="gloo") if self.world_size > 1 and
                                  self.checkpoint_format == "sharded" and config.train.async_checkpoint else None)
        self.resuming = resume
        self.run = self._resolve()
        self._lock = claim(self.run_dir, resume, overwrite) if self.world.is_main else None
        try:
            self._setup(resume)
        except BaseException:
            self.close()
            raise

    def _setup(self, resume: bool) -> None:
        config = self.config
        barrier(self.world)  # rank 0 has claimed the run directory
        self.model_config: ModelConfig = self.run.model
        self.accumulation, self.max_steps, self.decay_steps = (self.run.accumulation, self.run.max_steps,
                                                               self.run.decay_steps)
        self.tokenizer = self.run.tokenizer
        self._setup_model()
        self.validator = self.objective.validator(config.eval_samples, config.train.micro_batch, self.device,
                                                  self.amp_dtype)
        self.step, self.tokens_seen, self.nonfinite_total, self.nonfinite_run = 0, 0, 0, 0
        resumed = self._resume() if resume else False
        if not resumed and config.train.init_from:
            self._init_from(Path(config.train.init_from))
        self._write_resolved_config()

    # ---- setup ----------------------------------------------------------------------------------
    def _resolve(self):
        """The run's model config, tokenizer, accumulation and steps (compactlm.config.train.resolve_run)."""
        return resolve_run(self.config, self.world_size)

    def _make_objective(self, fused: bool):
        return Pretraining(self.config, self.tokenizer, self.model_config.eos_id, fused)

    def _make_module(self) -> torch.nn.Module:
        torch.manual_seed(self.config.seed)  # the same initial weights on every rank
        return build_model(self.model_config, device=self.device)

    def _setup_model(self) -> None:
        module = self._make_module()
        module.checkpoint_every = self.config.train.activation_checkpointing
        self.kernels = apply_kernels(module, self.config.train.kernels, self.device)
        self.module = module  # the Transformer, for its config and parameter count
        self.objective = self._make_objective(fused=self.config.train.kernels != "eager")
        self.model = parallelize(module, self.parallelism, self.device, self.amp_dtype)
        if self.parallelism != "none":
            self.kernels.append(f"{self.parallelism} over {self.world_size} ranks")
        self.optimizer = make_optimizer(module, self.config.optim)  # after sharding: it holds the shards
        self.peak_flops = device_peak_flops(self.device, self.config.peak_flops)
        self.flops_per_token = self.model_config.flops_per_token(self.config.data.seq_len)

    def _write_resolved_config(self) -> None:
        if not self.world.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / layout.RUN_CONFIG).write_text(yaml.safe_dump(to_dict(self.config), sort_keys=False))

    # ---- save -----------------------------------------------------------------------------------
    def save_checkpoint(self, final: bool = True) -> Path:
        """Write checkpoints/step-N atomically (a hidden temporary directory, renamed once complete).

        Collective: every rank calls it. Full format: rank 0 gathers and writes everything. Sharded:
        every rank writes its own shards; unless `final`, in the background (with
        train.async_checkpoint), published by the next save or at the end of the run.
        """
        self._publish_pending_save()
        path = layout.checkpoint_dir(self.run_dir, self.step)
        if self.checkpoint_format == "full":
            model_sd, optim_sd = full_state(self.model, self.optimizer, self.model_config.tie_embeddings)
            if self.world.is_main:
                with atomic_directory(path) as tmp:
                    self._write_weights(tmp, model_sd)
                    self._write_checkpoint_files(tmp, optimizer=optim_sd)
                self._drop_old_checkpoints()
            barrier(self.world)
            return path
        tmp = layout.temporary_dir(path)
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

    def _write_weights(self, directory: Path, model_sd: dict) -> None:
        save_file(model_sd, directory / layout.WEIGHTS_FILE, metadata={"format": "pt"})

    def _write_checkpoint_files(self, directory: Path, **extra) -> None:
        write_model_files(directory, self.model_config, self.tokenizer)
        state = {"step": self.step, "tokens_seen": self.tokens_seen,
                 "data": self.objective.state(self.step * self.config.train.global_batch),
                 "nonfinite_total": self.nonfinite_total, "nonfinite_run": self.nonfinite_run,
                 "rng_cpu": torch.get_rng_state(), "world_size": self.world_size, **extra}
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        write_train_state(directory, state)
        (directory / layout.CONFIG_COPY).write_text(yaml.safe_dump(to_dict(self.config), sort_keys=False))

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
        kept = set(self.config.checkpoint_steps)
        for old in layout.complete_checkpoints(self.run_dir)[:-self.config.keep_checkpoints or None]:
            if layout.step_of(old) not in kept:
                shutil.rmtree(old, ignore_errors=True)

    def close(self) -> None:
        """Release the run directory (also done at the end of `fit`)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ---- fit ------------------------------------------------------------------------------------
    def fit(self) -> dict:
        try:
            if self.step >= self.max_steps:
                self.console(f"{self.run_dir}: already trained to step {self.step} (train.max_steps {self.max_steps}); "
                             "nothing to do. Raise train.max_steps (or train.max_tokens) to train further")
                return {}
            return self._fit()
        finally:
            self.close()

    def _fit(self) -> dict:
        cfg, train = self.config, self.config.train
        self.console(self._banner())
        loader = iter(self.objective.batches(train.micro_batch, start=self.step * train.global_batch,
                                             rank=self.rank, world_size=self.world_size))
        metrics = (metrics_file.MetricsWriter(self.run_dir, cfg.tensorboard, purge_step=self.step + 1)
                   if self.world.is_main else metrics_file.NoMetrics())
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        first_step, started, last = self.step, time.perf_counter(), {}
        try:
            while self.step < self.max_steps:
                step_start = time.perf_counter()
                lr = lr_at(self.step, cfg.optim, self.decay_steps)
                loss, grad_norm, extras = self._optimizer_step(loader, lr)
                self.step += 1
                self.tokens_seen += self.run.tokens_per_step
                record = {**self._step_record(loss, lr, grad_norm,
                                              self.run.tokens_per_step / (time.perf_counter() - step_start)),
                          **extras}
                metrics.write(record)
                last = record
                if self.step % cfg.log_every == 0 or self.step == self.max_steps:
                    elapsed = time.perf_counter() - started
                    self.console(self._step_line(record, elapsed / (self.step - first_step)))
                if self.step % cfg.eval_every == 0 or self.step == self.max_steps:
                    last = {**last, **self._log_validation(metrics)}
                if ((self.step % cfg.checkpoint_every == 0 or self.step in cfg.checkpoint_steps)
                        and self.step != self.max_steps):
                    self.save_checkpoint(final=False)
                if self._stop_requested:
                    path = self.save_checkpoint()
                    raise Interrupted(f"stopped by signal {self._stop_signal or '(on another rank)'} at step "
                                      f"{self.step}; checkpoint {path}; continue with --resume", self._stop_signal)
            self.save_checkpoint()
        finally:
            metrics.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return last

    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signum  # finish the step in flight, checkpoint, stop

    def _optimizer_step(self, loader, lr: float) -> tuple[float, float, dict]:
        """One optimizer step: (mean loss, gradient norm, the objective's further metrics averaged)."""
        set_lr(self.optimizer, lr)
        total, extras = torch.zeros((), device=self.device), {}
        for i in range(self.accumulation):
            batch = to_device(next(loader), self.device)
            with gradient_sync(self.model, enabled=i == self.accumulation - 1):
                with autocast(self.device, self.amp_dtype):
                    loss, more = self.objective.loss(self.model, batch)
                (loss / self.accumulation).backward()
            total += loss.detach()
            for name, value in more.items():
                extras[name] = extras.get(name, 0.0) + value.detach() / self.accumulation
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
        return loss_value, grad_norm, {name: value.item() for name, value in extras.items()}

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

    def validate(self) -> dict:
        return self.validator(self.model)

    # ---- logging --------------------------------------------------------------------------------
    def _banner(self) -> str:
        cfg = self.config
        precision = "bf16 autocast" if self.amp_dtype is not None else "float32"
        return (f"model {self.model_config.name}: {self.module.num_params():,} parameters "
                f"({self.model_config.non_embedding_params:,} non-embedding), vocab {self.tokenizer.vocab_size}; "
                f"{self.device}, {precision}, kernels: {', '.join(self.kernels)}; batch {cfg.train.global_batch} x "
                f"{cfg.data.seq_len} tokens ({cfg.train.micro_batch} x {self.accumulation} accumulation); "
                f"steps {self.step} -> {self.max_steps}")

    def _step_record(self, loss, lr, grad_norm, tokens_per_s) -> dict:
        record = {"step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": self.tokens_seen,
                  "tokens_per_s": tokens_per_s, "peak_memory": peak_memory(self.device)}
        if self.peak_flops:
            record["mfu"] = tokens_per_s * self.flops_per_token / (self.peak_flops * self.world_size)
        return record

    def _step_line(self, record: dict, seconds_per_step: float) -> str:
        mfu = f" | MFU {record['mfu']:.1%}" if "mfu" in record else ""
        eta = _duration(seconds_per_step * (self.max_steps - self.step))
        return (f"step {self.step:>6}/{self.max_steps} | loss {record['loss']:.4f} | lr {record['lr']:.2e} | "
                f"grad {record['grad_norm']:.2f} | {record['tokens_per_s']:,.0f} tok/s{mfu} | "
                f"{record['peak_memory'] / 2**30:.2f} GiB peak | ETA {eta}")

    def _log_validation(self, metrics) -> dict:
        result = self.validate()
        if result:
            metrics.write({"step": self.step, "tokens": self.tokens_seen, **result})
            more = [f"{result['val_bpb']:.3f} bits/byte"] if "val_bpb" in result else [
                f"{k[4:]} {v:.4f}" for k, v in result.items() if k not in ("val_loss", "val_ppl")]
            self.console(" | ".join([f"validation at step {self.step}: loss {result['val_loss']:.4f}",
                                     f"ppl {result['val_ppl']:.2f}", *more]))
        return result


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def train(config: TrainConfig, resume: bool = False, console=print, overwrite: bool = False) -> dict:
    """Train from a config; returns the last logged metrics. Under torchrun, every rank calls this.

    A run directory that already holds a run needs `resume` (continue it) or `overwrite` (replace it).
    """
    try:
        return Trainer(config, resume=resume, console=console, overwrite=overwrite).fit()
    finally:
        close_distributed()
