"""The tokenizer that travels with a checkpoint: SentencePiece `tokenizer.model` or HF `tokenizer.json`.

Both kinds expose the same small surface (encode, decode, bos/eos ids, vocabulary size, a content
hash that data shards and checkpoints record so that mismatches are caught), and both can be written
next to a model in a form `transformers.AutoTokenizer` loads offline.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from compactlm.errors import CheckpointError, first_line
from compactlm.fileio import atomic_write

SPM_FILE = "tokenizer.model"
HF_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
# Names that byte-level BPE vocabularies commonly give their document separators.
_BOS_NAMES = ("<s>", "<bos>", "<|begin_of_text|>", "<|endoftext|>")
_EOS_NAMES = ("</s>", "<eos>", "<|end_of_text|>", "<|endoftext|>")


class Tokenizer:
    """A tokenizer from `tokenizer.model` (SentencePiece), `tokenizer.json` (HF) or a `.gguf` file.

    A GGUF file's `tokenizer.ggml.*` fields are rebuilt into a SentencePiece model or a byte-level BPE
    tokenizer.json, so any Llama-family GGUF release brings its tokenizer. `hash` is the SHA-256 of the
    tokenizer's serialised model (`model_bytes`). `chat_template` (Jinja, or None) travels with it: read
    from a checkpoint's tokenizer_config.json or a GGUF file, written back by `save`.
    """

    def __init__(self, path: str | Path, bos_id: int | None = None, eos_id: int | None = None):
        self.path = Path(path)
        if self.path.suffix == ".gguf":
            from compactlm.tokenizer.gguf import tokenizer_from_gguf

            self.kind, data, self.chat_template, (file_bos, file_eos) = tokenizer_from_gguf(self.path)
            # the ids the file declares, which llama.cpp uses, over any guessed from token names
            bos_id, eos_id = (bos_id if bos_id is not None else file_bos), (eos_id if eos_id is not None else file_eos)
        else:
            self.chat_template = None
            try:
                data = self.path.read_bytes()
            except OSError as exc:
                raise CheckpointError(f"{self.path}: cannot read tokenizer ({exc.strerror})") from None
            self.kind = "sentencepiece" if self.path.name.endswith(".model") else "hf"
        self._data = data
        self.hash = hashlib.sha256(data).hexdigest()
        try:
            if self.kind == "sentencepiece":
                import sentencepiece as spm

                self._sp = spm.SentencePieceProcessor(model_proto=data)
                self.vocab_size = self._sp.get_piece_size()
                default_bos, default_eos = self._sp.bos_id(), self._sp.eos_id()
            else:
                from tokenizers import Tokenizer as HFTokenizer

                self._hf = HFTokenizer.from_str(data.decode("utf-8"))
                # Raw text is text: a literal "</s>" in a document must not become the control token
                # (SentencePiece never parses control tokens out of text either).
                self._hf.encode_special_tokens = True
                self.vocab_size = self._hf.get_vocab_size(with_added_tokens=True)
                default_bos, default_eos = self._find_special(_BOS_NAMES), self._find_special(_EOS_NAMES)
        except Exception as exc:  # both libraries raise bare RuntimeError/Exception on corrupt files
            raise CheckpointError(f"{self.path}: not a valid {self.kind} tokenizer ({first_line(exc)})") from None
        self.bos_id = bos_id if bos_id is not None else _none_if_negative(default_bos)
        self.eos_id = eos_id if eos_id is not None else _none_if_negative(default_eos)

    # ---- loading ---------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, directory: str | Path) -> "Tokenizer | None":
        """The tokenizer stored in a checkpoint directory, or None if it has none.

        The SentencePiece model wins when both files exist: it is the original, and a converted
        tokenizer.json can tokenise some strings differently.
        """
        directory = Path(directory)
        bos, eos = _special_ids_from_config(directory)
        for name in (SPM_FILE, HF_FILE):
            if (directory / name).is_file():
                tokenizer = cls(directory / name, bos_id=bos, eos_id=eos)
                tokenizer.chat_template = read_chat_template(directory)
                return tokenizer
        return None

    def _find_special(self, names) -> int | None:
        for name in names:
            token_id = self._hf.token_to_id(name)
            if token_id is not None:
                return token_id
        return None

    @property
    def model_bytes(self) -> bytes:
        """The serialised model: a SentencePiece ModelProto or a tokenizer.json."""
        return self._data

    # ---- use -------------------------------------------------------------------------------
    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self._sp.encode(text) if self.kind == "sentencepiece" else self._hf.encode(text, add_special_tokens=False).ids
        if bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        if eos and self.eos_id is not None:
            ids = [*ids, self.eos_id]
        return ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids (no special tokens) and the character offset in `text` where each token starts."""
        if self.kind == "sentencepiece":
            from sentencepiece import sentencepiece_pb2  # the serialised form: stable across sentencepiece 0.2.x

            proto = sentencepiece_pb2.SentencePieceText.FromString(self._sp.encode(text, out_type="serialized_proto"))
            char_at = _char_index_of_bytes(text)
            return [p.id for p in proto.pieces], [char_at[min(p.begin, len(char_at) - 1)] for p in proto.pieces]
        encoding = self._hf.encode(text, add_special_tokens=False)
        return encoding.ids, [start for start, _ in encoding.offsets]

    def encode_batch(self, texts: list[str], num_threads: int = 1) -> list[list[int]]:
        """Token ids of many texts, no special tokens (data preparation adds EOS itself)."""
        if self.kind == "sentencepiece":
            return self._sp.encode(texts, num_threads=num_threads)
        return [e.ids for e in self._hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        if self.kind == "sentencepiece":
            return self._sp.decode(list(ids))
        return self._hf.decode(list(ids), skip_special_tokens=False)

    @functools.cached_property
    def special_tokens(self) -> dict[str, int]:
        """Control tokens by their text: BOS, EOS, and a tokenizer.json's added special tokens. Only a
        chat template's own text is ever split at them (compactlm.tokenizer.chat)."""
        specials = {}
        if self.kind != "sentencepiece":
            specials = {t.content: i for i, t in self._hf.get_added_tokens_decoder().items() if t.special}
        for token_id in (self.bos_id, self.eos_id):
            if token_id is not None:
                specials[self.id_to_piece(token_id)] = token_id
        return specials

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(token_id) if self.kind == "sentencepiece" else self._hf.id_to_token(token_id)

    # ---- saving ----------------------------------------------------------------------------
    def save_model_file(self, directory: str | Path) -> Path:
        """Write the tokenizer's own model file (tokenizer.model or tokenizer.json) atomically; a
        GGUF tokenizer is written as the SentencePiece model rebuilt from it (same hash)."""
        path = Path(directory) / (SPM_FILE if self.kind == "sentencepiece" else HF_FILE)
        atomic_write(path, [self._data])
        return path

    def save(self, directory: str | Path) -> None:
        """Copy the tokenizer file and write a tokenizer_config.json that transformers understands."""
        directory = Path(directory)
        self.save_model_file(directory)
        if self.kind == "sentencepiece":
            # transformers reads tokenizer.json first; this conversion tokenises like SentencePiece.
            (directory / HF_FILE).write_text(sentencepiece_to_hf_json(self._data))
        (directory / CONFIG_FILE).write_text(json.dumps(self._hf_config(), indent=2) + "\n")

    def _hf_config(self) -> dict:
        def piece(token_id):
            return None if token_id is None else self.id_to_piece(token_id)

        config = {"bos_token": piece(self.bos_id), "eos_token": piece(self.eos_id), "add_bos_token": False,
                  "add_eos_token": False, "model_max_length": 1_000_000_000, "clean_up_tokenization_spaces": False}
        if self.chat_template:  # where transformers' apply_chat_template looks for it
            config["chat_template"] = self.chat_template
        if self.kind == "sentencepiece":
            # Not "LlamaTokenizer": transformers 5 rebuilds that one's pipeline in code and ignores ours.
            # split_special_tokens: a literal "<s>" in text is text, as in SentencePiece.
            # With a chat template they must be parsed, or the template's "</s>" would be text.
            config.update(tokenizer_class="PreTrainedTokenizerFast", unk_token=piece(self._sp.unk_id()),
                          split_special_tokens=not self.chat_template)
        else:
            config.update(tokenizer_class="PreTrainedTokenizerFast")
        return config


class DecodeStream:
    """Text of a growing list of generated ids, released piece by piece for streaming.

    The whole continuation is decoded each time: SentencePiece spaces and multi-byte characters only
    come out right in context, and a piece ending in half a UTF-8 character is held back."""

    def __init__(self, tokenizer: "Tokenizer"):
        self.tokenizer, self.ids, self.shown = tokenizer, [], ""

    def push(self, token_id: int) -> str:
        """The new text that token_id completes ("" while a character is still split)."""
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        new, self.shown = text[len(self.shown):], text
        return new

    @property
    def text(self) -> str:
        return self.tokenizer.decode(self.ids)


def _char_index_of_bytes(text: str) -> list[int]:
    """For each UTF-8 byte offset of text (and its end), the index of the character it falls in."""
    index = []
    for i, char in enumerate(text):
        index.extend([i] * len(char.encode("utf-8")))
    return index + [len(text)]


def _none_if_negative(token_id: int | None) -> int | None:
    return None if token_id is None or token_id < 0 else token_id


def _special_ids_from_config(directory: Path) -> tuple[int | None, int | None]:
    """bos/eos ids recorded in config.json (compactlm and HF both write them), if any."""
    config = directory / "config.json"
    if not config.is_file():
        return None, None
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    bos, eos = data.get("bos_id", data.get("bos_token_id")), data.get("eos_id", data.get("eos_token_id"))
    return _config_id(bos), _config_id(eos)


def _config_id(value) -> int | None:
    """An id as config.json records it (HF allows a list of them); anything but a token id is none."""
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def read_chat_template(directory: str | Path) -> str | None:
    """The Jinja chat template a checkpoint's tokenizer_config.json carries (as transformers writes it), if any."""
    config = Path(directory) / CONFIG_FILE
    try:
        template = json.loads(config.read_text()).get("chat_template") if config.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None
    return template if isinstance(template, str) and template else None


def load_tokenizer(path: str | Path) -> Tokenizer | None:
    """A tokenizer from a checkpoint directory or a tokenizer file."""
    path = Path(path)
    return Tokenizer.from_dir(path) if path.is_dir() else Tokenizer(path)


def require_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer of a checkpoint (directory or GGUF file), or one error line saying it has none."""
    tokenizer = load_tokenizer(path)
    if tokenizer is None:
        raise CheckpointError(f"{path}: no tokenizer.model or tokenizer.json beside the weights")
    return tokenizer


def train_bpe(texts, vocab_size: int, out_path: str | Path) -> Tokenizer:
    """Train a byte-level BPE (GPT-2 style pre-tokenisation) with HF tokenizers and save tokenizer.json.

    Ids 0, 1, 2 are <unk>, <s>, </s> as in Llama's vocabulary, so bos=1 and eos=2 either way.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out_path, [tok.to_str().encode("utf-8")])
    return Tokenizer(out_path)


def sentencepiece_to_hf_json(model_proto: bytes) -> str:
    """The tokenizer.json equivalent of a SentencePiece BPE model (Llama's kind), for transformers.

    transformers' own conversion of tokenizer.model tokenises whitespace differently from
    SentencePiece for some inputs (15 of llama.cpp's 46 Llama-2 test vectors with transformers
    5.23). This one matches: a normaliser that prepends "▁" and turns spaces into "▁", no
    pre-tokeniser, byte fallback, and merges ranked by the score of the piece they produce, as
    SentencePiece's BPE picks the best-scoring merge first.
    """
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2
    from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, normalizers

    proto = sp_pb2.ModelProto()
    proto.ParseFromString(model_proto)
    if proto.trainer_spec.model_type != sp_pb2.TrainerSpec.BPE:
        raise CheckpointError("only SentencePiece BPE models can be converted to tokenizer.json")
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    normal = (sp_pb2.ModelProto.SentencePiece.NORMAL, sp_pb2.ModelProto.SentencePiece.USER_DEFINED)
    merges = []
    for piece_id, piece in enumerate(proto.pieces):
        if piece.type not in normal:
            continue
        text = piece.piece
        for cut in range(1, len(text)):
            left, right = text[:cut], text[cut:]
            if left in vocab and right in vocab:
                merges.append((-piece.score, piece_id, vocab[left], vocab[right], left, right))
    merges.sort()
    unk = proto.pieces[proto.trainer_spec.unk_id].piece if proto.trainer_spec.unk_id >= 0 else None
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=[(m[4], m[5]) for m in merges], unk_token=unk,
                                 fuse_unk=True, byte_fallback=proto.trainer_spec.byte_fallback))
    steps = [normalizers.Replace(" ", "▁")]
    if proto.normalizer_spec.add_dummy_prefix:
        steps.insert(0, normalizers.Prepend("▁"))
    tok.normalizer = normalizers.Sequence(steps)
    strip = [decoders.Strip(" ", 1, 0)] if proto.normalizer_spec.add_dummy_prefix else []
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), *strip])
    special = (sp_pb2.ModelProto.SentencePiece.CONTROL, sp_pb2.ModelProto.SentencePiece.UNKNOWN)
    tok.add_special_tokens([AddedToken(p.piece, special=True, normalized=False)
                            for p in proto.pieces if p.type in special])
    bos_id = proto.trainer_spec.bos_id
    if bos_id >= 0:  # like Llama's own tokenizer.json: BOS first when special tokens are asked for
        from tokenizers import processors

        bos = proto.pieces[bos_id].piece
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, bos_id)])
    return tok.to_str()
