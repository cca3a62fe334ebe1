"""Speculative decoding: greedy output equals the target's own, sampling follows the target's distribution."""

import pytest
import torch

import compactlm
from compactlm.checkpoint.model import build_model
from compactlm.model.speculative import speculative_generate
from tests.conftest import random_config


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_model(seed: int, std: float = 0.1, **overrides):
    """Weights ~ N(0, std), wider than init_weights: peaked logits make argmax near-ties (where a batched
    and a one-token forward could round differently) unlikely."""
    torch.manual_seed(seed)
    model = build_model(random_config(**{"max_seq_len": 128, **overrides}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("norm.weight"):
                p.normal_(0.0, std)
    return model.eval()


@pytest.fixture(scope="module")
def target():
    return random_model(0)


@pytest.fixture(scope="module")
def drafts(target):
    unrelated = random_model(1, n_layer=1, d_model=32, n_head=2, n_kv_head=1, ffn_dim=64)
    close = random_model(0)  # the target, slightly perturbed: accepts some drafts and rejects others
    torch.manual_seed(2)
    with torch.no_grad():
        for p in close.parameters():
            p.add_(torch.randn_like(p), alpha=0.01)
    return {"itself": target, "unrelated": unrelated, "close": close}


def prompts():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 101, (1, n), generator=g) for n in (1, 6, 17)]


@pytest.mark.parametrize("draft_tokens", [1, 2, 4, 7])
def test_greedy_equals_the_targets_own_greedy_decode(target, drafts, draft_tokens):
    rates = {}
    for name, draft in drafts.items():
        proposed = accepted = 0
        for prompt in prompts():
            expected = compactlm.generate(target, prompt, 30)
            got, stats = speculative_generate(target, draft, prompt, 30, draft_tokens=draft_tokens)
            assert got.tolist() == expected.tolist(), (name, prompt.shape)
            proposed, accepted = proposed + stats.proposed, accepted + stats.accepted
        rates[name] = accepted / proposed
    assert rates["itself"] == 1.0
    assert rates["unrelated"] < 0.2
    assert 0.0 < rates["close"] < 1.0


def test_stats_count_rounds(target):
    prompt = prompts()[1]
    _, stats = speculative_generate(target, target, prompt, 30, draft_tokens=4)
    assert (stats.target_calls, stats.proposed, stats.accepted) == (6, 24, 24)  # 4 drafts + 1 bonus a round
    assert stats.acceptance_rate == 1.0
    # With 28 tokens the last round has room for 2 drafts + the target's token.
    _, stats = speculative_generate(target, target, prompt, 28, draft_tokens=4)
    assert (stats.target_calls, stats.proposed, stats.accepted) == (6, 22, 22)


def test_eos_stops_like_generate(target, drafts):
    prompt = prompts()[1]
    free = compactlm.generate(target, prompt, 30)
    eos = int(free[0, 6 + 9])  # the 10th generated token
    expected = compactlm.generate(target, prompt, 30, eos_id=eos)
    assert expected.shape[1] < free.shape[1]
    for draft in drafts.values():
        streamed = []
        got, _ = speculative_generate(target, draft, prompt, 30, draft_tokens=4, eos_id=eos,
                                      on_token=lambda t: streamed.append(t))
        assert got.tolist() == expected.tolist()
        assert all(t.shape == (1,) for t in streamed) and torch.cat(streamed).tolist() == got[0, 6:].tolist()


@pytest.mark.parametrize("max_new_tokens", [1, 2, 5, 9])
def test_never_more_than_max_new_tokens(target, max_new_tokens):
    prompt = prompts()[1]
    for temperature in (0.0, 1.0):
        streamed = []
        got, _ = speculative_generate(target, target, prompt, max_new_tokens, draft_tokens=4, temperature=temperature,
                                      seed=0, on_token=streamed.append)
        assert got.shape == (1, 6 + max_new_tokens) and len(streamed) == max_new_tokens


def test_refusals_are_one_line(target):
    prompt = torch.zeros(1, 3, dtype=torch.long)
    other_vocab = random_model(3, vocab_size=57)
    with pytest.raises(compactlm.CompactlmError, match=r"vocabulary \(57 tokens\) differs from the target's \(101\)"):
        speculative_generate(target, other_vocab, prompt, 4)
    short = random_model(3, max_seq_len=16)
    with pytest.raises(compactlm.CompactlmError, match="exceeds the draft model's context of 16"):
        speculative_generate(target, short, prompt, 14)
    with pytest.raises(compactlm.CompactlmError, match="exceeds the target model's context of 128"):
        speculative_generate(target, target, torch.zeros(1, 100, dtype=torch.long), 29)
    with pytest.raises(compactlm.CompactlmError, match=r"one sequence \[1, T\]"):
        speculative_generate(target, target, torch.zeros(2, 3, dtype=torch.long), 4)
    for bad in ({"draft_tokens": 0}, {"max_new_tokens": 0}, {"temperature": -1.0}, {"top_k": 0}, {"top_p": 0.0}):
        with pytest.raises(compactlm.CompactlmError, match="speculative_generate: max_new_tokens"):
            speculative_generate(target, target, prompt, **{"max_new_tokens": 4, **bad})


