"""The memory planner: its activation count against the tensors autograd really saves, its totals
against peaks measured on an H100, and the `compactlm plan` command on the TinyLlama recipe."""

import pytest
import torch

from compactlm.checkpoint.model import build_model
from compactlm.cli import main
from compactlm.config.model import get_preset
from compactlm.train.plan import (GIB, PlanError, Setup, _block_saved_bytes, largest_micro_batch, parse_size, plan_memory,
                            usable_memory)


def test_sizes_parse_with_binary_and_decimal_units():
    assert parse_size("40GiB") == 40 * GIB
    assert parse_size("40G") == 40 * GIB
    assert parse_size("80GB") == 80 * 10 ** 9
    assert parse_size("512MiB") == 512 * 2 ** 20
    with pytest.raises(PlanError, match="40Gx"):
        parse_size("40Gx")


def saved_activation_bytes(block, x, cos, sin, autocast: bool) -> int:
    """Bytes of the distinct storages autograd saves for backward in one block, excluding the weights,
    autocast's bf16 copies of them (the plan counts those apart) and the shared RoPE tables."""
    excluded = {t.untyped_storage().data_ptr() for t in (*block.parameters(), cos, sin)}
    weight_shapes = {tuple(p.shape) for p in block.parameters()} | {tuple(p.shape[::-1]) for p in block.parameters()}
    storages = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in excluded and tuple(t.shape) not in weight_shapes:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            block(x, cos, sin)
    return sum(storages.values())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_block_activation_count_matches_what_autograd_saves(precision):
    config = get_preset("tinyllama-4m", vocab_size=256, max_seq_len=64)
    model = build_model(config)
    B, T = 2, 64
    x = torch.randn(B, T, config.d_model, requires_grad=True)
    cos, sin = model.rope(torch.arange(T)[None])
    measured = saved_activation_bytes(model.layers[0], x, cos, sin, autocast=precision == "bf16")
    planned = _block_saved_bytes(config, precision, "none", compiled=False) * B * T
    assert planned == pytest.approx(measured, rel=0.01), (planned, measured)


# Peaks measured with bench/gpu_train.py on one H100 (1.1B, sequence 2048, bf16 autocast, one
# micro-batch per step; docs/benchmarks.md, issue 7): (setup, torch.cuda.max_memory_allocated in GiB).
H100_PEAKS = [
    (Setup(8, 2048, parallelism="none", fused_loss=False), 54.0),
    (Setup(8, 2048, parallelism="none"), 50.1),
    (Setup(8, 2048, parallelism="none", compiled=True), 39.4),
    (Setup(12, 2048, parallelism="none", compiled=True), 51.1),
    (Setup(16, 2048, parallelism="none", compiled=True), 62.8),
    (Setup(8, 2048, parallelism="none", compiled=True, activation_checkpointing=1), 17.7),
    (Setup(48, 2048, parallelism="none", compiled=True, activation_checkpointing=1), 37.5),
]


@pytest.mark.parametrize("setup,measured", H100_PEAKS)
def test_plan_within_ten_percent_of_measured_h100_peaks(setup, measured):
    planned = plan_memory(get_preset("tinyllama-1.1b"), setup).total / GIB
    assert planned == pytest.approx(measured, rel=0.10)


def test_largest_micro_batch_agrees_with_the_h100_out_of_memory_point():
    """Micro-batch 16 ran and 20 ran out of memory on the 80 GB H100 (79.2 GiB for PyTorch)."""
    largest = largest_micro_batch(get_preset("tinyllama-1.1b"), Setup(8, 2048, parallelism="none", compiled=True),
                                  usable_memory(int(79.2 * GIB)))
    assert 16 <= largest < 20


def test_sharding_divides_the_optimizer_state_and_checkpointing_shrinks_activations():
    config = get_preset("tinyllama-1.1b")
    one = plan_memory(config, Setup(8, 2048, ranks=1, parallelism="none"))
    sixteen = plan_memory(config, Setup(8, 2048, ranks=16))
    assert sixteen.parts["AdamW moments (fp32)"] * 16 == pytest.approx(one.parts["AdamW moments (fp32)"], rel=1e-6)
    ckpt = plan_memory(config, Setup(8, 2048, ranks=16, activation_checkpointing=1))
    assert ckpt.parts["activations"] < sixteen.parts["activations"] / 10


def test_plan_command_shows_the_tinyllama_recipe_fits_16_gpus_of_40gb(capsys):
    assert main(["plan", "configs/tinyllama-1.1b.yaml", "--gpus", "16", "--gpu-memory", "40GiB",
                 "--vocab-size", "32000"]) == 0
    out = capsys.readouterr().out
    assert "FSDP2 over 16 ranks" in out and "micro-batch 8 x 2048" in out
    assert "no activation ckpt   micro-batch 8: fits" in out
    assert "global batch 1024: 8 accumulation steps" in out
    # On one such GPU, eager kernels and no sharding, it does not.
    assert main(["plan", "configs/tinyllama-1.1b.yaml", "--gpu-memory", "40GiB", "--vocab-size", "32000",
                 "train.kernels=eager"]) == 0
    assert "no activation ckpt   micro-batch 8: does NOT fit" in capsys.readouterr().out


def test_plan_command_rejects_a_bad_size(capsys):
    assert main(["plan", "configs/tinyllama-1.1b.yaml", "--gpu-memory", "lots"]) == 1
    assert "--gpu-memory 'lots'" in capsys.readouterr().err


def test_plan_without_the_data_names_the_missing_tokenizer_and_the_way_out(capsys):
    assert main(["plan", "configs/tinyllama-1.1b.yaml", "--gpus", "16"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no manifest.json" in err and "--vocab-size" in err
