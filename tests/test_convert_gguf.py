"""GGUF export and import, checked by llama.cpp itself (llama-cpp-python builds it from source).

Two small trained models cover the shapes llama.cpp must get right: a byte-level BPE vocabulary
with GQA, an untied head and a non-default RoPE base; a SentencePiece vocabulary with a tied head.
"""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from compactlm.checkpoint.model import build_model, from_pretrained, save_checkpoint
from compactlm.cli import main
from compactlm.config.model import ModelConfig
from compactlm.convert.gguf import deinterleave_heads, export_gguf, interleave_heads
from compactlm.errors import CheckpointError
from compactlm.tokenizer.tokenizer import Tokenizer, train_bpe
from tests.conftest import fails_with_one_line

HELD_OUT = [
    "def fibonacci(n: int) -> list[int]:\n    a, b = 0, 1\n    for _ in range(n):\n        yield a\n",
    "The quick brown fox jumps over the lazy dog; it's 12345 metres away, isn't it?",
    "한국어 문장도 토큰화됩니다. 日本語も。 Emoji: 🙂🚀👍🏽 and combined é vs é.",
    "whitespace   runs\t\ttabs\n\n\nnewlines    and trailing spaces   ",
    "    indented code {\n\treturn x->y[i] != NULL && *p++;\n}",
]


def _held_out_text() -> str:
    import inspect
    import textwrap

    # Text the models never trained on: the trained text is json's docs and json.decoder's source.
    return textwrap.dedent(inspect.getsource(textwrap)[:3000])


def _train(model, ids: list[int], steps: int, seq: int = 48) -> None:
    """A few hundred AdamW steps on `ids`: enough for confident, untied logits (no near-ties in argmax)."""
    data = torch.tensor(ids)
    generator = torch.Generator().manual_seed(0)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(data) - seq - 1, (8,), generator=generator)
        batch = torch.stack([data[s:s + seq + 1] for s in starts])
        loss = model(batch[:, :-1], batch[:, 1:])
        optim.zero_grad()
        loss.backward()
        optim.step()
    model.eval()


@pytest.fixture(scope="module")
def bpe_checkpoint(tmp_path_factory, sample_text) -> Path:
    """Byte-level BPE (as `compactlm prepare` trains it), GQA 4:2, untied head, RoPE base 50000."""
    root = tmp_path_factory.mktemp("gguf-bpe")
    tokenizer = train_bpe([sample_text], 384, root / "tok" / "tokenizer.json")
    config = ModelConfig(n_layer=2, d_model=64, n_head=4, n_kv_head=2, ffn_dim=192, vocab_size=384,
                         max_seq_len=128, rope_base=50000.0, tie_embeddings=False, bos_id=1, eos_id=2)
    return _trained_checkpoint(config, tokenizer, sample_text, root / "ckpt")


@pytest.fixture(scope="module")
def spm_checkpoint(tmp_path_factory, sample_text, spm_tokenizer_file) -> Path:
    """SentencePiece BPE with byte fallback (Llama's kind), 4 heads = 4 KV heads, tied head."""
    root = tmp_path_factory.mktemp("gguf-spm")
    tokenizer = Tokenizer(spm_tokenizer_file)
    config = ModelConfig(n_layer=2, d_model=64, n_head=4, n_kv_head=4, ffn_dim=160, vocab_size=tokenizer.vocab_size,
                         max_seq_len=128, tie_embeddings=True, bos_id=1, eos_id=2)
    return _trained_checkpoint(config, tokenizer, sample_text, root / "ckpt")


def _trained_checkpoint(config, tokenizer, text, directory) -> Path:
    torch.manual_seed(0)
    model = build_model(config)
    model.init_weights(torch.Generator().manual_seed(0))
    _train(model, tokenizer.encode(text), steps=300)
    return save_checkpoint(model, directory, tokenizer)


@pytest.fixture(scope="module")
def exported(bpe_checkpoint, spm_checkpoint, tmp_path_factory):
    """{(kind, dtype): path} of every export, written through the CLI as a user would."""
    out = tmp_path_factory.mktemp("gguf-files")
    paths = {}
    for kind, checkpoint in (("bpe", bpe_checkpoint), ("spm", spm_checkpoint)):
        for dtype in ("f32", "q8_0", "q4_0"):
            path = out / f"{kind}-{dtype}.gguf"
            assert main(["convert", "to-gguf", "--checkpoint", str(checkpoint), "--out", str(path),
                         "--dtype", dtype]) == 0
            paths[kind, dtype] = path
    return paths


