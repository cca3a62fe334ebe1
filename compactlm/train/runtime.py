"""What the machine gives a run: the device, the precision, the kernels, peak FLOPs and memory."""

from __future__ import annotations

import re
import resource
import sys
from pathlib import Path

import torch

from compactlm.config.train import KERNEL_MODES, PRECISIONS
from compactlm.errors import ConfigError

# Dense bf16 tensor-core peak per GPU (no sparsity), by a substring of torch.cuda.get_device_name().
PEAK_FLOPS = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("A100", 312e12),
              ("L40S", 362e12), ("L4", 121e12), ("A10", 125e12), ("A6000", 155e12), ("V100", 125e12)]


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto`: a GPU if there is one. With several ranks per node each takes GPU `local_rank`."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast (float32 master weights) or None for plain float32.

    "auto" picks bf16 on CUDA, and on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX), where
    it is faster than float32; elsewhere a CPU would emulate bf16, slower than float32.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision {precision!r}: choose auto, bf16 or fp32")
    if precision == "fp32" or (precision == "auto" and device.type == "cpu" and not cpu_has_native_bf16()):
        return None
    if precision == "auto" and device.type not in ("cuda", "cpu"):
        return None
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def device_peak_flops(device: torch.device, configured: float) -> float | None:
    if configured > 0:
        return configured
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_FLOPS if key in name), None)


def peak_memory(device: torch.device) -> int:
    """Peak memory of this process so far, in bytes: CUDA's max allocated, or the CPU's peak RSS.

    Logged with every step so that each run checks `compactlm plan`'s estimate.
    """
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


def apply_kernels(model, mode: str, device: torch.device) -> list[str]:
    """Switch on the fast paths for `mode`; returns what is in use, for the start-up report.

    auto: on CUDA, `torch.compile` each transformer block (fuses RMSNorm, RoPE, SwiGLU and the
    residual adds into a few kernels; attention stays on SDPA's flash backend); elsewhere eager.
    compile: compile blocks on any device. eager: plain PyTorch everywhere (the reference path).
    The fused linear + cross-entropy of the head is used in every mode but eager.
    """
    if mode not in KERNEL_MODES:
        raise ConfigError(f"train.kernels {mode!r}: choose one of {', '.join(KERNEL_MODES)}")
    used = ["sdpa attention"]
    if mode == "eager":
        return used + ["plain cross-entropy"]
    if mode == "compile" or (mode == "auto" and device.type == "cuda"):
        for block in model.layers:
            block.compile(dynamic=False)  # in place: parameter names, hence checkpoints, stay the same
        used.append("torch.compile per block")
    return used + ["fused linear+cross-entropy"]
