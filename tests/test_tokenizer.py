import pytest

from compactlm.errors import CheckpointError
from compactlm.tokenizer.tokenizer import Tokenizer, load_tokenizer

TEXTS = ["Hello world", "  leading spaces and a tab\tafter", "def f(x):\n    return x * 2\n", "naïve café 日本"]


def test_sentencepiece_round_trip_and_special_ids(spm_tokenizer_file):
    import sentencepiece as spm

    tok = Tokenizer(spm_tokenizer_file)
    reference = spm.SentencePieceProcessor(model_file=str(spm_tokenizer_file))
    assert (tok.kind, tok.bos_id, tok.eos_id, tok.vocab_size) == ("sentencepiece", 1, 2, 400)
    for text in TEXTS:
        assert tok.encode(text) == reference.encode(text)
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("hi", bos=True, eos=True)[0] == 1 and tok.encode("hi", bos=True, eos=True)[-1] == 2


def test_hf_tokenizer_json(bpe_tokenizer_file):
    tok = Tokenizer(bpe_tokenizer_file)
    eot = tok._hf.token_to_id("<|endoftext|>")
    assert tok.kind == "hf" and tok.bos_id == eot and tok.eos_id == eot
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text


def test_hash_identifies_content(spm_tokenizer_file, bpe_tokenizer_file, tmp_path):
    copy = tmp_path / "tokenizer.model"
    copy.write_bytes(spm_tokenizer_file.read_bytes())
    assert Tokenizer(copy).hash == Tokenizer(spm_tokenizer_file).hash != Tokenizer(bpe_tokenizer_file).hash


def test_directory_prefers_sentencepiece(spm_tokenizer_file, bpe_tokenizer_file, tmp_path):
    assert load_tokenizer(tmp_path) is None
    (tmp_path / "tokenizer.json").write_bytes(bpe_tokenizer_file.read_bytes())
    assert load_tokenizer(tmp_path).kind == "hf"
    (tmp_path / "tokenizer.model").write_bytes(spm_tokenizer_file.read_bytes())
    assert load_tokenizer(tmp_path).kind == "sentencepiece"


def test_corrupt_tokenizer_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(CheckpointError, match=r"tokenizer.model: not a valid sentencepiece tokenizer"):
        Tokenizer(bad)
    bad_json = tmp_path / "tokenizer.json"
    bad_json.write_text("{")
    with pytest.raises(CheckpointError, match=r"tokenizer.json: not a valid hf tokenizer"):
        Tokenizer(bad_json)


def test_train_bpe_gives_llama_special_ids(tmp_path, sample_text):
    from compactlm.tokenizer.tokenizer import train_bpe

    tok = train_bpe(sample_text.split("\n\n"), 500, tmp_path / "tok" / "tokenizer.json")
    assert (tok.kind, tok.vocab_size, tok.bos_id, tok.eos_id) == ("hf", 500, 1, 2)
    assert tok.id_to_piece(0) == "<unk>"
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(sample_text)) < len(sample_text.encode()) / 2  # it learned merges


CONTROL_TEXTS = ["a</s>b", "<s> starts here", "def f():\n    return '<unk>'  # <|endoftext|>", "</s></s>", "x<s>y</s>"]


@pytest.mark.parametrize("kind", ["bpe", "spm", "trained"])
def test_raw_text_is_never_parsed_for_special_tokens(kind, bpe_tokenizer_file, spm_tokenizer_file, tmp_path,
                                                      sample_text):
    from compactlm.tokenizer.tokenizer import train_bpe

    tok = {"bpe": lambda: Tokenizer(bpe_tokenizer_file), "spm": lambda: Tokenizer(spm_tokenizer_file),
           "trained": lambda: train_bpe([sample_text], 400, tmp_path / "tokenizer.json")}[kind]()
    specials = {i for i in (tok.bos_id, tok.eos_id) if i is not None}
    if tok.kind == "hf":
        specials |= {tok._hf.token_to_id(name) for name in ("<unk>", "<|endoftext|>")} - {None}
    assert specials  # the tokenizer has control tokens that literal text could be mistaken for
    for text in CONTROL_TEXTS:
        for ids in (tok.encode(text), tok.encode_batch([text])[0]):
            assert not specials & set(ids), (text, ids)
            assert tok.decode(ids) == text
    ids = tok.encode("a</s>b", bos=True, eos=True)  # asked for: added around the text, never out of it
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and not specials & set(ids[1:-1])