# ---- without llama.cpp ---------------------------------------------------------------------------
def test_head_interleaving_round_trips_and_pairs_rotate_half_partners():
    w = torch.arange(2 * 8 * 3, dtype=torch.float32).reshape(16, 3)  # 2 heads of 8 rows
    interleaved = interleave_heads(w, n_heads=2)
    assert torch.equal(deinterleave_heads(interleaved, n_heads=2), w)
    # rotate-half pairs row j with row j + 4 inside each head; llama.cpp pairs rows 2j and 2j + 1
    assert torch.equal(interleaved[0], w[0]) and torch.equal(interleaved[1], w[4])
    assert torch.equal(interleaved[10], w[8 + 1]) and torch.equal(interleaved[11], w[8 + 1 + 4])


@pytest.mark.parametrize("kind", ["bpe", "spm"])
def test_f32_round_trip_through_gguf_is_bit_exact(kind, bpe_checkpoint, spm_checkpoint, tmp_path):
    checkpoint = bpe_checkpoint if kind == "bpe" else spm_checkpoint
    export_gguf(from_pretrained(checkpoint), tmp_path / "m.gguf", Tokenizer.from_dir(checkpoint))
    assert main(["convert", "from-gguf", "--gguf", str(tmp_path / "m.gguf"), "--out", str(tmp_path / "back")]) == 0
    original, back = from_pretrained(checkpoint), from_pretrained(tmp_path / "back")
    assert original.config == back.config
    for name, tensor in original.state_dict().items():
        assert torch.equal(tensor, back.state_dict()[name]), name
    before, after = Tokenizer.from_dir(checkpoint), Tokenizer.from_dir(tmp_path / "back")
    for text in HELD_OUT:
        assert after.encode(text) == before.encode(text), text
    assert (after.bos_id, after.eos_id) == (before.bos_id, before.eos_id)


def test_quantized_weights_dequantize_close_to_the_originals(bpe_checkpoint, exported):
    original = from_pretrained(bpe_checkpoint).state_dict()
    for dtype, bound in (("q8_0", 0.01), ("q4_0", 0.15)):
        loaded = from_pretrained(exported["bpe", dtype]).state_dict()
        for name, tensor in original.items():
            error = (loaded[name] - tensor).abs().max() / tensor.abs().max()
            assert 0 <= error < bound, (dtype, name, float(error))
        # the q/k rows came back in compactlm's order: a mis-ordered head would be far off
        assert (loaded["layers.0.attn.qkv.weight"] - original["layers.0.attn.qkv.weight"]).abs().mean() < 0.01