def test_sampling_is_reproducible_and_filters_apply(target, drafts):
    prompt = prompts()[1]
    draft = drafts["close"]
    a, _ = speculative_generate(target, draft, prompt, 30, temperature=1.0, seed=7)
    b, _ = speculative_generate(target, draft, prompt, 30, temperature=1.0, seed=7)
    c, _ = speculative_generate(target, draft, prompt, 30, temperature=1.0, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = compactlm.generate(target, prompt, 30)
    assert torch.equal(speculative_generate(target, draft, prompt, 30, temperature=1.0, top_k=1, seed=3)[0], greedy)
    assert torch.equal(speculative_generate(target, draft, prompt, 30, temperature=1.0, top_p=1e-6, seed=3)[0], greedy)


def total_variation(a: torch.Tensor, b: torch.Tensor) -> float:
    return 0.5 * float((a - b).abs().sum())


def test_samples_follow_the_targets_distribution_not_the_drafts():
    """Over many seeds, each of the first three sampled tokens is distributed as under the target alone.

    With 2 drafts a round these cover accepted and rejected drafts and the residual resample.
    8-token vocabulary, 1500 runs: a correct sampler's empirical total-variation distance is ~0.026
    on average, and the bound 0.08 separates it from two wrong rules, checked below on the exact
    distributions: always accepting the draft (samples q) and resampling rejections from p instead of
    normalize(max(0, p - q)); with either, the first token's distance is 0.4 and 0.16. Marginals are
    too blunt to see a bonus token drawn from the wrong position; the greedy tests catch that.
    """
    vocab, runs, bound = 8, 1500, 0.08
    target = random_model(0, vocab_size=vocab)
    draft = random_model(1, vocab_size=vocab, n_layer=1)
    prompt = torch.tensor([[1, 5, 3]])
    exact = target_marginals(target, prompt, 3)
    p, q = exact[0], draft(prompt)[0, -1].softmax(-1).detach()
    accepted = torch.minimum(p, q)
    resampled_from_p = accepted + (1 - accepted.sum()) * p
    assert total_variation(q, p) > 2 * bound and total_variation(resampled_from_p, p) > 1.5 * bound

    counts = torch.zeros(3, vocab)
    for seed in range(runs):
        ids, _ = speculative_generate(target, draft, prompt, 3, draft_tokens=2, temperature=1.0, seed=seed)
        counts[torch.arange(3), ids[0, 3:]] += 1
    for position in range(3):
        assert total_variation(counts[position] / runs, exact[position]) < bound, position


@torch.inference_mode()
def target_marginals(model, prompt: torch.Tensor, n: int) -> list[torch.Tensor]:
    """The exact distribution of each of the next n sampled tokens, by enumerating every continuation."""
    vocab = model.config.vocab_size
    seqs, weights = prompt, torch.ones(1)  # every continuation so far and its probability
    marginals = []
    for _ in range(n):
        joint = weights[:, None] * model(seqs)[:, -1].softmax(-1)  # [continuations, vocab]
        marginals.append(joint.sum(0))
        seqs = torch.cat([seqs.repeat_interleave(vocab, 0), torch.arange(vocab).repeat(len(seqs))[:, None]], 1)
        weights = joint.flatten()
    return marginals


def test_greedy_leaves_the_global_random_state_alone(target, drafts):
    state = torch.get_rng_state()
    speculative_generate(target, drafts["close"], prompts()[1], 10)
    assert torch.equal(torch.get_rng_state(), state)


def test_cli_draft_prints_the_targets_greedy_text_and_the_acceptance(tmp_path, bpe_tokenizer_file, capsys):
    from compactlm.checkpoint.model import save_checkpoint
    from compactlm.cli import main
    from compactlm.tokenizer.tokenizer import Tokenizer
    from tests.conftest import fails_with_one_line

    tokenizer = Tokenizer(bpe_tokenizer_file)
    target = random_model(0, vocab_size=tokenizer.vocab_size)
    draft = random_model(1, vocab_size=tokenizer.vocab_size, n_layer=1, d_model=32, n_head=2, n_kv_head=1, ffn_dim=64)
    save_checkpoint(target, tmp_path / "target", tokenizer)
    save_checkpoint(draft, tmp_path / "draft", tokenizer)
    common = ["generate", "--checkpoint", str(tmp_path / "target"), "--prompt", "def f(x):", "--temperature", "0",
              "--max-new-tokens", "20"]
    assert main(common) == 0
    plain = capsys.readouterr().out
    for draft_dir, rate in ((tmp_path / "draft", None), (tmp_path / "target", "100%")):
        assert main(common + ["--draft", str(draft_dir), "--draft-tokens", "3"]) == 0
        captured = capsys.readouterr()
        assert captured.out == plain
        assert "proposed tokens accepted" in captured.err and (rate is None or f"({rate})" in captured.err)

    other = tmp_path / "other-tokenizer"
    save_checkpoint(draft, other, None)
    fails_with_one_line(common + ["--draft", str(other)],
                        f"{other}: the draft model's tokenizer differs from {tmp_path / 'target'}'s", capsys)
    fails_with_one_line(common + ["--draft", str(tmp_path / "draft"), "--draft-tokens", "0"],
                        "--draft-tokens 0: must be at least 1", capsys)
