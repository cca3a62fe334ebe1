"""Fast paths against the plain PyTorch they replace."""

import pytest
import torch
import torch.nn.functional as F

from compactlm.kernels import linear_cross_entropy


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
