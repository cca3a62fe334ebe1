"""The model against transformers' LlamaForCausalLM on the same weights."""

import pytest
import torch

import compactlm
from tests.conftest import compactlm_from_hf_model, hf_model_for, random_config

PARITY_CONFIGS = {
    "gqa1-mha": random_config(n_head=4, n_kv_head=4),
    "gqa4": random_config(n_head=8, n_kv_head=2, d_model=128, ffn_dim=352, vocab_size=257),
    "gqa8-rope500k": random_config(n_head=8, n_kv_head=1, d_model=128, ffn_dim=344, rope_base=500000.0, vocab_size=97),
    "tied-odd-vocab": random_config(tie_embeddings=True, vocab_size=1009, n_layer=3),
    "headdim-not-d/h": random_config(head_dim=24, n_head=6, n_kv_head=3, d_model=96, norm_eps=1e-6, vocab_size=300),
}


@pytest.mark.parametrize("name", PARITY_CONFIGS)
def test_logits_match_transformers(name):
    config = PARITY_CONFIGS[name]
    reference = hf_model_for(config, seed=list(PARITY_CONFIGS).index(name))  # fixed per config
    model = compactlm_from_hf_model(reference, config)
    ids = torch.randint(0, config.vocab_size, (3, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(ids).logits
        got = model(ids)
    assert got.shape == (3, 37, config.vocab_size)
    assert (got - expected).abs().max().item() <= 1e-5


def test_logits_match_with_left_padding_and_cache():
    """Padded prompts and chunked decoding through the cache give the same logits as transformers."""
    config = PARITY_CONFIGS["gqa4"]
    reference = hf_model_for(config, seed=3)
    model = compactlm_from_hf_model(reference, config)
    ids = torch.randint(0, config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # row 0 is left-padded
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = reference(ids, attention_mask=mask, position_ids=position_ids).logits
        cache = model.new_cache(2, 12)
        first = model(ids[:, :7], cache=cache, attention_mask=mask[:, :7], position_ids=position_ids[:, :7])
        rest = model(ids[:, 7:], cache=cache, attention_mask=mask[:, 7:], position_ids=position_ids[:, 7:])
    got = torch.cat([first, rest], dim=1)
    real = mask.bool()
    assert (got[real] - expected[real]).abs().max().item() <= 1e-5


def test_tinyllama_preset_has_the_published_parameter_count():
    model = compactlm.build_model("tinyllama-1.1b", device="meta")
    assert model.num_params() == 1_100_048_384 == model.config.num_params
    assert model.embed.weight.device.type == "meta"
    per_layer = sum(p.numel() for p in model.layers[0].parameters())
    assert per_layer == 44_044_288


def test_ladder_presets_keep_tinyllama_proportions():
    sizes = [cfg.non_embedding_params for name, cfg in compactlm.PRESETS.items() if name != "tinyllama-1.1b"]
    assert sizes == sorted(sizes)
    assert 0.9e6 <= sizes[0] <= 1.5e6 and 1.2e8 <= sizes[-1] <= 1.8e8
    for cfg in compactlm.PRESETS.values():
        assert cfg.head_dim == 64 and cfg.n_kv_head < cfg.n_head
        assert 2.6 <= cfg.ffn_dim / cfg.d_model <= 2.9
        built = compactlm.build_model(cfg, device="meta")
        assert built.num_params() == cfg.num_params


def test_vocab_size_comes_from_the_caller():
    model = compactlm.build_model("tinyllama-1m", vocab_size=4096)
    assert model.embed.weight.shape == (4096, 128) and model.lm_head.weight.shape == (4096, 128)


def test_tied_embeddings_share_one_tensor(tmp_path):
    model = compactlm.build_model(random_config(tie_embeddings=True))
    assert model.lm_head.weight is model.embed.weight
    compactlm.save_checkpoint(model, tmp_path / "ckpt")
    loaded = compactlm.from_pretrained(tmp_path / "ckpt")
    assert loaded.lm_head.weight is loaded.embed.weight
    assert torch.equal(loaded.embed.weight, model.embed.weight)


def test_initialisation_follows_the_documented_recipe():
    config = compactlm.get_preset("tinyllama-4m", vocab_size=8000)
    model = compactlm.build_model(config)
    d, n_layer = config.d_model, config.n_layer
    assert model.embed.weight.std().item() == pytest.approx((2 / (5 * d)) ** 0.5, rel=0.05)
    assert model.layers[0].attn.qkv.weight.std().item() == pytest.approx((2 / (5 * d)) ** 0.5, rel=0.05)
    assert model.layers[0].mlp.down.weight.std().item() == pytest.approx(1 / d**0.5 / n_layer, rel=0.05)
    assert torch.equal(model.layers[0].attn_norm.weight, torch.ones(d))


def test_flops_per_token_formula():
    config = compactlm.get_preset("tinyllama-1.1b")
    matmul = 22 * (44_044_288 - 2 * 2048) + 32000 * 2048
    assert config.flops_per_token(2048) == 6 * matmul + 12 * 22 * 32 * 64 * 2048


def test_causal_model_ignores_the_future():
    model = compactlm.build_model(random_config())
    ids = torch.randint(0, 101, (1, 20))
    changed = ids.clone()
    changed[0, 15:] = (changed[0, 15:] + 1) % 101
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert torch.allclose(a[:, :15], b[:, :15], atol=1e-6)
    assert not torch.allclose(a[:, 15:], b[:, 15:], atol=1e-6)


# ---- document masking -----------------------------------------------------------------------------
EOS = 2


def _packed_documents(seed: int = 0):
    """Two rows of packed documents [B, T] (EOS-terminated; a row may start or end mid-document) and,
    per row, each document's (start, end) span."""
    g = torch.Generator().manual_seed(seed)
    rows, spans = [], []
    for lengths in ((5, 9, 3, 7), (12, 1, 11)):
        docs = [torch.cat([torch.randint(3, 101, (n - 1,), generator=g), torch.tensor([EOS])]) for n in lengths]
        row = torch.cat(docs)[:-1]  # the last document runs past the row's end: no EOS
        starts = [0, *torch.tensor(lengths).cumsum(0)[:-1].tolist()]
        rows.append(row)
        spans.append([(s, min(s + n, len(row))) for s, n in zip(starts, lengths)])
    return torch.stack(rows), spans


@pytest.mark.parametrize("restart", [False, True])
def test_document_masked_logits_equal_each_document_alone(restart):
    from compactlm.model.transformer import document_layout

    torch.manual_seed(0)
    model = compactlm.build_model(random_config(max_seq_len=64)).eval()
    model.init_weights(torch.Generator().manual_seed(1))
    idx, spans = _packed_documents()
    mask, positions = document_layout(idx, EOS, restart_positions=restart)
    with torch.no_grad():
        packed = model(idx, attn_mask=mask, position_ids=positions)
        plain = model(idx)
        for row, row_spans in enumerate(spans):
            for start, end in row_spans:
                # alone: from position 0 with restart, else at the positions it had in the row
                offset = 0 if restart else start
                alone = model(idx[row:row + 1, start:end],
                              position_ids=torch.arange(offset, offset + end - start)[None])
                assert (packed[row, start:end] - alone[0]).abs().max() < 1e-5, (row, start, end)
    # the first document of each row sees nothing else anyway; later ones differ from plain attention
    assert (packed[:, 5:] - plain[:, 5:]).abs().max() > 1e-2


def test_document_masked_loss_is_the_loss_of_the_documents_scored_alone():
    from compactlm.model.transformer import lm_loss

    torch.manual_seed(0)
    model = compactlm.build_model(random_config(max_seq_len=64)).eval()
    idx, spans = _packed_documents(seed=3)
    batch = torch.cat([idx, torch.randint(3, 101, (2, 1), generator=torch.Generator().manual_seed(4))], dim=1)
    with torch.no_grad():
        fused = lm_loss(model, batch, fused=True, document_eos=EOS, restart_positions=True)
        plain_path = lm_loss(model, batch, fused=False, document_eos=EOS, restart_positions=True)
        total = 0.0
        for row, row_spans in enumerate(spans):
            for start, end in row_spans:
                # each position predicts the next token of the row; an EOS predicts the next document's start
                logits = model(batch[row:row + 1, start:end])[0]
                total += torch.nn.functional.cross_entropy(logits, batch[row, start + 1:end + 1],
                                                           reduction="sum").item()
    assert fused.item() == pytest.approx(total / idx.numel(), rel=1e-5)
    assert plain_path.item() == pytest.approx(total / idx.numel(), rel=1e-5)
