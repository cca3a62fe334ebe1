"""compactlm's DPO pieces against TRL's own DPOTrainer, on the same tiny Llama weights.

TRL is the reference: its DPOTrainer is built offline around a random-weight LlamaForCausalLM, tokenizes
an in-memory preference dataset, precomputes reference log-probs, collates a batch and computes the loss
(`_compute_loss`, what `compute_loss` runs on each training step). compactlm gets the same weights through
convert.hf and must give the same log-probs, loss, logged statistics and gradients.
"""
import pytest
import torch

pytest.importorskip("trl")

from compactlm.convert import hf  # noqa: E402
from compactlm.finetune.dpo import dpo_loss, sequence_logps  # noqa: E402
from tests.conftest import compactlm_from_hf_model, hf_model_for, random_config  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BETA = 0.25  # not DPOConfig's default 0.1, so a beta that never reached the loss would show
VOCAB = 64
EOS = 2

# Token ids of (prompt, chosen, rejected): different prompt and completion lengths in every pair, so
# padding lands in different places in each of the eight rows.
PAIRS = [
    ([5, 9, 17], [23, 4], [31, 8, 40]),
    ([11], [6, 50, 12, 33], [27]),
    ([60, 3, 14, 41, 7], [19], [22, 45, 9, 13]),
    ([38, 26], [10, 58, 30], [61, 5]),
]


