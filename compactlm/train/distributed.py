"""Data parallelism with PyTorch's own engine: process groups from torchrun, FSDP2 or DDP.

The model math lives in model.py and knows nothing of this module (torchtitan's split): the trainer
builds a plain `Transformer`, then `parallelize` shards or replicates it. Launch with
`torchrun --nproc-per-node N -m compactlm train CONFIG` (or `compactlm train CONFIG --nproc N`);
torchrun sets RANK / WORLD_SIZE / LOCAL_RANK and the rendezvous, for one node or many.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from compactlm.config.train import PARALLELISMS
from compactlm.errors import CompactlmError


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init_distributed(device_type: str) -> World:
    """Join the process group torchrun set up (nccl on GPUs, gloo on CPUs); a lone process gets World()."""
    if not launched_by_torchrun():
        return World()
    world = World(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return world


def close_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def resolve_parallelism(name: str, world_size: int) -> str:
    if name not in PARALLELISMS:
        raise CompactlmError(f"train.parallelism {name!r}: choose one of {', '.join(PARALLELISMS)}")
    if world_size == 1:
        return "none"
    if name == "none":
        raise CompactlmError(f"train.parallelism none with {world_size} ranks: choose fsdp or ddp")
    return "fsdp" if name == "auto" else name


def parallelize(model: torch.nn.Module, mode: str, device: torch.device,
                param_dtype: torch.dtype | None) -> torch.nn.Module:
    """Shard (FSDP2) or replicate (DDP) a model whose blocks are already compiled / checkpointed.

    FSDP2: one `fully_shard` unit per transformer block plus the root (embedding, final norm, head),
    so only one block's full parameters live at a time. Under bf16 the gathered parameters are bf16
    (computed once per step, not re-cast by autocast on every use) while master weights, gradients
    and their reduction stay float32.
    """
    if mode == "none":
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in model.layers:
        fully_shard(block, mp_policy=policy)
    # The root's parameters (embedding, head) are needed again right after the last block: keeping
    # them gathered through the step saves an all-gather.
    fully_shard(model, mp_policy=policy, reshard_after_forward=False)
    return model


@contextlib.contextmanager
def gradient_sync(model: torch.nn.Module, enabled: bool):
    """Accumulate gradients locally on all but the last micro-batch of a step: one reduction per step."""
    if enabled:
        yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    elif hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
    else:
        yield


def clip_grad_norm(parameters, max_norm: float) -> float:
    """Global gradient norm (clipping to max_norm), also when gradients are sharded DTensors."""
    norm = torch.nn.utils.clip_grad_norm_(list(parameters), max_norm)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return norm.item()


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()