def test_bad_gguf_inputs_fail_with_one_line_and_leave_nothing(exported, bpe_checkpoint, tmp_path, capsys):
    import gguf

    other = tmp_path / "gpt2-arch.gguf"
    writer = gguf.GGUFWriter(str(other), arch="gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    out = tmp_path / "out"
    fails_with_one_line(["convert", "from-gguf", "--gguf", str(other), "--out", str(out)],
                        f"{other}: general.architecture is 'gpt2'; only 'llama' models can be imported", capsys)

    cut = tmp_path / "cut.gguf"
    cut.write_bytes(exported["bpe", "f32"].read_bytes()[:5000])
    fails_with_one_line(["convert", "from-gguf", "--gguf", str(cut), "--out", str(out)],
                        f"{cut}: not a readable GGUF file", capsys)

    unknown = tmp_path / "unknown-type.gguf"  # a type number no llama.cpp release has defined
    _with_tensor_type(exported["bpe", "q8_0"], unknown, "blk.0.ffn_down.weight", 99)
    fails_with_one_line(["convert", "from-gguf", "--gguf", str(unknown), "--out", str(out)],
                        f"{unknown}: not a readable GGUF file (a tensor has unknown GGML type 99)", capsys)
    integers = tmp_path / "integer-type.gguf"  # I32 has f32's size, so the file reads, but holds no weights
    _with_tensor_type(exported["bpe", "q8_0"], integers, "output_norm.weight", gguf.GGMLQuantizationType.I32)
    fails_with_one_line(["convert", "from-gguf", "--gguf", str(integers), "--out", str(out)],
                        f"{integers}: tensor output_norm.weight has GGML type I32, which cannot be dequantized", capsys)
    for key, value, expected in (("llama.block_count", 7, "llama.block_count is 7 but the file holds tensors of 2 blocks"),
                                 ("llama.attention.head_count", 8, "blk.0.attn_q.weight has 64 rows, but the "
                                                                   "metadata gives 8 heads of 16")):
        doctored = tmp_path / f"{key}.gguf"
        _with_u32_field(exported["bpe", "q8_0"], doctored, key, value)
        fails_with_one_line(["convert", "from-gguf", "--gguf", str(doctored), "--out", str(out)],
                            f"{doctored}: {expected}", capsys)
    assert not out.exists()

    # a tokenizer llama.cpp has no pre-tokeniser for: whitespace splitting
    from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers

    odd = HFTokenizer(models.BPE.from_file(*_vocab_and_merges(bpe_checkpoint, tmp_path)))
    odd.pre_tokenizer = pre_tokenizers.Whitespace()
    checkpoint = tmp_path / "odd-tokenizer"
    save_checkpoint(from_pretrained(bpe_checkpoint), checkpoint, None)
    odd.save(str(checkpoint / "tokenizer.json"))
    target = tmp_path / "odd.gguf"
    fails_with_one_line(["convert", "to-gguf", "--checkpoint", str(checkpoint), "--out", str(target)],
                        f"{checkpoint / 'tokenizer.json'}: llama.cpp cannot represent this tokenizer", capsys)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".odd", "odd.gguf"))) == []


def _vocab_and_merges(checkpoint: Path, tmp_path: Path) -> tuple[str, str]:
    import json

    spec = json.loads((checkpoint / "tokenizer.json").read_text())
    (tmp_path / "vocab.json").write_text(json.dumps(spec["model"]["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")


def _with_u32_field(source: Path, target: Path, key: str, value: int) -> None:
    """A copy of a GGUF file whose uint32 metadata field `key` holds `value` (the bytes patched in place)."""
    data = bytearray(source.read_bytes())
    at = data.index(key.encode()) + len(key)
    assert int.from_bytes(data[at:at + 4], "little") == 4  # GGUF value type 4: uint32
    data[at + 4:at + 8] = value.to_bytes(4, "little")
    target.write_bytes(bytes(data))


def _with_tensor_type(source: Path, target: Path, name: str, qtype) -> None:
    """A copy of a GGUF file whose tensor `name` claims another GGML type (its info record patched)."""
    from gguf import GGUFReader

    tensor = next(t for t in GGUFReader(source).tensors if t.name == name)
    data = bytearray(source.read_bytes())
    # the info record: name, n_dims (u32), dims (u64 each), type (u32), offset (u64)
    at = data.index(name.encode()) + len(name) + 4 + 8 * len(tensor.shape)
    assert int.from_bytes(data[at:at + 4], "little") == tensor.tensor_type
    data[at:at + 4] = int(qtype).to_bytes(4, "little")
    target.write_bytes(bytes(data))


def test_a_gguf_file_evaluates_and_generates_directly(exported, tmp_path, capsys):
    """What q8_0 and q4_0 cost in bits per byte, measured on the dequantized weights before shipping."""
    import json

    text = tmp_path / "held_out.txt"
    text.write_text(_held_out_text())
    bits = {}
    for dtype in ("f32", "q8_0", "q4_0"):
        out = tmp_path / f"eval-{dtype}"
        assert main(["eval", "--checkpoint", str(exported["bpe", dtype]), "--text", str(text),
                     "--output", str(out)]) == 0
        bits[dtype] = json.loads((out / "results.json").read_text())["text"]["total"]["bits_per_byte"]
    assert abs(bits["q8_0"] / bits["f32"] - 1) < 0.01
    assert abs(bits["q4_0"] / bits["f32"] - 1) < 0.05
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(exported["bpe", "q8_0"]), "--prompt", "def main(",
                 "--max-new-tokens", "8", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("def main(")


def test_a_damaged_model_file_is_refused_by_our_reader_not_misread(exported, tmp_path):
    data = bytearray(exported["spm", "f32"].read_bytes())
    data[:4] = b"GGUX"
    (tmp_path / "bad.gguf").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="not a readable GGUF file"):
        from_pretrained(tmp_path / "bad.gguf")


# ---- with llama.cpp ------------------------------------------------------------------------------
try:
    import llama_cpp
except ImportError:  # only where it cannot be built: the test extra installs it
    llama_cpp = None
needs_llama_cpp = pytest.mark.skipif(llama_cpp is None, reason="llama-cpp-python is not installed (pip install "
                                     "-e '.[test]' builds it from source with cmake and a C++ compiler)")


def _llama(path: Path):
    return llama_cpp.Llama(model_path=str(path), n_ctx=128, logits_all=True, verbose=False, seed=0, n_threads=2)


def _llama_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)], dtype=np.float64)


