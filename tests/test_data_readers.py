"""Readers: layouts, filters, and every kind of bad input named clearly."""

import gzip
import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from compactlm.data.readers import DataError, SourceConfig, list_files, parse_records, read_batches, record_format


def read_all(source: SourceConfig, batch_bytes=1 << 20):
    texts, skipped = [], Counter()
    for path in list_files(source):
        for batch in read_batches(path, source, batch_bytes):
            texts += parse_records(batch, record_format(path), source.filter_spec(), skipped)
    return texts, skipped


def test_slimpajama_drops_github_rows_by_default(raw_corpus):
    root, expected = raw_corpus
    texts, skipped = read_all(SourceConfig(kind="slimpajama", path=str(root / "slimpajama")))
    assert texts == expected["nl_texts"]
    assert skipped == {"set:RedPajamaGithub": expected["github_rows"]}


def test_slimpajama_set_selection(raw_corpus):
    root, expected = raw_corpus
    only_books, skipped = read_all(SourceConfig(kind="slimpajama", path=str(root / "slimpajama"),
                                                include_sets=["RedPajamaBook"], exclude_sets=[]))
    assert only_books == expected["nl_texts"][1::3]
    assert skipped["set:RedPajamaGithub"] == expected["github_rows"]
    everything, _ = read_all(SourceConfig(kind="slimpajama", path=str(root / "slimpajama"), exclude_sets=[]))
    assert len(everything) == len(expected["nl_texts"]) + expected["github_rows"]


def test_starcoder_languages(raw_corpus):
    root, expected = raw_corpus
    texts, _ = read_all(SourceConfig(kind="starcoder", path=str(root / "starcoderdata")))
    assert texts == expected["code_texts"]
    python, _ = read_all(SourceConfig(kind="starcoder", path=str(root / "starcoderdata"), languages=["python"]))
    assert python == expected["python_texts"]
    with pytest.raises(DataError, match=r"starcoderdata: no directory for language\(s\) rust"):
        list_files(SourceConfig(kind="starcoder", path=str(root / "starcoderdata"), languages=["rust"]))


def test_generic_formats_and_text_field(tmp_path):
    rows = [{"body": f"document {i} " * 20} for i in range(5)]
    lines = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    (tmp_path / "a.jsonl").write_bytes(lines)
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(lines))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    pq.write_table(pa.table({"body": [r["body"] for r in rows]}), tmp_path / "d.parquet")
    (tmp_path / "e.txt").write_text("one whole document\nwith two lines\n")
    (tmp_path / "ignored.csv").write_text("not read")
    texts, skipped = read_all(SourceConfig(path=str(tmp_path), text_field="body"))
    assert texts == [r["body"] for r in rows] * 4 + ["one whole document\nwith two lines\n"]
    assert not skipped


def test_txt_separator_splits_documents_across_read_chunks(tmp_path):
    docs = [f"story {i}: " + "word " * 500 for i in range(40)]
    (tmp_path / "stories.txt").write_text("\n<|endoftext|>\n".join(docs))
    texts, _ = read_all(SourceConfig(path=str(tmp_path), txt_separator="\n<|endoftext|>\n"), batch_bytes=4096)
    assert texts == docs


def test_reading_is_streamed_in_bounded_batches(tmp_path):
    import random

    rng = random.Random(0)
    words = [f"w{i}" for i in range(5000)]
    lines = [json.dumps({"text": " ".join(rng.choices(words, k=200))}).encode() + b"\n" for _ in range(5000)]
    (tmp_path / "big.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b"".join(lines)))
    source = SourceConfig(path=str(tmp_path))
    batches = list(read_batches(tmp_path / "big.jsonl.zst", source, batch_bytes=64 * 1024))
    sizes = [sum(map(len, b)) for b in batches]
    assert max(sizes) <= 64 * 1024 + max(map(len, lines))
    assert len(batches) >= sum(map(len, lines)) // (64 * 1024 + max(map(len, lines)))
    assert [line for b in batches for line in b] == [line.rstrip(b"\n") for line in lines]


def test_per_row_faults_are_counted_by_reason(tmp_path):
    good = json.dumps({"text": "fine"}).encode()
    lines = [good, b'{"text": "caf\xe9 latin-1"}', b'{"text": ', json.dumps({"other": 1}).encode(),
             json.dumps({"text": "   "}).encode(), json.dumps({"text": "\ud800"}).encode(), b"[1, 2]", b""]
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    texts, skipped = read_all(SourceConfig(path=str(tmp_path)))
    assert texts == ["fine"]
    assert skipped == {"invalid_utf8": 2, "bad_json": 2, "missing_field": 1, "empty": 2}


def test_corrupt_zst_names_the_file(tmp_path):
    data = zstandard.ZstdCompressor().compress(b'{"text": "a"}\n' * 10000)
    (tmp_path / "broken.jsonl.zst").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"broken\.jsonl\.zst: corrupt or truncated zstd stream"):
        read_all(SourceConfig(path=str(tmp_path)))
    (tmp_path / "broken.jsonl.zst").write_bytes(b"this is not zstd at all")
    with pytest.raises(DataError, match=r"broken\.jsonl\.zst: corrupt or truncated zstd stream"):
        read_all(SourceConfig(path=str(tmp_path)))


def test_truncated_parquet_names_the_file(tmp_path):
    pq.write_table(pa.table({"content": ["x" * 100] * 100}), tmp_path / "t.parquet")
    data = (tmp_path / "t.parquet").read_bytes()
    (tmp_path / "t.parquet").write_bytes(data[: len(data) - 40])
    with pytest.raises(DataError, match=r"t\.parquet: unreadable parquet file"):
        read_all(SourceConfig(path=str(tmp_path), text_field="content"))


def test_parquet_without_the_text_column_names_it(tmp_path):
    pq.write_table(pa.table({"code": ["x"]}), tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"t\.parquet: no column 'content' \(columns: code\)"):
        read_all(SourceConfig(kind="files", path=str(tmp_path), text_field="content"))


def test_empty_or_missing_sources(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no input files for a 'slimpajama' source"):
        list_files(SourceConfig(kind="slimpajama", path=str(tmp_path / "empty")))
    with pytest.raises(DataError, match=r"nowhere: source path does not exist"):
        list_files(SourceConfig(path=str(tmp_path / "nowhere")))
    with pytest.raises(DataError, match=r"unknown kind 'redpajama'"):
        SourceConfig(kind="redpajama", path="x")
