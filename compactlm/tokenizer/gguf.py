"""Tokenizers in GGUF files: the `tokenizer.ggml.*` fields, read and written.

Every GGUF release of a Llama-family model (TinyLlama's included) carries its vocabulary, in one of
the two kinds llama.cpp implements that compactlm uses:
- `tokenizer.ggml.model == "llama"`: a SentencePiece BPE model with byte fallback (pieces, scores,
  piece types), rebuilt here as a SentencePiece `ModelProto`;
- `tokenizer.ggml.model == "gpt2"` with `tokenizer.ggml.pre == "gpt-2"`: a byte-level BPE (tokens and
  merges) with GPT-2's pre-tokenising regex, the kind compactlm trains, rebuilt as a `tokenizer.json`.
Writing goes the other way, and refuses a tokenizer llama.cpp would tokenise differently.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from compactlm.errors import CheckpointError, first_line

# GGUF token types use SentencePiece's numbering, so they carry over unchanged.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_SPECIAL_FIELDS = {"unk_id": "tokenizer.ggml.unknown_token_id", "bos_id": "tokenizer.ggml.bos_token_id",
                   "eos_id": "tokenizer.ggml.eos_token_id", "pad_id": "tokenizer.ggml.padding_token_id"}
# The byte-level BPE pre-tokeniser that llama.cpp implements under the name "gpt-2" (GPT-2's regex,
# no prefix space): what `compactlm.tokenizer.train_bpe` trains.
_GPT2_PRE_TOKENIZER = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
GPT2_PRE = "gpt-2"


# ---- reading ---------------------------------------------------------------------------------
def open_gguf(path: Path):
    """A GGUFReader over `path`, or one line saying the file is not GGUF (cut, damaged, another format)."""
    from gguf import GGUFReader

    try:
        return GGUFReader(path)
    except Exception as exc:  # a cut or damaged file: IndexError, ValueError, KeyError, ... from the reader
        problem = first_line(exc)
        unknown_type = re.search(r"(\d+)\)? is not a valid GGMLQuantizationType", problem)
        if unknown_type:  # a quantization newer than this gguf package, or a damaged type field
            problem = f"a tensor has unknown GGML type {unknown_type.group(1)}"
        raise CheckpointError(f"{path}: not a readable GGUF file ({problem})") from None


def gguf_scalar(reader, name: str, default=None):
    """A scalar (or string) metadata field, or default when the file lacks it."""
    field = reader.fields.get(name)
    if field is None:
        return default
    value = field.parts[field.data[0]]
    return bytes(value).decode("utf-8") if field.types and field.types[0].name == "STRING" else value[0].item()


def _array(reader, name: str, path: Path) -> list:
    field = reader.fields.get(name)
    if field is None:
        raise CheckpointError(f"{path}: GGUF file has no {name} field (no tokenizer inside)")
    return [field.parts[i] for i in field.data]


def _strings(reader, name: str, path: Path) -> list[str]:
    return [bytes(t).decode("utf-8") for t in _array(reader, name, path)]


def special_ids(reader) -> tuple[int | None, int | None]:
    """(bos, eos) token ids a GGUF file declares, None where it declares none."""
    return tuple(None if value is None else int(value) for value in
                 (gguf_scalar(reader, _SPECIAL_FIELDS["bos_id"]), gguf_scalar(reader, _SPECIAL_FIELDS["eos_id"])))


def tokenizer_from_gguf(path: str | Path) -> tuple[str, bytes, str | None, tuple[int | None, int | None]]:
    """(kind, model file bytes, chat template, (bos, eos)) of a GGUF file's tokenizer: kind "sentencepiece"
    with a ModelProto, or "hf" with a tokenizer.json; the template is `tokenizer.chat_template`, if any."""
    path = Path(path)
    reader = open_gguf(path)
    try:
        model_kind = gguf_scalar(reader, "tokenizer.ggml.model")
        template = gguf_scalar(reader, "tokenizer.chat_template") or None
        if model_kind == "llama":
            return "sentencepiece", _model_proto(reader, path), template, special_ids(reader)
        if model_kind == "gpt2":
            return "hf", _byte_level_json(reader, path), template, special_ids(reader)
    except (IndexError, ValueError, TypeError, MemoryError) as exc:  # wrong type, size or range; not UTF-8
        raise CheckpointError(f"{path}: malformed tokenizer.ggml fields ({first_line(exc)})") from None
    raise CheckpointError(f"{path}: tokenizer.ggml.model is {model_kind!r}; only 'llama' (SentencePiece) and "
                          "'gpt2' (byte-level BPE) tokenizers can be rebuilt")


def _model_proto(reader, path: Path) -> bytes:
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    tokens = _strings(reader, "tokenizer.ggml.tokens", path)
    scores = [float(s[0]) for s in _array(reader, "tokenizer.ggml.scores", path)]
    types = [int(t[0]) for t in _array(reader, "tokenizer.ggml.token_type", path)]
    if not len(tokens) == len(scores) == len(types):
        raise CheckpointError(f"{path}: tokens, scores and token types differ in length")

    proto = sp_pb2.ModelProto()
    for piece, score, kind in zip(tokens, scores, types):
        entry = proto.pieces.add()
        entry.piece, entry.score, entry.type = piece, score, kind
    trainer = proto.trainer_spec
    trainer.model_type = sp_pb2.TrainerSpec.BPE
    trainer.vocab_size = len(tokens)
    trainer.byte_fallback = True
    for spec_field, gguf_field in _SPECIAL_FIELDS.items():
        setattr(trainer, spec_field, int(gguf_scalar(reader, gguf_field, -1)))
    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = bool(gguf_scalar(reader, "tokenizer.ggml.add_space_prefix", True))
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    return proto.SerializeToString()


def _byte_level_json(reader, path: Path) -> bytes:
    from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

    pre = gguf_scalar(reader, "tokenizer.ggml.pre", "default")
    if pre != GPT2_PRE:
        raise CheckpointError(f"{path}: tokenizer.ggml.pre is {pre!r}; of the byte-level BPE pre-tokenisers only "
                              f"{GPT2_PRE!r} can be rebuilt")
    tokens = _strings(reader, "tokenizer.ggml.tokens", path)
    types = [int(t[0]) for t in _array(reader, "tokenizer.ggml.token_type", path)]
    if len(types) != len(tokens):
        raise CheckpointError(f"{path}: tokens and token types differ in length")
    merges = [tuple(m.split(" ")) for m in _strings(reader, "tokenizer.ggml.merges", path)]
    if any(len(m) != 2 for m in merges):
        raise CheckpointError(f"{path}: tokenizer.ggml.merges holds an entry that is not two tokens")
    try:
        bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)
    except Exception as exc:  # tokenizers raises a bare Exception, e.g. for a merge of unknown tokens
        raise CheckpointError(f"{path}: malformed tokenizer.ggml.merges ({first_line(exc)})") from None
    tok = HFTokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, types) if kind == CONTROL])
    return tok.to_str().encode("utf-8")


# ---- writing ---------------------------------------------------------------------------------
def add_tokenizer_fields(writer, tokenizer, vocab_rows: int, chat_template: str | None = None) -> None:
    """Write `tokenizer` as tokenizer.ggml.* fields llama.cpp reads, padded to the embedding's rows.

    llama.cpp requires one token per embedding row; rows past the tokenizer's vocabulary (a model
    padded for speed) get unused placeholder tokens, as llama.cpp's own converter writes them.
    """
    if tokenizer.kind == "sentencepiece":
        tokens, scores, types, space_prefix = _sentencepiece_vocab(tokenizer)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_add_space_prefix(space_prefix)
    else:
        tokens, types, merges = _byte_level_vocab(tokenizer)
        scores = None
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(GPT2_PRE)
        writer.add_token_merges(merges)
    if len(tokens) > vocab_rows:
        raise CheckpointError(f"{tokenizer.path}: the tokenizer has {len(tokens)} tokens but the model's embedding "
                              f"only {vocab_rows} rows")
    padding = vocab_rows - len(tokens)
    tokens += [f"[PAD{i}]" for i in range(len(tokens), vocab_rows)]
    types += [UNUSED] * padding
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if scores is not None:
        writer.add_token_scores(scores + [-1e9] * padding)
    for token_id, add in ((tokenizer.bos_id, writer.add_bos_token_id), (tokenizer.eos_id, writer.add_eos_token_id)):
        if token_id is not None:
            add(token_id)
    # `compactlm generate` starts every prompt with BOS; llama.cpp does the same with this flag.
    writer.add_add_bos_token(tokenizer.bos_id is not None)
    writer.add_add_eos_token(False)
    if chat_template:
        writer.add_chat_template(chat_template)


def _sentencepiece_vocab(tokenizer) -> tuple[list[str], list[float], list[int], bool]:
    """(pieces, scores, types, whether a space is prepended) of a SentencePiece tokenizer."""
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    proto = sp_pb2.ModelProto()
    proto.ParseFromString(tokenizer.model_bytes)
    spec = proto.normalizer_spec
    # llama.cpp's "llama" tokenizer is SentencePiece BPE over raw text: no normalisation rules, no
    # collapsing of whitespace. Anything else would tokenise differently there.
    if proto.trainer_spec.model_type != sp_pb2.TrainerSpec.BPE:
        raise CheckpointError(f"{tokenizer.path}: llama.cpp cannot represent this SentencePiece model (only BPE "
                              "models, like Llama's, convert)")
    if spec.precompiled_charsmap or spec.remove_extra_whitespaces:
        raise CheckpointError(f"{tokenizer.path}: llama.cpp cannot represent this SentencePiece model (it normalises "
                              "text or collapses whitespace; llama.cpp's 'llama' tokenizer does neither)")
    unk_id = proto.trainer_spec.unk_id
    types = [UNKNOWN if i == unk_id else int(p.type) for i, p in enumerate(proto.pieces)]
    return [p.piece for p in proto.pieces], [p.score for p in proto.pieces], types, spec.add_dummy_prefix


def _byte_level_vocab(tokenizer) -> tuple[list[str], list[int], list[str]]:
    spec = json.loads(tokenizer.model_bytes)
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    gpt2_like = (model.get("type") == "BPE" and spec.get("normalizer") is None
                 and all(pre.get(k) == v for k, v in _GPT2_PRE_TOKENIZER.items()))
    if not gpt2_like:
        raise CheckpointError(f"{tokenizer.path}: llama.cpp cannot represent this tokenizer (only SentencePiece BPE "
                              "and byte-level BPE with GPT-2's pre-tokeniser, as `compactlm prepare` trains, convert)")
    by_id = {i: t for t, i in model["vocab"].items()}
    special = {}
    for added in spec.get("added_tokens") or []:
        by_id[added["id"]] = added["content"]
        special[added["id"]] = added.get("special", False)
    if sorted(by_id) != list(range(len(by_id))):
        raise CheckpointError(f"{tokenizer.path}: token ids are not 0..{len(by_id) - 1} without gaps")
    tokens = [by_id[i] for i in range(len(by_id))]
    types = [CONTROL if special.get(i) else USER_DEFINED if i in special else NORMAL for i in range(len(tokens))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return tokens, types, merges
