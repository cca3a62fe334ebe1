"""Tokenizers out of GGUF files: `tokenizer.ggml.*` fields -> a SentencePiece model.

Every GGUF release of a Llama-family model (TinyLlama's included) carries its vocabulary: pieces,
scores and piece types, plus the special ids. For `tokenizer.ggml.model == "llama"` those are
exactly a SentencePiece BPE model with byte fallback, rebuilt here as a `ModelProto`.
"""

from __future__ import annotations

from pathlib import Path

from compactlm.errors import CheckpointError, first_line

# GGUF token types use SentencePiece's numbering (normal 1, unknown 2, control 3, user-defined 4,
# unused 5, byte 6), so they carry over unchanged.
_SPECIAL_FIELDS = {"unk_id": "tokenizer.ggml.unknown_token_id", "bos_id": "tokenizer.ggml.bos_token_id",
                   "eos_id": "tokenizer.ggml.eos_token_id", "pad_id": "tokenizer.ggml.padding_token_id"}


def _scalar(reader, name: str, default=None):
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


def sentencepiece_model_from_gguf(path: str | Path) -> bytes:
    """The serialised SentencePiece ModelProto equivalent to a GGUF file's Llama tokenizer."""
    from gguf import GGUFReader

    path = Path(path)
    try:
        reader = GGUFReader(path)
    except Exception as exc:  # a cut or damaged file: IndexError, ValueError, KeyError, ... from the reader
        raise CheckpointError(f"{path}: not a readable GGUF file ({first_line(exc)})") from None
    try:
        return _model_proto(reader, path)
    except (IndexError, ValueError, TypeError) as exc:  # a field of the wrong type, size or range; not UTF-8
        raise CheckpointError(f"{path}: malformed tokenizer.ggml fields ({first_line(exc)})") from None


def _model_proto(reader, path: Path) -> bytes:
    """The SentencePiece ModelProto of the reader's tokenizer.ggml.* fields, serialised."""
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    model_kind = _scalar(reader, "tokenizer.ggml.model")
    if model_kind != "llama":
        raise CheckpointError(f"{path}: tokenizer.ggml.model is {model_kind!r}; only 'llama' (SentencePiece) "
                              "tokenizers can be rebuilt")
    tokens = [bytes(t).decode("utf-8") for t in _array(reader, "tokenizer.ggml.tokens", path)]
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
        setattr(trainer, spec_field, int(_scalar(reader, gguf_field, -1)))
    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = bool(_scalar(reader, "tokenizer.ggml.add_space_prefix", True))
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    return proto.SerializeToString()
