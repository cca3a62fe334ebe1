"""Streaming readers for raw corpora, split in two halves so that `prepare` can parallelise them.

The main process only *reads*: it decompresses files and cuts them into batches of raw records
(bytes of JSON lines, or strings from a parquet column), in bounded memory whatever the file size.
Worker processes *parse*: `parse_records` turns a batch into document texts, applying the source's
filters and counting every row it skips, by reason.

Layouts:
- `slimpajama`: `DIR/**/*.jsonl.zst` (SlimPajama's `train/chunkN/`), `text` + `meta.redpajama_set_name`;
  `RedPajamaGithub` rows dropped by default (code comes from the code source instead, as in TinyLlama).
- `starcoder`: `DIR/<language>/*.parquet` with a `content` column; `languages` selects directories.
- `files`: any `.jsonl`, `.jsonl.gz`, `.jsonl.zst`, `.txt` or `.parquet` files under a directory (or
  one file), with a configurable text field. A `.txt` file is one document, or several split on
  `txt_separator`.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from compactlm.errors import CompactlmError

KINDS = ("slimpajama", "starcoder", "files")
FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".txt", ".parquet")
GITHUB_SET = "RedPajamaGithub"


class DataError(CompactlmError):
    pass


@dataclass
class SourceConfig:
    """One raw source of a dataset."""

    path: str  # a directory or file of raw data
    kind: str = "files"  # slimpajama (chunk*/*.jsonl.zst), starcoder (a directory per language) or files
    name: str = ""  # names the shards and the manifest's counts (default: the path's last part)
    text_field: str = ""  # default: "content" for starcoder, "text" otherwise
    include_sets: list[str] | None = None  # slimpajama: keep only these set names
    exclude_sets: list[str] = field(default_factory=lambda: [GITHUB_SET])  # slimpajama
    languages: list[str] | None = None  # starcoder: language directories to read (default all)
    txt_separator: str | None = None  # files: split .txt files into documents on this string

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DataError(f"source {self.path}: unknown kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.txt_separator == "":  # bytes.split(b"") fails deep inside the reader
            raise DataError(f"source {self.path}: txt_separator is empty; give a separator, or null for one "
                            "document per file")
        self.text_field = self.text_field or ("content" if self.kind == "starcoder" else "text")
        self.name = self.name or Path(self.path).name

    def filter_spec(self) -> dict:
        """What a worker needs to parse this source's records (picklable, small)."""
        return {"text_field": self.text_field, "kind": self.kind, "include_sets": self.include_sets,
                "exclude_sets": list(self.exclude_sets) if self.kind == "slimpajama" else [],
                "txt_separator": self.txt_separator}


def list_files(source: SourceConfig) -> list[Path]:
    """The source's files in a fixed (sorted) order; an empty or missing source is an error."""
    root = Path(source.path)
    if not root.exists():
        raise DataError(f"{root}: source path does not exist")
    if root.is_file():
        files = [root]
    elif source.kind == "slimpajama":
        files = sorted(root.rglob("*.jsonl.zst"))
    elif source.kind == "starcoder":
        languages = source.languages or sorted(p.name for p in root.iterdir() if p.is_dir())
        missing = [lang for lang in languages if not (root / lang).is_dir()]
        if missing:
            raise DataError(f"{root}: no directory for language(s) {', '.join(missing)}")
        files = [f for lang in languages for f in sorted((root / lang).glob("*.parquet"))]
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(FILE_SUFFIXES))
    if not files:
        raise DataError(f"{root}: no input files for a {source.kind!r} source")
    return files


# ---- reading (main process) ----------------------------------------------------------------------
def read_batches(path: Path, source: SourceConfig, batch_bytes: int = 1 << 22) -> Iterator[list]:
    """Batches of raw records of about `batch_bytes`, streamed: JSON lines as bytes, parquet texts as str."""
    name = path.name
    try:
        if name.endswith(".parquet"):
            yield from _parquet_batches(path, source.text_field, batch_bytes)
        elif name.endswith(".txt"):
            yield from _txt_batches(path, source.txt_separator, batch_bytes)
        else:
            yield from _split_batches(_byte_chunks(path), b"\n", batch_bytes)
    except DataError:
        raise
    except Exception as exc:  # zstandard, gzip and pyarrow each raise their own exception types
        raise DataError(f"{path}: {_describe(exc, path)}") from None


def _describe(exc: Exception, path: Path) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if path.name.endswith(".zst"):
        return f"corrupt or truncated zstd stream ({text})"
    if path.name.endswith(".gz"):
        return f"corrupt or truncated gzip stream ({text})"
    if path.name.endswith(".parquet"):
        return f"unreadable parquet file ({text})"
    return text