def _our_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0].double().numpy()


def _prompt(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, bos=True)


@needs_llama_cpp
@pytest.mark.parametrize("kind", ["bpe", "spm"])
def test_llama_cpp_tokenizes_like_compactlm(kind, bpe_checkpoint, spm_checkpoint, exported):
    tokenizer = Tokenizer.from_dir(bpe_checkpoint if kind == "bpe" else spm_checkpoint)
    llm = llama_cpp.Llama(model_path=str(exported[kind, "f32"]), vocab_only=True, verbose=False)
    for text in HELD_OUT + _held_out_text().split("\n\n"):
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == tokenizer.encode(text), text
        assert llm.tokenize(text.encode(), add_bos=True, special=False) == tokenizer.encode(text, bos=True)


@needs_llama_cpp
@pytest.mark.parametrize("kind", ["bpe", "spm"])
def test_llama_cpp_logits_and_greedy_generation_equal_compactlm(kind, bpe_checkpoint, spm_checkpoint, exported):
    checkpoint = bpe_checkpoint if kind == "bpe" else spm_checkpoint
    model, tokenizer = from_pretrained(checkpoint), Tokenizer.from_dir(checkpoint)
    llm = _llama(exported[kind, "f32"])
    ids = _prompt(tokenizer, HELD_OUT[0] + HELD_OUT[1])[:100]
    ours, theirs = _our_logits(model, ids), _llama_logits(llm, ids)
    scale = np.abs(ours).max()
    assert np.abs(ours - theirs).max() / scale < 1e-3, np.abs(ours - theirs).max() / scale

    # Greedy decoding is only defined up to ties: a prompt counts where compactlm's top two logits stay
    # apart by several times the largest gap measured between the two implementations, at all 64 steps.
    gap, compared = np.abs(ours - theirs).max(), 0
    for text in ("def main(", "The ", "import ", "class ", "    return ", "# ", "if ", "This ", "for i in ", "A ",
                 "    def ", "JSON ", "raise ", "Return ", "else:", "while "):
        prompt = _prompt(tokenizer, text)
        expected, margin = _greedy_with_margin(model, prompt, 64)
        if margin > 4 * gap:
            assert _llama_greedy(llm, prompt, 64) == expected, text
            compared += 1
    assert compared >= 2


def _greedy_with_margin(model, prompt: list[int], n: int) -> tuple[list[int], float]:
    """compactlm's greedy continuation and the smallest gap between its top two logits along the way."""
    from compactlm.model.generate import generate

    tokens = generate(model, torch.tensor([prompt]), n)[0].tolist()
    with torch.no_grad():
        top2 = model(torch.tensor([tokens[:-1]]))[0, len(prompt) - 1:].topk(2, dim=-1).values
    return tokens[len(prompt):], float((top2[:, 0] - top2[:, 1]).min())


def _llama_greedy(llm, prompt: list[int], n: int) -> list[int]:
    """llama.cpp's own forward passes and KV cache, argmax of its logits at each step."""
    llm.reset()
    llm.eval(prompt)
    produced = []
    for _ in range(n):
        produced.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([produced[-1]])
    return produced


