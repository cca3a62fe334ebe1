"""Hugging Face and lit-gpt interop: round trips, transformers loading our exports, clear errors."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import compactlm
from compactlm.checkpoint.model import load_weights
from compactlm.cli import main
from compactlm.convert import hf, litgpt
from compactlm.errors import CheckpointError, ConfigError
from tests.conftest import hf_model_for, random_config


def save_hf_dir(hf_model, directory, **kwargs):
    hf_model.save_pretrained(directory, **kwargs)
    return directory


def test_hf_to_compactlm_to_hf_is_bit_exact(tmp_path):
    config = random_config(n_head=8, n_kv_head=2, d_model=128, ffn_dim=352)
    src = save_hf_dir(hf_model_for(config), tmp_path / "hf")
    assert main(["convert", "from-hf", "--src", str(src), "--out", str(tmp_path / "ours")]) == 0
    assert main(["convert", "to-hf", "--checkpoint", str(tmp_path / "ours"), "--out", str(tmp_path / "back")]) == 0
    before, after = load_file(src / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name


def test_export_loads_in_transformers_with_same_logits_and_tokenizer(tmp_path, spm_tokenizer_file):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = random_config(vocab_size=400, tie_embeddings=False)
    model = compactlm.build_model(config)
    tokenizer = compactlm.Tokenizer(spm_tokenizer_file)
    compactlm.save_checkpoint(model, tmp_path / "ckpt", tokenizer)
    assert main(["convert", "to-hf", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")]) == 0

    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    ids = torch.tensor([tokenizer.encode("def loads(s):\n    return decode(s)", bos=True)])
    with torch.no_grad():
        assert (reference(ids).logits - model(ids)).abs().max().item() <= 1e-5

    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    for text in ["Hello world", "def f(x):\n    return x * 2", "Decode a JSON document."]:
        assert hf_tok(text)["input_ids"] == tokenizer.encode(text, bos=True)
        assert hf_tok.decode(tokenizer.encode(text), skip_special_tokens=True) == text


def test_export_with_tokenizer_json_loads_in_transformers(tmp_path, bpe_tokenizer_file):
    from transformers import AutoTokenizer

    tokenizer = compactlm.Tokenizer(bpe_tokenizer_file)
    model = compactlm.build_model(random_config(vocab_size=tokenizer.vocab_size, tie_embeddings=True))
    hf.save_hf(model, tmp_path / "hf", tokenizer)
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    text = "  indented code(x) -> y"
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == tokenizer.encode(text)
    assert hf_tok.eos_token_id == tokenizer.eos_id
    loaded = compactlm.from_pretrained(tmp_path / "hf")
    assert loaded.config.tie_embeddings and torch.equal(loaded.embed.weight, model.embed.weight)


def test_from_pretrained_reads_sharded_safetensors_and_pytorch_bin(tmp_path):
    config = random_config()
    reference = hf_model_for(config)
    ids = torch.randint(0, config.vocab_size, (1, 9))
    with torch.no_grad():
        expected = reference(ids).logits
    sharded = save_hf_dir(reference, tmp_path / "sharded", max_shard_size="50KB")
    assert (sharded / "model.safetensors.index.json").is_file()

    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "config.json").write_text((sharded / "config.json").read_text())
    torch.save(reference.state_dict(), binary / "pytorch_model.bin")
    for directory in (sharded, binary):
        model = compactlm.from_pretrained(directory)
        with torch.no_grad():
            assert (model(ids) - expected).abs().max().item() <= 1e-5


def test_from_pretrained_device_and_dtype(tmp_path):
    model = compactlm.build_model(random_config())
    compactlm.save_checkpoint(model, tmp_path / "ckpt")
    loaded = compactlm.from_pretrained(tmp_path / "ckpt", device="cpu", dtype=torch.bfloat16)
    assert loaded.embed.weight.dtype == torch.bfloat16 and loaded.rope.cos.dtype == torch.bfloat16
    assert loaded(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, 101)


def test_pickled_code_is_never_executed(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (exec, ("open(%r, 'w').write('pwned')" % str(tmp_path / "pwned"),))

    directory = tmp_path / "evil"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(hf.config_to_hf(random_config())))
    torch.save({"model.embed_tokens.weight": Exploit()}, directory / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: cannot load safely with weights_only=True"):
        compactlm.from_pretrained(directory)
    assert not (tmp_path / "pwned").exists()


def _save_tampered(tmp_path, mutate):
    model = compactlm.build_model(random_config())
    compactlm.save_checkpoint(model, tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    state = load_file(weights)
    mutate(state)
    save_file(state, weights)
    return tmp_path / "ckpt"


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s.pop("layers.1.mlp.down.weight"), r"missing tensors: layers\.1\.mlp\.down\.weight"),
    (lambda s: s.update(extra=torch.zeros(1)), r"unexpected tensors: extra"),
    (lambda s: s.update({"norm.weight": torch.ones(65)}), r"wrong shapes: norm\.weight \(file \[65\], model \[64\]\)"),
])
def test_mismatched_tensors_fail_with_one_message_naming_them(tmp_path, capsys, mutate, message):
    directory = _save_tampered(tmp_path, mutate)
    with pytest.raises(CheckpointError, match=message):
        compactlm.from_pretrained(directory)
    assert main(["convert", "to-hf", "--checkpoint", str(directory), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "model.safetensors" in err
    assert not (tmp_path / "out").exists()


def test_hf_checkpoint_with_missing_tensor_is_named(tmp_path):
    directory = save_hf_dir(hf_model_for(random_config()), tmp_path / "hf")
    state = load_file(directory / "model.safetensors")
    state.pop("model.layers.0.self_attn.k_proj.weight")
    save_file(state, directory / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing tensors: model\.layers\.0\.self_attn\.k_proj\.weight"):
        compactlm.from_pretrained(directory)


def test_unsupported_hf_configs_are_refused(tmp_path):
    good = hf.config_to_hf(random_config())
    for change, message in [({"model_type": "mistral"}, "only 'llama'"), ({"hidden_act": "gelu"}, "hidden_act"),
                            ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1.0}}, "RoPE scaling")]:
        with pytest.raises(ConfigError, match=message):
            hf.config_from_hf({**good, **change})
    broken = dict(good)
    broken.pop("hidden_size")
    with pytest.raises(ConfigError, match="missing field 'hidden_size'"):
        hf.config_from_hf(broken, source="x/config.json")


def _lit_state(hf_state, config, grouped: bool):
    """Write the lit-gpt layout from HF tensors, spelled out from the layout's definition."""
    q_per_kv, hd = config.n_head // config.n_kv_head, config.head_dim
    lit = {"transformer.wte.weight": hf_state["model.embed_tokens.weight"],
           "transformer.ln_f.weight": hf_state["model.norm.weight"], "lm_head.weight": hf_state["lm_head.weight"]}
    for i in range(config.n_layer):
        h = f"model.layers.{i}."
        q, k, v = (hf_state[h + f"self_attn.{p}_proj.weight"] for p in "qkv")
        if grouped:
            rows = []
            for g in range(config.n_kv_head):
                rows += [q[(g * q_per_kv + j) * hd:(g * q_per_kv + j + 1) * hd] for j in range(q_per_kv)]
                rows += [k[g * hd:(g + 1) * hd], v[g * hd:(g + 1) * hd]]
            lit[f"transformer.h.{i}.attn.attn.weight"] = torch.cat(rows)
        else:
            lit[f"transformer.h.{i}.attn.qkv.weight"] = torch.cat([q, k, v])
        lit[f"transformer.h.{i}.attn.proj.weight"] = hf_state[h + "self_attn.o_proj.weight"]
        lit[f"transformer.h.{i}.norm_1.weight"] = hf_state[h + "input_layernorm.weight"]
        lit[f"transformer.h.{i}.norm_2.weight"] = hf_state[h + "post_attention_layernorm.weight"]
        lit[f"transformer.h.{i}.mlp.fc_1.weight"] = hf_state[h + "mlp.gate_proj.weight"]
        lit[f"transformer.h.{i}.mlp.fc_2.weight"] = hf_state[h + "mlp.up_proj.weight"]
        lit[f"transformer.h.{i}.mlp.proj.weight"] = hf_state[h + "mlp.down_proj.weight"]
    return lit