def _byte_chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    """The file's decompressed bytes, in chunks."""
    if path.name.endswith(".zst"):
        yield from _zstd_chunks(path)
        return
    with (gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")) as f:
        while chunk := f.read(size):
            yield chunk


def _zstd_chunks(path: Path, size: int = 8192) -> Iterator[bytes]:
    """Decompressed bytes of a .zst file, frame after frame; a file ending inside a frame is an error.

    Compressed input goes in small pieces because python-zstandard's decompressobj returns all the
    output of its input at once: 8 KB of text compressed ~5x yields ~40 KB per piece.
    """
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    dobj, in_frame = dctx.decompressobj(), False
    with open(path, "rb") as f:
        while chunk := f.read(size):
            while chunk:  # a file may hold several frames back to back
                in_frame = True
                yield dobj.decompress(chunk)
                chunk = b""
                if dobj.eof:
                    chunk, dobj, in_frame = dobj.unused_data, dctx.decompressobj(), False
    if in_frame:
        raise DataError(f"{path}: corrupt or truncated zstd stream (the file ends inside a frame)")


def _split_batches(chunks: Iterator[bytes], separator: bytes, batch_bytes: int) -> Iterator[list[bytes]]:
    """Records separated by `separator` in a stream of byte chunks, in batches of about batch_bytes."""
    batch, size, pending = [], 0, b""
    for chunk in chunks:
        records = (pending + chunk).split(separator)
        pending = records.pop()
        for record in records:
            batch.append(record)
            size += len(record) + len(separator)
            if size >= batch_bytes:
                yield batch
                batch, size = [], 0
    if pending:
        batch.append(pending)
    if batch:
        yield batch


def _parquet_batches(path: Path, column: str, batch_bytes: int) -> Iterator[list]:
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as parquet:
        if column not in parquet.schema_arrow.names:
            raise DataError(f"{path}: no column {column!r} (columns: {', '.join(parquet.schema_arrow.names)})")
        kind = parquet.schema_arrow.field(column).type
        if not _is_text_type(kind):  # the workers would get ints, lists or dicts where they expect text
            raise DataError(f"{path}: column {column!r} holds {kind}, not text")
        for group in range(parquet.num_row_groups):
            texts = parquet.read_row_group(group, columns=[column]).column(0).to_pylist()
            batch, size = [], 0
            for text in texts:
                batch.append(text)
                size += len(text) if isinstance(text, str) else 0
                if size >= batch_bytes:
                    yield batch
                    batch, size = [], 0
            if batch:
                yield batch


def _is_text_type(kind) -> bool:
    """Strings or bytes (plain, large, view or dictionary-encoded), or a column of nulls only."""
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    checks = ("is_string", "is_large_string", "is_string_view", "is_binary", "is_large_binary", "is_binary_view",
              "is_null")
    return any(getattr(pa.types, check, lambda _: False)(kind) for check in checks)


def _txt_batches(path: Path, separator: str | None, batch_bytes: int) -> Iterator[list]:
    if separator is None:
        yield [path.read_bytes()]  # one document: its bytes, decoded (and checked) by the worker
        return
    yield from _split_batches(_byte_chunks(path, 1 << 22), separator.encode(), batch_bytes)


# ---- parsing (worker processes) ------------------------------------------------------------------
def record_format(path: Path) -> str:
    """"jsonl" (records are JSON lines as bytes) or "text" (records are documents, str or bytes)."""
    return "text" if path.name.endswith((".txt", ".parquet")) else "jsonl"


def parse_records(records: list, fmt: str, spec: dict, skipped: Counter) -> list[str]:
    """Raw records -> document texts; every dropped row is counted in `skipped` under its reason."""
    texts = []
    for record in records:
        text = _json_text(record, spec, skipped) if fmt == "jsonl" else _plain_text(record, skipped)
        if text is None:
            continue
        if not text.strip():
            skipped["empty"] += 1
            continue
        try:
            text.encode("utf-8")  # JSON escapes can smuggle in lone surrogates
        except UnicodeEncodeError:
            skipped["invalid_utf8"] += 1
            continue
        texts.append(text)
    return texts


def _plain_text(record: str | bytes | None, skipped: Counter) -> str | None:
    if record is None:
        skipped["missing_field"] += 1
        return None
    if isinstance(record, bytes):
        try:
            return record.decode("utf-8")
        except UnicodeDecodeError:
            skipped["invalid_utf8"] += 1
            return None
    return record


def _json_text(line: bytes, spec: dict, skipped: Counter) -> str | None:
    if not line.strip():
        return ""  # a blank line between rows: counted as empty
    try:
        row = json.loads(line)
    except UnicodeDecodeError:
        skipped["invalid_utf8"] += 1
        return None
    except (ValueError, RecursionError):  # json recurses once per nesting level: "[[[[..." is not a row
        skipped["bad_json"] += 1
        return None
    if not isinstance(row, dict):
        skipped["bad_json"] += 1
        return None
    if spec["kind"] == "slimpajama":
        meta = row.get("meta")
        set_name = meta.get("redpajama_set_name") if isinstance(meta, dict) else None
        if set_name in spec["exclude_sets"] or (spec["include_sets"] is not None and set_name not in spec["include_sets"]):
            skipped[f"set:{set_name}"] += 1
            return None
    text = row.get(spec["text_field"])
    if not isinstance(text, str):
        skipped["missing_field"] += 1
        return None
    return text