def _perplexity(llm, ids: list[int]) -> float:
    logits = _llama_logits(llm, ids)
    logits -= logits.max(axis=1, keepdims=True)
    logprobs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return math.exp(-np.mean([logprobs[i, ids[i + 1]] for i in range(len(ids) - 1)]))


@needs_llama_cpp
@pytest.mark.parametrize("kind", ["bpe", "spm"])
def test_quantized_perplexity_in_llama_cpp_stays_near_f32(kind, bpe_checkpoint, spm_checkpoint, exported):
    tokenizer = Tokenizer.from_dir(bpe_checkpoint if kind == "bpe" else spm_checkpoint)
    ids = _prompt(tokenizer, _held_out_text())[:128]
    f32 = _perplexity(_llama(exported[kind, "f32"]), ids)
    for dtype, tolerance in (("q8_0", 0.01), ("q4_0", 0.10)):
        llm = _llama(exported[kind, dtype])
        assert abs(_perplexity(llm, ids) / f32 - 1) < tolerance, (dtype, _perplexity(llm, ids), f32)
        continuation = _llama_greedy(llm, _prompt(tokenizer, "def main("), 16)
        assert len(continuation) == 16 and all(0 <= t < tokenizer.vocab_size for t in continuation)


@needs_llama_cpp
@pytest.mark.parametrize("ftype_name,dtype", [("LLAMA_FTYPE_MOSTLY_Q8_0", "q8_0"), ("LLAMA_FTYPE_MOSTLY_Q4_0", "q4_0")])
def test_llama_cpp_quantized_file_imports_with_llama_cpp_logits(ftype_name, dtype, bpe_checkpoint, exported, tmp_path):
    """llama.cpp quantizes our f32 file itself; compactlm's dequantized import must then compute what
    llama.cpp computes from it, far closer than either is to the f32 model."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype_name)
    quantized = tmp_path / f"llama-cpp-{dtype}.gguf"
    assert llama_cpp.llama_model_quantize(str(exported["bpe", "f32"]).encode(), str(quantized).encode(),
                                          params) == 0
    assert main(["convert", "from-gguf", "--gguf", str(quantized), "--out", str(tmp_path / "ckpt")]) == 0
    tokenizer = Tokenizer.from_dir(bpe_checkpoint)
    ids = _prompt(tokenizer, _held_out_text())[:96]
    theirs = _llama_logits(_llama(quantized), ids)
    imported = _our_logits(from_pretrained(tmp_path / "ckpt"), ids)
    full = _our_logits(from_pretrained(bpe_checkpoint), ids)
    scale = np.abs(full).max()
    import_error, quantization_error = np.abs(imported - theirs).max() / scale, np.abs(full - theirs).max() / scale
    assert import_error < quantization_error, (import_error, quantization_error)
    assert import_error < (0.02 if dtype == "q8_0" else 0.05)


def test_a_checkpoints_chat_template_travels_in_the_gguf_file(bpe_checkpoint, tmp_path):
    import json
    import shutil

    from compactlm.tokenizer.gguf import gguf_scalar, open_gguf

    checkpoint = tmp_path / "chat"
    shutil.copytree(bpe_checkpoint, checkpoint)
    template = "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    config = json.loads((checkpoint / "tokenizer_config.json").read_text())
    (checkpoint / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    assert main(["convert", "to-gguf", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "chat.gguf")]) == 0
    assert gguf_scalar(open_gguf(tmp_path / "chat.gguf"), "tokenizer.chat_template") == template
    assert main(["convert", "to-gguf", "--checkpoint", str(bpe_checkpoint), "--out", str(tmp_path / "plain.gguf")]) == 0
    assert gguf_scalar(open_gguf(tmp_path / "plain.gguf"), "tokenizer.chat_template") is None

    # and back: GGUF -> compactlm checkpoint -> Hugging Face directory, where transformers applies it
    assert main(["convert", "from-gguf", "--gguf", str(tmp_path / "chat.gguf"), "--out", str(tmp_path / "back")]) == 0
    assert main(["convert", "to-hf", "--checkpoint", str(tmp_path / "back"), "--out", str(tmp_path / "hf")]) == 0
    from transformers import AutoTokenizer

    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert hf_tokenizer.apply_chat_template(messages, tokenize=False) == "<|user|>\nhi</s>\n<|assistant|>\nhello</s>\n"
