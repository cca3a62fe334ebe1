"""`compactlm finetune CONFIG.yaml`: SFT or DPO, full or LoRA, on the pretraining trainer.

The loop, checkpoints, exact resume, metrics, FSDP2/DDP and signals are `compactlm.train.trainer`'s;
this subclass only says what is trained: the base checkpoint's weights (plus adapters), on the
conversations of `data.train`, with the SFT or DPO objective.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

from compactlm.checkpoint import layout
from compactlm.checkpoint.io import load_safetensors
from compactlm.checkpoint.model import from_pretrained
from compactlm.config.finetune import FinetuneConfig
from compactlm.config.train import ResolvedRun, accumulation
from compactlm.errors import ConfigError
from compactlm.fileio import atomic_file
from compactlm.finetune import lora
from compactlm.finetune.data import Encoded, encode_pairs, encode_sft, pack, pad_id
from compactlm.finetune.objectives import DPO, SFT, reference_logps
from compactlm.tokenizer.chat import chat_template
from compactlm.tokenizer.tokenizer import require_tokenizer
from compactlm.train.distributed import close_distributed
from compactlm.train.trainer import Trainer, TrainingError

REFERENCE_FILE = "reference_logps.safetensors"


class FinetuneTrainer(Trainer):
    config: FinetuneConfig

    # ---- what is trained ------------------------------------------------------------------------
    def _resolve(self) -> ResolvedRun:
        cfg, ft = self.config, self.config.finetune
        if ft.adapter == "lora" and cfg.train.checkpoint_format == "sharded":
            raise ConfigError("train.checkpoint_format 'sharded': LoRA checkpoints are written whole (full); the "
                              "adapters are small")
        self.base = from_pretrained(ft.base)  # on the CPU; moved to the device by _make_module
        tokenizer = require_tokenizer(ft.base)
        self.template = chat_template(tokenizer, ft.chat_template)
        tokenizer.chat_template = self.template.source  # saved with every checkpoint
        model = self.base.config
        if cfg.data.seq_len > model.max_seq_len:
            raise ConfigError(f"data.seq_len {cfg.data.seq_len} exceeds the base model's context "
                              f"({model.max_seq_len} tokens)")
        self.train_data, self.val_data = self._encode(tokenizer)
        rows = (len(self.packed.tokens) if ft.method == "sft" else len(self.train_data.examples) // 2)
        tokens_per_step = cfg.train.global_batch * cfg.data.seq_len
        steps = (cfg.train.max_steps or math.ceil(cfg.train.max_tokens / tokens_per_step)
                 or math.ceil(ft.epochs * rows / cfg.train.global_batch))
        return ResolvedRun(model=model, tokenizer_path=tokenizer.path, tokenizer=tokenizer,
                           world_size=self.world_size, accumulation=accumulation(cfg.train, self.world_size),
                           max_steps=steps, decay_steps=cfg.train.lr_decay_steps or steps,
                           tokens_per_step=tokens_per_step)

    def _encode(self, tokenizer) -> tuple[Encoded, Encoded | None]:
        data, method = self.config.data, self.config.finetune.method
        encode = encode_sft if method == "sft" else encode_pairs
        # SFT rows hold seq_len inputs plus the last target; a DPO sequence is as long as a row.
        train = encode(data.train, tokenizer, self.template, data.seq_len + 1)
        val = encode(data.val, tokenizer, self.template, data.seq_len + 1) if data.val else None
        if not train.examples:
            raise ConfigError(f"data.train {data.train}: no example has a token to learn from")
        for name, encoded in (("data.train", train), ("data.val", val)):
            if encoded is not None and (encoded.truncated or encoded.dropped):
                self.console(f"{name}: {encoded.truncated} of {len(encoded.examples) + encoded.dropped} examples cut "
                             f"to {data.seq_len + 1} tokens, {encoded.dropped} dropped (nothing left to learn from)")
        scored = sum(int(mask[1:].sum()) for _, mask in train.examples)
        if method == "sft":
            self.packed = pack(train.examples, data.seq_len + 1, pad_id(tokenizer))
            self.val_packed = pack(val.examples, data.seq_len + 1, pad_id(tokenizer)) if val else None
            self.console(f"data.train: {len(train.examples):,} conversations packed into {len(self.packed.tokens):,} "
                         f"rows of {data.seq_len + 1} tokens; {scored:,} assistant tokens "
                         f"({scored / self.packed.tokens.size:.0%} of the rows) carry the loss")
        else:
            self.console(f"data.train: {len(train.examples) // 2:,} preference pairs; {scored:,} response tokens")
        return train, val

    def _make_module(self) -> torch.nn.Module:
        module = self.base.to(self.device)
        del self.base
        if self.config.finetune.adapter == "lora":
            torch.manual_seed(self.config.seed)  # the adapters' initialisation
            module = lora.add_lora(module, self.config.finetune.lora)
        return module

    def _make_objective(self, fused: bool):
        cfg, pad = self.config, pad_id(self.tokenizer)
        if cfg.finetune.method == "sft":
            return SFT(self.packed, self.val_packed, cfg.data.seed, self.train_data.hash, fused)
        reference = self._reference(self.train_data, "train")
        val_reference = self._reference(self.val_data, "val") if self.val_data else None
        return DPO(self.train_data, self.val_data, reference, val_reference, cfg.finetune.beta, cfg.data.seed, pad)

    def _reference(self, encoded: Encoded, split: str) -> torch.Tensor:
        """The reference model's log-probs: the base's (the module before any step), cached in the run
        directory so that a resumed run uses the very same numbers."""
        path = self.run_dir / f"{split}_{REFERENCE_FILE}"
        if self.resuming and path.is_file():
            state = load_safetensors(path)
            if state.get("hash") is not None and bytes(state["hash"].tolist()).decode() == encoded.hash:
                return state["logps"]
        logps = reference_logps(self.module, encoded, self.config.train.micro_batch,
                                pad_id(self.tokenizer), self.device, self.amp_dtype)
        if self.world.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            hash_bytes = torch.tensor(list(encoded.hash.encode()), dtype=torch.uint8)
            with atomic_file(path) as tmp:
                save_file({"logps": logps, "hash": hash_bytes}, tmp)
        return logps

    # ---- checkpoints ----------------------------------------------------------------------------
    def _write_weights(self, directory: Path, model_sd: dict) -> None:
        if self.config.finetune.adapter != "lora":
            return super()._write_weights(directory, model_sd)
        save_file(lora.adapter_state(model_sd), directory / lora.ADAPTER_WEIGHTS)
        lora.write_adapter_config(directory, self.config.finetune.lora, str(self.config.finetune.base))
        super()._write_weights(directory, lora.merged_state(model_sd, self.config.finetune.lora))

    def _load_state(self, path: Path, state: dict) -> None:
        if self.config.finetune.adapter != "lora":
            return super()._load_state(path, state)
        model_sd = {**self.module.state_dict(), **lora.load_adapters(self.module, path)}  # base weights: frozen
        if "optimizer" not in state:
            raise TrainingError(f"{path}: no optimizer state in {layout.STATE_FILE}")
        set_state_dict(self.model, self.optimizer, model_state_dict=model_sd, optim_state_dict=state["optimizer"],
                       options=StateDictOptions(full_state_dict=True))


def finetune(config: FinetuneConfig, resume: bool = False, console=print, overwrite: bool = False) -> dict:
    """Fine-tune from a config; returns the last logged metrics. Under torchrun, every rank calls this."""
    try:
        return FinetuneTrainer(config, resume=resume, console=console, overwrite=overwrite).fit()
    finally:
        close_distributed()
