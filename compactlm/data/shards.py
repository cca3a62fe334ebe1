"""Packed token shards: the binary format `compactlm prepare` writes (docs/data-format.md).

    offset 0   magic     8 bytes  b"CLMTOKS\\0"
    offset 8   version   uint32   1
    offset 12  itemsize  uint32   2 (uint16 tokens) or 4 (uint32 tokens)
    offset 16  n_tokens  uint64
    offset 24  n_docs    uint64
    offset 32  reserved  32 bytes of zeros
    offset 64  tokens    n_tokens x itemsize, little-endian
    then       doc_index (n_docs + 1) x uint64: token offset where each document starts, then n_tokens

All integers little-endian. Every document ends with the tokenizer's EOS; there is no padding.
A shard is written to a temporary name, fsynced and renamed, so a shard under its final name is
always complete. Also here: a reader for lit-gpt's `LITPKDS` files (TinyLlama's prepared data).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from compactlm.errors import CompactlmError
from compactlm.fileio import atomic_write

MAGIC = b"CLMTOKS\0"
VERSION = 1
HEADER_SIZE = 64
_HEADER = struct.Struct("<8sIIQQ")


class ShardError(CompactlmError):
    pass


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def write_shard(path: str | Path, tokens: np.ndarray, doc_starts: np.ndarray) -> None:
    """Write one shard atomically. tokens: 1-D uint16/uint32; doc_starts: offsets of each document."""
    path = Path(path)
    if tokens.dtype not in (np.uint16, np.uint32):
        raise ShardError(f"{path}: tokens must be uint16 or uint32, got {tokens.dtype}")
    index = np.append(np.asarray(doc_starts, dtype=np.uint64), np.uint64(len(tokens)))
    header = _HEADER.pack(MAGIC, VERSION, tokens.dtype.itemsize, len(tokens), len(index) - 1)
    atomic_write(path, [header.ljust(HEADER_SIZE, b"\0"),
                        tokens.astype(tokens.dtype.newbyteorder("<"), copy=False).tobytes(),
                        index.astype("<u8", copy=False).tobytes()])


class Shard:
    """A memory-mapped shard: `tokens` (numpy memmap) and `doc_index`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                header = f.read(HEADER_SIZE)
        except OSError as exc:
            raise ShardError(f"{self.path}: cannot read shard ({exc.strerror})") from None
        if len(header) < HEADER_SIZE or header[:8] != MAGIC:
            raise ShardError(f"{self.path}: not a compactlm token shard (bad magic)")
        _, version, itemsize, n_tokens, n_docs = _HEADER.unpack(header[:_HEADER.size])
        if version != VERSION:
            raise ShardError(f"{self.path}: shard format version {version}, this compactlm reads {VERSION}")
        if itemsize not in (2, 4):
            raise ShardError(f"{self.path}: invalid token size {itemsize}")
        expected = HEADER_SIZE + n_tokens * itemsize + (n_docs + 1) * 8
        if size != expected:
            raise ShardError(f"{self.path}: truncated or corrupt ({size} bytes, header says {expected})")
        self.dtype = np.dtype("<u2" if itemsize == 2 else "<u4")
        self.n_tokens, self.n_docs = n_tokens, n_docs
        self.tokens = np.memmap(self.path, dtype=self.dtype, mode="r", offset=HEADER_SIZE, shape=(n_tokens,))
        self.doc_index = np.memmap(self.path, dtype="<u8", mode="r", offset=HEADER_SIZE + n_tokens * itemsize,
                                   shape=(n_docs + 1,))

    def document(self, i: int) -> np.ndarray:
        return self.tokens[int(self.doc_index[i]):int(self.doc_index[i + 1])]


# ---- lit-gpt's packed format ---------------------------------------------------------------------
LIT_MAGIC = b"LITPKDS"
_LIT_HEADER = struct.Struct("<7sQBQ")  # magic, version, dtype code, chunk size: 24 bytes
_LIT_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float32, 7: np.float64,
               8: np.uint16}


def read_litpkds(path: str | Path, fill_token: int | None = 1) -> np.ndarray:
    """Tokens of a lit-gpt packed file, without the fill tokens padding its tail.

    lit-gpt pre-fills each chunk with its separator (BOS in TinyLlama) and writes the last, partial
    chunk whole, so the tail is padding that TinyLlama trained on (its issue 83). A document never
    ends with BOS (it ends with EOS), so a trailing run of `fill_token` is dropped.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            header = f.read(_LIT_HEADER.size)
    except OSError as exc:
        raise ShardError(f"{path}: cannot read ({exc.strerror})") from None
    if len(header) < _LIT_HEADER.size or header[:7] != LIT_MAGIC:
        raise ShardError(f"{path}: not a lit-gpt packed file (bad magic)")
    _, version, code, chunk_size = _LIT_HEADER.unpack(header)
    if version != 1 or code not in _LIT_DTYPES:
        raise ShardError(f"{path}: unsupported lit-gpt packed file (version {version}, dtype code {code})")
    dtype = np.dtype(_LIT_DTYPES[code])
    data_bytes = path.stat().st_size - _LIT_HEADER.size
    if data_bytes % dtype.itemsize:
        raise ShardError(f"{path}: truncated (data is not a whole number of {dtype} tokens)")
    tokens = np.memmap(path, dtype=dtype, mode="r", offset=_LIT_HEADER.size)
    end = len(tokens)
    if fill_token is not None:
        nonfill = np.flatnonzero(tokens != fill_token)
        end = int(nonfill[-1]) + 1 if len(nonfill) else 0
    return tokens[:end]
