"""Tokenizers rebuilt from GGUF files' tokenizer.ggml.* fields reproduce SentencePiece exactly."""

from pathlib import Path

import pytest

from compactlm.errors import CheckpointError
from compactlm.tokenizer.tokenizer import Tokenizer

LLAMA_VOCAB = Path(__file__).parent / "assets" / "ggml-vocab-llama-spm.gguf"


def write_gguf_from_spm(spm_file: Path, out: Path, model: str = "llama") -> None:
    import gguf
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(spm_file))
    writer = gguf.GGUFWriter(str(out), arch="llama")
    writer.add_tokenizer_model(model)
    writer.add_token_list([sp.id_to_piece(i).encode() for i in range(sp.get_piece_size())])
    writer.add_token_scores([sp.get_score(i) for i in range(sp.get_piece_size())])
    types = []
    for i in range(sp.get_piece_size()):
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1)
    writer.add_token_types(types)
    writer.add_bos_token_id(sp.bos_id())
    writer.add_eos_token_id(sp.eos_id())
    writer.add_unk_token_id(sp.unk_id())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_rebuilt_tokenizer_matches_sentencepiece(spm_tokenizer_file, tmp_path, sample_text):
    write_gguf_from_spm(spm_tokenizer_file, tmp_path / "model.gguf")
    rebuilt, original = Tokenizer(tmp_path / "model.gguf"), Tokenizer(spm_tokenizer_file)
    assert rebuilt.kind == "sentencepiece" and (rebuilt.bos_id, rebuilt.eos_id) == (1, 2)
    texts = sample_text.split("\n\n")[:200] + ["  two spaces", "tabs\tand\nnewlines", "digits 12345", "émoji 🙂 日本語"]
    for text in texts:
        assert rebuilt.encode(text) == original.encode(text), text
        assert rebuilt.decode(rebuilt.encode(text)) == text


def test_gguf_tokenizers_llama_cpp_has_but_we_cannot_rebuild_are_refused(spm_tokenizer_file, tmp_path):
    write_gguf_from_spm(spm_tokenizer_file, tmp_path / "bert.gguf", model="bert")
    with pytest.raises(CheckpointError, match=r"bert\.gguf: tokenizer.ggml.model is 'bert'; only 'llama'"):
        Tokenizer(tmp_path / "bert.gguf")
    # a byte-level BPE whose pre-tokeniser is not GPT-2's regex (here llama.cpp's "default")
    write_gguf_from_spm(spm_tokenizer_file, tmp_path / "gpt2.gguf", model="gpt2")
    with pytest.raises(CheckpointError, match=r"gpt2\.gguf: tokenizer.ggml.pre is 'default'; .* only 'gpt-2'"):
        Tokenizer(tmp_path / "gpt2.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(CheckpointError, match=r"junk\.gguf: not a readable GGUF file"):
        Tokenizer(tmp_path / "junk.gguf")


@pytest.mark.skipif(not LLAMA_VOCAB.is_file(), reason="Llama-2 vocabulary asset not present")
def test_real_llama2_tokenizer_reproduces_llama_cpp_test_vectors():
    """llama.cpp's own tokenisation vectors for the Llama SentencePiece vocabulary (TinyLlama's)."""
    tok = Tokenizer(LLAMA_VOCAB)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (32000, 1, 2)
    # Each input is followed by a marker line; each output is one line of ids (the empty input too).
    inputs = LLAMA_VOCAB.with_suffix(".gguf.inp").read_text().split("\n__ggml_vocab_test__\n")[:-1]
    outputs = LLAMA_VOCAB.with_suffix(".gguf.out").read_text().split("\n")[:-1]
    assert len(inputs) == len(outputs) == 46
    for text, expected in zip(inputs, outputs):
        assert tok.encode(text) == [int(t) for t in expected.split()], repr(text)


@pytest.mark.skipif(not LLAMA_VOCAB.is_file(), reason="Llama-2 vocabulary asset not present")
def test_exported_llama2_tokenizer_tokenises_identically_in_transformers(tmp_path):
    """The tokenizer.json written beside tokenizer.model matches SentencePiece on every vector (encode and decode)."""
    from transformers import AutoTokenizer

    tok = Tokenizer(LLAMA_VOCAB)
    tok.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    inputs = LLAMA_VOCAB.with_suffix(".gguf.inp").read_text().split("\n__ggml_vocab_test__\n")[:-1]
    for text in inputs + ["def f(x):\n\treturn x  # done", "TinyLlama  1.1B", "a<s>b</s>", "   indented"]:
        ids = tok.encode(text)
        assert hf(text, add_special_tokens=False)["input_ids"] == ids, repr(text)
        assert hf.decode(ids) == tok.decode(ids)
    assert hf("Hello")["input_ids"] == tok.encode("Hello", bos=True)