def _tokenizer():
    """A word-level tokenizer built in memory: word "t<i>" is token i, so test text maps to chosen ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": EOS, **{f"t{i}": i for i in range(3, VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def _text(ids):
    return " ".join(f"t{i}" for i in ids)


def _trl_trainer(hf_model, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    dataset = Dataset.from_dict({"prompt": [_text(p) for p, _, _ in PAIRS],
                                 "chosen": [" " + _text(c) for _, c, _ in PAIRS],
                                 "rejected": [" " + _text(r) for _, _, r in PAIRS]})
    # precompute_ref_log_probs: no reference model is built (that would need the hub); TRL scores the
    # dataset once with the policy itself and reads the reference log-probs from the batch afterwards.
    args = DPOConfig(output_dir=str(tmp_path / "trl"), beta=BETA, precompute_ref_log_probs=True,
                     report_to="none", use_cpu=True, bf16=False, seed=0, disable_tqdm=True,
                     per_device_train_batch_size=len(PAIRS))
    return DPOTrainer(model=hf_model, args=args, train_dataset=dataset, processing_class=_tokenizer())


def test_dpo_matches_trl_dpo_trainer(tmp_path):
    config = random_config(d_model=32, n_head=4, n_kv_head=2, ffn_dim=88, vocab_size=VOCAB, max_seq_len=32)
    hf_model = hf_model_for(config, seed=3)
    ours = compactlm_from_hf_model(hf_model, config)
    trainer = _trl_trainer(hf_model, tmp_path)

    # TRL's tokenization: the prompt alone, the completion with EOS appended.
    rows = [trainer.train_dataset[i] for i in range(len(PAIRS))]
    for row, (prompt, chosen, rejected) in zip(rows, PAIRS):
        assert (row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]) == (prompt, chosen + [EOS], rejected + [EOS])

    # Reference log-probs that differ from the policy's, and by different amounts for chosen and
    # rejected, so that rewards, margins and accuracies are not trivially zero.
    g = torch.Generator().manual_seed(0)
    precomputed_chosen = torch.tensor([row["ref_chosen_logps"] for row in rows])
    precomputed_rejected = torch.tensor([row["ref_rejected_logps"] for row in rows])
    ref_chosen = precomputed_chosen + 2.0 * torch.randn(len(PAIRS), generator=g)
    ref_rejected = precomputed_rejected + 2.0 * torch.randn(len(PAIRS), generator=g)
    examples = [{**row, "ref_chosen_logps": c.item(), "ref_rejected_logps": r.item()}
                for row, c, r in zip(rows, ref_chosen, ref_rejected)]
    inputs = trainer.data_collator(examples)  # TRL's DataCollatorForPreference: chosen rows, then rejected
    tokens, completion_mask = inputs["input_ids"], inputs["completion_mask"]
    lengths = [len(p) + len(c) + 1 for p, c, _ in PAIRS] + [len(p) + len(r) + 1 for p, _, r in PAIRS]
    assert tokens.shape == (2 * len(PAIRS), max(lengths))
    assert inputs["attention_mask"].sum(1).tolist() == lengths  # right-padded
    assert completion_mask.sum(1).tolist() == [len(c) + 1 for _, c, _ in PAIRS] + [len(r) + 1 for _, _, r in PAIRS]
    ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]

    # TRL's loss on its own code path, keeping the per-token log-probs it sums.
    captured = []
    hook = trainer.model.register_forward_hook(lambda module, args, output: captured.append(output.log_probs))
    trainer.model.train()
    trl_loss = trainer._compute_loss(trainer.model, inputs, return_outputs=False)
    hook.remove()
    trl_loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    assert len(captured) == 1
    trl_logps = captured[0].detach().sum(dim=1)
    trl_chosen, trl_rejected = trl_logps.chunk(2)

    # compactlm on the same rows: the completion mask is over tokens, exactly what sequence_logps takes.
    ours.train()
    logps = sequence_logps(ours, tokens, completion_mask)
    policy_chosen, policy_rejected = logps.chunk(2)
    stats = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, BETA)
    stats.loss.backward()

    # The reference TRL precomputed at construction (compute_ref_log_probs) is the untouched policy.
    torch.testing.assert_close(torch.cat([precomputed_chosen, precomputed_rejected]), logps.detach(),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logps.detach(), trl_logps, rtol=1e-4, atol=1e-5)
    assert metrics["logps/chosen"] == pytest.approx(policy_chosen.mean().item(), rel=1e-4)
    assert metrics["logps/rejected"] == pytest.approx(policy_rejected.mean().item(), rel=1e-4)

    assert stats.loss.item() == pytest.approx(trl_loss.item(), abs=1e-5)
    assert stats.chosen_rewards.mean().item() == pytest.approx(metrics["rewards/chosen"], abs=1e-5)
    assert stats.rejected_rewards.mean().item() == pytest.approx(metrics["rewards/rejected"], abs=1e-5)
    assert stats.margins.mean().item() == pytest.approx(metrics["rewards/margins"], abs=1e-5)
    assert stats.accuracies.mean().item() == pytest.approx(metrics["rewards/accuracies"], abs=1e-6)
    for name in ("chosen_rewards", "rejected_rewards", "margins", "accuracies"):
        assert not getattr(stats, name).requires_grad, name
    # A mixed batch: some pairs already ranked right, some wrong, so accuracy and margins are informative.
    assert 0.0 < metrics["rewards/accuracies"] < 1.0

    # Same gradient for every weight: TRL's on the HF layout, fused the way convert.hf fuses the weights.
    trl_grads = hf.state_dict_from_hf({n: p.grad for n, p in hf_model.named_parameters()}, config)
    our_grads = {n: p.grad for n, p in ours.named_parameters()}
    assert trl_grads.keys() == our_grads.keys()
    for name, grad in our_grads.items():
        assert grad is not None and grad.abs().max() > 0, name
        torch.testing.assert_close(grad, trl_grads[name], rtol=1e-4, atol=1e-6 * trl_grads[name].abs().max().item(),
                                   msg=lambda m, name=name: f"{name}: {m}")

    # The checks above would catch a flipped margin or an ignored beta: both move the loss well away.
    swapped = dpo_loss(policy_rejected, policy_chosen, ref_rejected, ref_chosen, BETA).loss.item()
    default_beta = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, 0.1).loss.item()
    assert abs(swapped - trl_loss.item()) > 1e-2
    assert abs(default_beta - trl_loss.item()) > 1e-2


def test_sequence_logps_ignores_padding_and_the_first_mask_position():
    """What sits behind the mask (padding ids, loss_mask[:, 0]) must not change a row's log-prob."""
    config = random_config(d_model=32, n_head=4, n_kv_head=2, ffn_dim=88, vocab_size=VOCAB, max_seq_len=32)
    model = compactlm_from_hf_model(hf_model_for(config, seed=1), config)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(3, VOCAB, (3, 9), generator=g)
    mask = torch.zeros_like(tokens)
    mask[0, 2:9] = 1
    mask[1, 4:6] = 1
    mask[2, 1:3] = 1
    with torch.no_grad():
        base = sequence_logps(model, tokens, mask)
        repadded = torch.where(torch.arange(9) >= torch.tensor([[9], [6], [3]]), torch.full_like(tokens, EOS), tokens)
        first = mask.clone()
        first[:, 0] = 1
        torch.testing.assert_close(sequence_logps(model, repadded, mask), base)
        torch.testing.assert_close(sequence_logps(model, tokens, first.bool()), base)
        # Each row's value is the sum of its own masked targets, computed the long way.
        logp = model(tokens[:, :-1]).float().log_softmax(-1)
        for b in range(3):
            expected = sum(logp[b, t - 1, tokens[b, t]] for t in range(1, 9) if mask[b, t])
            torch.testing.assert_close(base[b], expected)
