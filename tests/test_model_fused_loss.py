"""Fast paths against the plain PyTorch they replace."""

import pytest
import torch
import torch.nn.functional as F

from compactlm.model.fused_loss import linear_cross_entropy


def reference_loss(hidden, weight, targets):
    return F.cross_entropy((hidden @ weight.t()).float(), targets)


@pytest.mark.parametrize("chunk_size", [7, 64, 1000])
def test_linear_cross_entropy_matches_loss_and_gradients_in_float32(chunk_size):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(150, 32, generator=g, requires_grad=True)
    weight = torch.randn(257, 32, generator=g, requires_grad=True)
    targets = torch.randint(0, 257, (150,), generator=g)
    expected = reference_loss(hidden, weight, targets)
    expected.backward()
    ref_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    got = linear_cross_entropy(hidden, weight, targets, chunk_size=chunk_size)
    (got * 3).backward()  # a scaled upstream gradient reaches both inputs
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(hidden.grad, 3 * ref_grads[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weight.grad, 3 * ref_grads[1], rtol=1e-5, atol=1e-6)


def test_linear_cross_entropy_under_bf16_autocast_keeps_float32_master_gradients():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(64, 32, generator=g, requires_grad=True)
    weight = torch.randn(100, 32, generator=g, requires_grad=True)
    targets = torch.randint(0, 100, (64,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = F.cross_entropy(F.linear(hidden, weight).float(), targets)
    expected.backward()
    ref = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_cross_entropy(hidden, weight, targets, chunk_size=16)
    got.backward()
    assert weight.grad.dtype == torch.float32 and hidden.grad.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(weight.grad, ref[1], rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(hidden.grad, ref[0], rtol=2e-2, atol=2e-3)


def test_no_grad_path_computes_the_same_loss():
    hidden, weight = torch.randn(50, 16), torch.randn(40, 16)
    targets = torch.randint(0, 40, (50,))
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, targets, chunk_size=9),
                                   reference_loss(hidden, weight, targets))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_linear_cross_entropy_on_cuda_bf16():
    g = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(4096, 256, device="cuda", generator=g, requires_grad=True)
    weight = torch.randn(32000, 256, device="cuda", generator=g, requires_grad=True)
    targets = torch.randint(0, 32000, (4096,), device="cuda", generator=g)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        expected = F.cross_entropy(F.linear(hidden, weight).float(), targets)
    expected.backward()
    ref = weight.grad.clone()
    weight.grad = None
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = linear_cross_entropy(hidden, weight, targets)
    got.backward()
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(weight.grad, ref, rtol=2e-2, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fast_path_training_tracks_eager_over_50_steps_on_cuda():
    """Compiled blocks + fused linear-CE vs the eager reference: same weights, data and bf16 autocast.

    The paths round to bf16 at different points, so they are not bit-identical and drift apart
    slowly. The bound is calibrated on bf16 itself: over the 50 steps the fast path may stray from
    the float32 trajectory by at most twice as much as eager bf16 does (plus 0.1% of slack), i.e. it
    is as accurate as the eager bf16 path within a factor 2. A real bug (a wrong gradient, a dropped
    term) moves the loss much further within a few steps.
    """
    import compactlm
    from compactlm.checkpoint.model import cpu_state
    from compactlm.train.runtime import apply_kernels
    from compactlm.config.train import OptimSection
    from compactlm.model.transformer import lm_loss
    from compactlm.train.optim import make_optimizer

    device = torch.device("cuda")
    config = compactlm.get_preset("tinyllama-13m", vocab_size=8000, max_seq_len=256)
    torch.manual_seed(0)
    state = cpu_state(compactlm.build_model(config))
    g = torch.Generator(device="cuda").manual_seed(0)
    data = [torch.randint(0, 8000, (8, 257), device="cuda", generator=g) for _ in range(10)]
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    trajectories = {}
    for name, mode, amp in (("fp32", "eager", False), ("eager", "eager", True), ("fast", "compile", True)):
        model = compactlm.build_model(config, device=device)
        model.load_state_dict(state)
        apply_kernels(model, mode, device)
        optimizer = make_optimizer(model, OptimSection(lr=1e-3, warmup_steps=1))
        losses = []
        for step in range(50):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                loss = lm_loss(model, data[step % 10], fused=mode != "eager")
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        trajectories[name] = torch.tensor(losses)
    torch.backends.cuda.matmul.allow_tf32 = previous_tf32
    def drift(a, b):
        return ((trajectories[a] - trajectories[b]).abs() / trajectories[b]).max().item()

    print(f"max relative drift: eager bf16 vs fp32 {drift('eager', 'fp32'):.4f}, fast vs fp32 "
          f"{drift('fast', 'fp32'):.4f}, fast vs eager bf16 {drift('fast', 'eager'):.4f}")
    assert drift("fast", "fp32") <= 2 * drift("eager", "fp32") + 1e-3
    assert trajectories["eager"][-1] < trajectories["eager"][0] - 0.3  # it did learn (random tokens: little to learn)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_block_matches_eager_block_on_cuda():
    """torch.compile fuses RMSNorm, RoPE, SwiGLU and the residual adds; the block's outputs and
    gradients must not change beyond float32 reassociation (1e-4 relative to the output scale)."""
    import copy

    import compactlm

    torch.backends.cuda.matmul.allow_tf32 = False
    model = compactlm.build_model("tinyllama-13m", vocab_size=1000, device="cuda")
    eager = model.layers[0]
    compiled = copy.deepcopy(eager)
    compiled.compile(dynamic=False)
    x = torch.randn(4, 128, model.config.d_model, device="cuda", requires_grad=True)
    cos, sin = model.rope(torch.arange(128, device="cuda")[None])
    outputs, grads = [], []
    for block in (eager, compiled):
        out = block(x, cos, sin)
        (out * torch.linspace(-1, 1, out.shape[-1], device="cuda")).sum().backward()
        outputs.append(out.detach())
        grads.append([x.grad.clone()] + [p.grad.clone() for p in block.parameters()])
        x.grad = None
    scale = outputs[0].abs().max()
    assert (outputs[0] - outputs[1]).abs().max() <= 1e-4 * scale
    for a, b in zip(*grads):
        assert (a - b).abs().max() <= 1e-4 * a.abs().max() + 1e-7
