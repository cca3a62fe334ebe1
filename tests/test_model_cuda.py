"""The same parity checks on a GPU; skipped where CUDA is absent (CI has none)."""

import pytest
import torch

import compactlm
from tests.conftest import compactlm_from_hf_model, hf_model_for, random_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(autouse=True)
def no_tf32():
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = previous


def test_cuda_float32_and_bf16_logits_match_transformers():
    config = random_config(n_head=8, n_kv_head=2, d_model=128, ffn_dim=352, vocab_size=333)
    reference = hf_model_for(config, seed=2)
    model = compactlm_from_hf_model(reference, config).cuda()
    reference = reference.cuda()
    ids = torch.randint(0, 333, (2, 40), device="cuda")
    with torch.no_grad():
        assert (model(ids) - reference(ids).logits).abs().max().item() <= 1e-5
        model, reference = model.bfloat16(), reference.bfloat16()
        model.rope.reset_tables()
        got, expected = model(ids).float(), reference(ids).logits.float()
    # bf16 keeps 8 bits of mantissa: two implementations of the same graph agree to a few ulps of
    # the logits' magnitude, not bit for bit (kernels may choose different reduction orders).
    assert (got - expected).abs().max().item() <= 0.05 * expected.abs().max().item()


def test_cuda_greedy_generation_matches_transformers():
    config = random_config(n_head=8, n_kv_head=2, d_model=128, ffn_dim=352, vocab_size=211, max_seq_len=128)
    reference = hf_model_for(config, seed=11)
    model = compactlm_from_hf_model(reference, config).cuda()
    reference = reference.cuda()
    prompt = torch.randint(0, 211, (1, 9), device="cuda")
    expected = reference.generate(prompt, max_new_tokens=30, min_new_tokens=30, do_sample=False, pad_token_id=0)
    assert compactlm.generate(model, prompt, 30).tolist() == expected.tolist()


def test_tinyllama_preset_runs_in_bf16_on_cuda():
    model = compactlm.build_model("tinyllama-1.1b", device="cuda", dtype=torch.bfloat16)
    ids = torch.randint(0, 32000, (1, 256), device="cuda")
    with torch.no_grad():
        logits = model(ids)
    assert logits.shape == (1, 256, 32000) and torch.isfinite(logits).all()
    out = compactlm.generate(model, ids[:, :8], 8, temperature=0.7, top_p=0.9, seed=0)
    assert out.shape == (1, 16)
