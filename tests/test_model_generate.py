"""Generation: greedy decoding equals transformers' generate, sampling controls, streaming CLI."""

import pytest
import torch

import compactlm
from compactlm.cli import main
from compactlm.model.generate import sample_next
from tests.conftest import compactlm_from_hf_model, hf_model_for, random_config


@pytest.fixture(scope="module")
def pair():
    config = random_config(n_head=8, n_kv_head=2, d_model=128, ffn_dim=352, vocab_size=211, max_seq_len=128)
    reference = hf_model_for(config, seed=11)
    reference.generation_config.pad_token_id = 0
    return reference, compactlm_from_hf_model(reference, config)


def test_greedy_equals_transformers_token_for_token(pair):
    reference, model = pair
    prompt = torch.randint(0, 211, (1, 9), generator=torch.Generator().manual_seed(0))
    expected = reference.generate(prompt, max_new_tokens=40, do_sample=False, min_new_tokens=40)
    got = compactlm.generate(model, prompt, max_new_tokens=40)
    assert got.shape == (1, 49)
    assert got.tolist() == expected.tolist()


def test_left_padded_batch_equals_transformers(pair):
    reference, model = pair
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 211, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[2, :7] = 0
    ids = ids.masked_fill(mask == 0, 0)
    expected = reference.generate(ids, attention_mask=mask, max_new_tokens=25, do_sample=False, min_new_tokens=25)
    got = compactlm.generate(model, ids, max_new_tokens=25, attention_mask=mask)
    assert got.tolist() == expected.tolist()
    # Each padded row continues exactly as it would alone, unpadded.
    alone = compactlm.generate(model, ids[2:3, 7:], max_new_tokens=25)
    assert got[2, 11:].tolist() == alone[0, 4:].tolist()


def test_sampling_is_reproducible_and_filters_apply(pair):
    _, model = pair
    prompt = torch.randint(0, 211, (2, 5), generator=torch.Generator().manual_seed(2))
    a = compactlm.generate(model, prompt, 30, temperature=1.0, seed=7)
    b = compactlm.generate(model, prompt, 30, temperature=1.0, seed=7)
    c = compactlm.generate(model, prompt, 30, temperature=1.0, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = compactlm.generate(model, prompt, 30)
    assert torch.equal(compactlm.generate(model, prompt, 30, temperature=1.0, top_k=1, seed=3), greedy)
    assert torch.equal(compactlm.generate(model, prompt, 30, temperature=1.0, top_p=1e-6, seed=3), greedy)


def test_top_k_and_top_p_keep_only_the_allowed_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, 1.0, top_k=2, generator=g)) for _ in range(300)}
    assert draws == {0, 1}
    draws = {int(sample_next(logits, 1.0, top_p=0.9, generator=g)) for _ in range(300)}
    assert draws == {0, 1, 2}  # 0.5 + 0.3 < 0.9, so the third token is still needed


def test_eos_stops_finished_rows(pair):
    _, model = pair
    prompt = torch.randint(0, 211, (1, 4), generator=torch.Generator().manual_seed(4))
    free = compactlm.generate(model, prompt, 20)
    eos = int(free[0, 8])  # the 5th generated token
    stopped = compactlm.generate(model, prompt, 20, eos_id=eos)
    first = free[0, 4:].tolist().index(eos)
    assert stopped[0].tolist() == free[0, :4 + first + 1].tolist()


def test_context_overflow_is_refused(pair):
    _, model = pair
    with pytest.raises(compactlm.CompactlmError, match="exceeds the model's context of 128"):
        compactlm.generate(model, torch.zeros(1, 100, dtype=torch.long), 29)


def test_cli_generate_streams_decoded_text(tmp_path, capsys, spm_tokenizer_file):
    tokenizer = compactlm.Tokenizer(spm_tokenizer_file)
    model = compactlm.build_model(random_config(vocab_size=tokenizer.vocab_size))
    compactlm.save_checkpoint(model, tmp_path / "ckpt", tokenizer)
    args = ["generate", "--checkpoint", str(tmp_path / "ckpt"), "--prompt", "def decode(", "--max-new-tokens", "12",
            "--temperature", "0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    prompt_ids = tokenizer.encode("def decode(", bos=True)
    expected = compactlm.generate(model, torch.tensor([prompt_ids]), 12, eos_id=tokenizer.eos_id)
    continuation = tokenizer.decode(expected[0, len(prompt_ids):].tolist())
    assert out == "def decode(" + continuation + "\n"


@pytest.mark.parametrize("kwargs", [{"max_new_tokens": 0}, {"max_new_tokens": -1}, {"temperature": -1.0},
                                    {"top_k": 0}, {"top_p": 5.0}, {"top_p": 0.0}])
def test_bad_sampling_arguments_are_refused_before_any_work(kwargs):
    from compactlm.checkpoint.model import build_model
    from compactlm.errors import CompactlmError

    model = build_model(random_config())
    args = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(CompactlmError, match="generate: max_new_tokens"):
        compactlm.generate(model, torch.zeros(1, 3, dtype=torch.long), **args)


def test_decode_layout_is_kept_between_calls_and_renewed_when_weights_change():
    from compactlm.model.generate import decode_layout

    torch.manual_seed(0)
    model = compactlm.build_model(random_config()).eval()
    prompt = torch.randint(0, 101, (1, 5), generator=torch.Generator().manual_seed(0))

    def copies():
        with decode_layout(model):
            return [m.weight_t for m in model.modules() if type(m).__name__ == "_InputMajorLinear"]

    first, second = copies(), copies()
    assert first and all(a is b for a, b in zip(first, second))  # no second copy
    assert "_decode_copy" not in "".join(model.state_dict())
    before = compactlm.generate(model, prompt, 8)
    with torch.no_grad():
        model.layers[0].attn.qkv.weight.mul_(-1.0)  # in place, as an optimizer step would
    after = compactlm.generate(model, prompt, 8)
    renewed = copies()
    # the first projection is layer 0's qkv: copied again; every other one kept
    assert renewed[0] is not first[0] and all(a is b for a, b in list(zip(renewed, first))[1:])
    with torch.no_grad():
        logits = model(after[:, :-1])
    assert torch.equal(after[0, 5:], logits[0, 4:].argmax(-1)) and not torch.equal(before, after)