@pytest.mark.parametrize("grouped", [True, False], ids=["tinyllama-lit-gpt", "litgpt-0.5"])
def test_litgpt_import_matches_transformers(tmp_path, grouped, spm_tokenizer_file):
    config = random_config(n_head=8, n_kv_head=2, d_model=128, ffn_dim=352, vocab_size=400)
    reference = hf_model_for(config, seed=5)
    lit = _lit_state(reference.state_dict(), config, grouped)
    # TinyLlama's training files wrap the weights with optimizer state and counters.
    torch.save({"model": lit, "iter_num": 1000, "step_count": 125}, tmp_path / "iter-001000-ckpt.pth")
    lit_config = {"name": "tiny", "n_layer": 2, "n_embd": 128, "n_head": 8, "n_query_groups": 2,
                  "intermediate_size": 352, "padded_vocab_size": 400, "vocab_size": 400, "block_size": 64,
                  "norm_eps": 1e-5, "rope_base": 10000, "bias": False, "mlp_class_name": "LLaMAMLP"}
    (tmp_path / "lit_config.json").write_text(json.dumps(lit_config))
    assert main(["convert", "from-litgpt", "--checkpoint", str(tmp_path / "iter-001000-ckpt.pth"),
                 "--config", str(tmp_path / "lit_config.json"), "--tokenizer", str(spm_tokenizer_file),
                 "--out", str(tmp_path / "ours")]) == 0
    model = compactlm.from_pretrained(tmp_path / "ours")
    assert compactlm.load_tokenizer(tmp_path / "ours").hash == compactlm.Tokenizer(spm_tokenizer_file).hash
    ids = torch.randint(0, 400, (2, 20))
    with torch.no_grad():
        assert (model(ids) - reference(ids).logits).abs().max().item() <= 1e-5


def test_litgpt_import_refuses_foreign_tensors(tmp_path):
    config = random_config()
    lit = _lit_state(hf_model_for(config).state_dict(), config, grouped=True)
    lit["transformer.h.0.attn.rotary.weird"] = torch.zeros(3)
    model = compactlm.build_model(config, device="meta")
    with pytest.raises(CheckpointError, match=r"unexpected tensors for this config: transformer\.h\.0\.attn\.rotary\.weird"):
        load_weights(model, litgpt.state_dict_from_litgpt(lit, config), "x.pth")
