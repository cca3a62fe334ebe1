"""Fuzzing every format compactlm reads from users (Hypothesis, fixed seed).

Each generated input must end in success or in ONE clear error: a CompactlmError whose message is a
single line naming the file (or the key, or the override) at fault. Any other exception type, a
multi-line message, a hang or a half-written output is a bug. Where success is possible, what was
read is checked against what was written.

Formats: YAML configs and KEY=VALUE overrides (train, prepare, ladder); jsonl / txt / parquet rows
and a whole `prepare` run; manifest.json and token shards; checkpoint directories (config.json in
compactlm and Hugging Face form, model.safetensors headers, train_state.pt); GGUF tokenizers.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import shutil
import struct
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from compactlm.errors import CompactlmError

# Fixed seed, no example database (a run is the same on every machine), no per-example deadline.
FUZZ = dict(derandomize=True, database=None, deadline=None, print_blob=False,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


def fuzz(max_examples: int):
    return settings(max_examples=max_examples, **FUZZ)


def assert_one_line_error(exc: BaseException, *names) -> str:
    """exc is a CompactlmError with a one-line message that mentions one of `names` (a file, a key)."""
    assert isinstance(exc, CompactlmError), f"{type(exc).__name__} instead of a CompactlmError: {exc!r}"
    message = str(exc)
    assert message.strip(), f"{type(exc).__name__} with an empty message"
    assert len(message.splitlines()) == 1, f"multi-line message: {message!r}"
    assert any(str(name) in message for name in names), f"{message!r} names none of {names}"
    return message


def outcome(call, *names):
    """call()'s result, or None after checking that it failed with one good CompactlmError line.
    Any other exception propagates and fails the test (Hypothesis then shrinks the input)."""
    try:
        return call()
    except CompactlmError as exc:
        assert_one_line_error(exc, *names)
        return None


@contextlib.contextmanager
def scratch():
    with tempfile.TemporaryDirectory(prefix="fuzz-") as directory:
        yield Path(directory)


def same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


# ---- generic values ------------------------------------------------------------------------------
TRICKY_TEXT = st.sampled_from(["", " ", "auto", "fp32", "bf16", "cpu", "none", "null", "~", "3e-4", "1e400", "nan",
                               ".inf", "-.inf", "yes", "0x10", "1_000", "a\nb", "a: b", "[1, 2", "{", "!!python/none",
                               "é", "\u2028", "\x85", "\x00"])
SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.integers(-3, 100)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12) | TRICKY_TEXT)
KEY_TEXT = st.text(max_size=10) | TRICKY_TEXT
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(KEY_TEXT | st.integers(-2, 2) | st.booleans(), inner, max_size=3),
                      max_leaves=8)
# JSON has no NaN in strict parsers and no 70-bit integers in some: both are still valid inputs to us.
JSON_SCALARS = (st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.integers(-3, 300)
                | st.floats(allow_nan=False) | st.text(max_size=12) | TRICKY_TEXT)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(KEY_TEXT, inner, max_size=3), max_leaves=8)


def nest(pairs: dict) -> dict:
    """{"a.b": 1, "c": 2} -> {"a": {"b": 1}, "c": 2}; a later key under a scalar is dropped."""
    tree: dict = {}
    for key, value in pairs.items():
        node, parts = tree, key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[parts[-1]] = value
    return tree


# ---- 1. YAML configs and overrides -----------------------------------------------------------------
def _config_text(draw, tree: dict) -> bytes:
    """The tree as YAML, or the YAML cut/spliced, or arbitrary text or bytes."""
    text = yaml.safe_dump(tree, allow_unicode=draw(st.booleans()), default_flow_style=draw(st.booleans()))
    how = draw(st.sampled_from(["yaml", "yaml", "yaml", "cut", "splice", "text", "bytes"]))
    data = text.encode("utf-8")
    if how == "cut":
        data = data[:draw(st.integers(0, len(data)))]
    elif how == "splice":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(max_size=6) | st.text(max_size=6).map(str.encode)) + data[at:]
    elif how == "text":
        data = draw(st.text(max_size=60)).encode("utf-8", "surrogatepass")
    elif how == "bytes":
        data = draw(st.binary(max_size=60))
    return data


@st.composite
def config_files(draw, known_keys: list[str], required: dict | None = None, lists: dict | None = None):
    """YAML text of a config: known dotted keys (and made-up ones) with random values, plus given lists."""
    keys = draw(st.lists(st.sampled_from(known_keys) | KEY_TEXT.filter(bool), max_size=6, unique=True))
    pairs = dict(required or {})
    for key in keys:
        pairs[key] = draw(VALUES)
    for key, items in (lists or {}).items():
        if draw(st.booleans()):
            pairs[key] = draw(items)
    return _config_text(draw, nest(pairs))


def _override_texts(known_keys: list[str]):
    value_text = VALUES.map(lambda v: yaml.safe_dump(v, default_flow_style=True).removesuffix("\n...\n").strip())
    structured = st.builds(lambda k, v: f"{k}={v}", st.sampled_from(known_keys) | KEY_TEXT, value_text | st.text(max_size=8))
    return st.lists(structured | st.text(max_size=16), max_size=3)


def _check_leaves(config, tree: dict, where: str = "") -> None:
    """Every scalar leaf of the YAML tree that names a field is that field's value in the config."""
    import dataclasses

    for key, value in tree.items():
        if not isinstance(key, str) or not dataclasses.is_dataclass(config) or not hasattr(config, key):
            continue
        got = getattr(config, key)
        if isinstance(value, dict):
            _check_leaves(got, value, f"{where}{key}.")
        elif isinstance(value, (bool, int, float, str)) and not isinstance(got, (list, dict)):
            expected = float(value) if isinstance(got, float) and not isinstance(value, float) else value
            assert same(got, expected), f"{where}{key}: file says {value!r}, config has {got!r}"


TRAIN_BASE = {"train.max_steps": 10}  # with this alone the train config is valid


def _train_keys():
    from compactlm.config.loader import all_keys
    from compactlm.config.train import TrainConfig

    return [k for k in all_keys(TrainConfig) if not k.startswith("data.datasets")]


DATASET_LISTS = st.lists(st.fixed_dictionaries({"path": st.text(max_size=8)}, optional={"weight": VALUES}), max_size=2)


@fuzz(60)
@given(data=st.data())
@example(data=None)  # the override cases below (None: a fixed set of known-tricky inputs)
def test_train_config_yaml_and_overrides(data):
    from compactlm.config.loader import load_config
    from compactlm.config.train import TrainConfig

    keys = _train_keys()
    if data is None:  # known-tricky inputs, each override on its own
        valid = b"train: {max_steps: 10}\nmodel: {n_layer: 2}\n"
        cases = [(valid, [o]) for o in ["a\nb=1", "train.max_steps=1\n2", "=1", "a..b=1", "optim=3", "optim.lr.x=1",
                                        "\u2028=1", "train.max_steps=[", "optim.lr=1e400", "a\u2028b.c=1"]]
        cases += [(text, []) for text in [
            b"\xff\xfe\x00", b"- 1\n- 2\n", b"a: !!python/object:os.system {}\n", b"{[1, 2]: 3}\n",
            b"train: {max_steps: 10}\n? [a]\n: 1\n", b"train: {max_steps: 10}\n'a\nb': 1\n",
            b"train: {max_steps: 10}\n\"a\\u2028b\": 1\n", b"train: {max_steps: 10}\noptim: {lr: .nan}\n",
            b"train: {max_steps: 10}\noptim: {\"lr\\nx\": 1}\n", b"[" * 5000, b"&a [*a]"]]
    else:
        text = data.draw(config_files(keys, TRAIN_BASE, {"data.datasets": DATASET_LISTS}), label="yaml")
        cases = [(text, data.draw(_override_texts(keys), label="overrides"))]
    for text, overrides in cases:
        with scratch() as tmp:
            path = tmp / "train.yaml"
            path.write_bytes(text)
            config = outcome(lambda: load_config(TrainConfig, path, overrides), path, "override")
            if config is None:
                continue
            assert isinstance(config, TrainConfig)
            if not overrides:
                _check_leaves(config, yaml.safe_load(text.decode("utf-8")) or {})


def _source_dicts():
    source = st.fixed_dictionaries({"path": st.text(max_size=8) | VALUES}, optional={
        "kind": st.sampled_from(["files", "slimpajama", "starcoder", "jsonl"]) | VALUES, "name": VALUES,
        "text_field": VALUES, "include_sets": VALUES, "exclude_sets": VALUES, "languages": VALUES,
        "txt_separator": VALUES, "nonsense": VALUES})
    return st.dictionaries(KEY_TEXT | st.just("nl"), st.fixed_dictionaries({"sources": st.lists(source, max_size=2)})
                           | VALUES, max_size=2)


@fuzz(40)
@given(data=st.data())
def test_prepare_config_yaml_and_overrides(data):
    from compactlm.config.loader import all_keys, load_config
    from compactlm.data.prepare import PrepareConfig

    keys = [k for k in all_keys(PrepareConfig) if not k.startswith("datasets")]
    text = data.draw(config_files(keys, {"output_dir": "out"}, {"datasets": _source_dicts()}), label="yaml")
    overrides = data.draw(_override_texts(keys + ["datasets.nl.sources"]), label="overrides")
    with scratch() as tmp:
        path = tmp / "prepare.yaml"
        path.write_bytes(text)
        config = outcome(lambda: load_config(PrepareConfig, path, overrides), path, "override")
        if config is not None:
            assert isinstance(config, PrepareConfig) and isinstance(config.datasets, dict)
            for dataset in config.datasets.values():
                assert all(s.kind in ("files", "slimpajama", "starcoder") and s.text_field for s in dataset.sources)


@fuzz(40)
@given(data=st.data())
def test_ladder_config_yaml_and_overrides(data):
    from compactlm.config.loader import all_keys
    from compactlm.ladder.config import LadderConfig, load_ladder_config

    keys = [k for k in all_keys(LadderConfig) if not k.startswith("sizes")]
    sizes = st.lists(st.fixed_dictionaries({}, optional={"preset": st.just("tinyllama-1m") | VALUES, "n_layer": VALUES,
                                                         "d_model": VALUES, "name": VALUES}), max_size=3)
    text = data.draw(config_files(keys, {"sizes": [{"preset": "tinyllama-1m"}], "tokens": [1e6]}, {"sizes": sizes}),
                     label="yaml")
    overrides = data.draw(_override_texts(keys), label="overrides")
    with scratch() as tmp:
        path = tmp / "ladder.yaml"
        path.write_bytes(text)
        config = outcome(lambda: load_ladder_config(path, overrides), path, "override")
        if config is not None:
            assert isinstance(config, LadderConfig) and config.mode in ("grid", "isoflop", "ablation")


# ---- 2. raw rows: jsonl / txt / parquet, and a whole prepare ---------------------------------------
SURROGATES = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=2)
TEXTS = st.text(max_size=20) | TRICKY_TEXT | st.builds(lambda a, s: a + s, st.text(max_size=5), SURROGATES)


def _dumps(value, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


JSON_ROWS = st.one_of(
    st.binary(max_size=30).map(lambda b: b.replace(b"\n", b" ")),  # arbitrary bytes
    st.builds(_dumps, JSON_VALUES, st.booleans()),  # any JSON value
    st.builds(lambda t, extra, a: _dumps({**extra, "text": t}, a), TEXTS | JSON_VALUES,
              st.dictionaries(KEY_TEXT, JSON_VALUES, max_size=2), st.booleans()),  # text of any type
    st.builds(lambda t, meta, a: _dumps({"text": t, "meta": meta}, a), TEXTS,
              st.fixed_dictionaries({"redpajama_set_name": st.sampled_from(["RedPajamaGithub", "RedPajamaBook"])
                                     | JSON_VALUES}) | JSON_VALUES, st.booleans()),  # slimpajama rows
    st.sampled_from([b"", b"  ", b"\r", b"[" * 100_000, b'{"text": "' + b"\xc3" + b'"}', b"\xef\xbb\xbf{}",
                     b'{"text": "a", "text": 1}', b"1" * 5000, b'{"text": "\\ud800"}']),
)


def expected_jsonl(records: list[bytes], kind: str) -> tuple[list[str], Counter]:
    """The oracle: the texts a jsonl source yields and the rows it skips, by reason."""
    texts, skipped = [], Counter()
    for record in records:
        try:
            row = json.loads(record) if record.strip() else {"text": ""}
        except (ValueError, RecursionError):  # bad JSON or not UTF-8: the reason does not matter here
            skipped["bad"] += 1
            continue
        if not isinstance(row, dict):
            skipped["bad_json"] += 1
            continue
        if kind == "slimpajama":
            meta = row.get("meta")
            name = meta.get("redpajama_set_name") if isinstance(meta, dict) else None
            if name == "RedPajamaGithub":
                skipped[f"set:{name}"] += 1
                continue
        text = row.get("text")
        if not isinstance(text, str):
            skipped["missing_field"] += 1
        elif not text.strip():
            skipped["empty"] += 1
        elif _encodable(text):
            texts.append(text)
        else:
            skipped["invalid_utf8"] += 1
    return texts, skipped


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def read_all(path: Path, source) -> tuple[list, list[str], Counter]:
    """Every raw record of a file, the texts parsed from them and the skipped rows (main + worker halves)."""
    from compactlm.data.readers import parse_records, read_batches, record_format

    records, texts, skipped = [], [], Counter()
    for batch in read_batches(path, source, batch_bytes=64):
        assert isinstance(batch, list) and batch
        records += batch
        texts += parse_records(batch, record_format(path), source.filter_spec(), skipped)
    assert all(isinstance(t, str) and t.strip() and _encodable(t) for t in texts)
    assert len(texts) + sum(skipped.values()) == len(records), "a record was neither kept nor counted as skipped"
    return records, texts, skipped


@fuzz(60)
@given(lines=st.lists(JSON_ROWS, max_size=12), trailing_newline=st.booleans(),
       kind=st.sampled_from(["files", "slimpajama"]),
       wrapper=st.sampled_from(["jsonl", "jsonl", "jsonl.gz", "jsonl.zst", "cut.gz", "cut.zst"]), cut=st.integers(0, 40))
def test_jsonl_rows(lines, trailing_newline, kind, wrapper, cut):
    from compactlm.data.readers import SourceConfig

    raw = b"\n".join(lines) + (b"\n" if trailing_newline else b"")
    suffix = wrapper.replace("cut.", "jsonl.")
    data = raw
    if suffix.endswith(".gz"):
        data = gzip.compress(raw)
    elif suffix.endswith(".zst"):
        import zstandard

        data = zstandard.ZstdCompressor().compress(raw)
    if wrapper.startswith("cut."):
        data = data[:max(0, len(data) - 1 - cut)]
    with scratch() as tmp:
        path = tmp / f"rows.{suffix}"
        path.write_bytes(data)
        source = SourceConfig(path=str(path), kind=kind)
        result = outcome(lambda: read_all(path, source), path)
        if wrapper.startswith("cut."):
            return  # a cut stream may fail (one DataError line, checked above) or end on a frame boundary
        assert result is not None, "an intact file must be readable"
        records, texts, skipped = result
        expected_records = raw.split(b"\n")
        if expected_records[-1] == b"":
            expected_records.pop()
        assert records == expected_records
        expected_texts, expected_skipped = expected_jsonl(records, kind)
        assert texts == expected_texts
        assert sum(skipped.values()) == sum(expected_skipped.values())


@fuzz(30)
@given(data=st.binary(max_size=80) | TEXTS.map(lambda t: t.encode("utf-8", "surrogatepass")),
       separator=st.none() | st.sampled_from(["\n\n", "<|endoftext|>", "", "é", "\x00"]) | st.text(max_size=3))
def test_txt_documents(data, separator):
    from compactlm.data.readers import SourceConfig

    with scratch() as tmp:
        path = tmp / "doc.txt"
        path.write_bytes(data)
        source = outcome(lambda: SourceConfig(path=str(path), txt_separator=separator), path)
        if source is None:
            return
        result = outcome(lambda: read_all(path, source), path)
        assert result is not None, "any bytes are a readable .txt file"
        records, texts, skipped = result
        pieces = [data] if separator is None else data.split(separator.encode())
        assert b"".join(records) == b"".join(pieces)
        for text in texts:
            assert text.encode() in data


def _arrow_columns():
    import pyarrow as pa

    def column(kind, values):
        return pa.array(values, type=kind)

    return st.one_of(
        st.lists(st.none() | TEXTS.filter(_encodable), max_size=6).map(lambda v: column(pa.string(), v)),
        st.lists(st.none() | st.text(max_size=8), max_size=6).map(lambda v: column(pa.large_string(), v)),
        st.lists(st.none() | st.binary(max_size=8), max_size=6).map(lambda v: column(pa.binary(), v)),
        st.lists(st.none() | st.integers(-(2**63), 2**63 - 1), max_size=6).map(lambda v: column(pa.int64(), v)),
        st.lists(st.none() | st.floats(), max_size=6).map(lambda v: column(pa.float64(), v)),
        st.lists(st.none() | st.booleans(), max_size=6).map(lambda v: column(pa.bool_(), v)),
        st.lists(st.none() | st.lists(st.text(max_size=4), max_size=2), max_size=6)
        .map(lambda v: column(pa.list_(pa.string()), v)),
        st.lists(st.none() | st.fixed_dictionaries({"a": st.text(max_size=4)}), max_size=6)
        .map(lambda v: column(pa.struct([("a", pa.string())]), v)),
        st.integers(0, 6).map(lambda n: pa.nulls(n)),
        st.lists(st.sampled_from(["a", "bb", " "]), max_size=6)
        .map(lambda v: pa.array(v, type=pa.string()).dictionary_encode()),
    )


@fuzz(40)
@given(data=st.data(), name=st.sampled_from(["text", "text", "content"]), row_group=st.integers(1, 4),
       damage=st.sampled_from(["none", "none", "none", "cut", "bytes"]))
def test_parquet_rows(data, name, row_group, damage):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from compactlm.data.readers import SourceConfig

    column = data.draw(_arrow_columns(), label="column")
    with scratch() as tmp:
        path = tmp / "rows.parquet"
        pq.write_table(pa.table({name: column, "other": pa.array(range(len(column)))}), path, row_group_size=row_group)
        if damage == "cut":
            blob = path.read_bytes()
            path.write_bytes(blob[:data.draw(st.integers(0, len(blob) - 1), label="cut")])
        elif damage == "bytes":
            path.write_bytes(data.draw(st.binary(max_size=64), label="bytes"))
        source = SourceConfig(path=str(path), kind="files")
        result = outcome(lambda: read_all(path, source), path)
        if result is None:
            assert damage != "none" or name != "text" or not (
                pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
                or pa.types.is_binary(column.type) or pa.types.is_null(column.type)
                or pa.types.is_dictionary(column.type)), f"a {column.type} text column must be readable"
            return
        records, texts, _ = result
        if damage == "none":
            assert len(records) == len(column)
            values = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in column.to_pylist()]
            assert texts == [v for v in values if isinstance(v, str) and v.strip() and _encodable(v)
                             and not (isinstance(v, str) and "\ufffd" in v)] or pa.types.is_binary(column.type)


@pytest.fixture(scope="session")
def fuzz_tokenizer(bpe_tokenizer_file):
    from compactlm.tokenizer.tokenizer import Tokenizer

    return Tokenizer(bpe_tokenizer_file)


PREPARE_ROWS = st.one_of(
    st.builds(lambda t: _dumps({"text": t}, False), st.text(min_size=1, max_size=30)),  # good rows, mostly
    st.builds(lambda t: _dumps({"text": t}, False), st.text(min_size=1, max_size=30)),
    JSON_ROWS,
)


@fuzz(8)
@given(lines=st.lists(PREPARE_ROWS, min_size=1, max_size=25), skip_bad_rows=st.booleans(),
       shard_tokens=st.integers(1, 60))
def test_prepare_on_fuzzed_jsonl(fuzz_tokenizer, lines, skip_bad_rows, shard_tokens):
    """A whole `prepare`: every good row becomes one document; a bad row stops a strict run with one line,
    and whatever it left under final shard names is complete; a re-run that skips bad rows finishes."""
    from compactlm.config.loader import load_config
    from compactlm.data.mixture import TokenStream
    from compactlm.data.prepare import PrepareConfig, prepare
    from compactlm.data.shards import Shard

    tok = fuzz_tokenizer
    expected, skipped = expected_jsonl(b"\n".join(lines).split(b"\n"), "files")
    bad = sum(n for reason, n in skipped.items() if reason != "empty")
    with scratch() as tmp:
        raw = tmp / "raw" / "rows.jsonl"
        raw.parent.mkdir()
        raw.write_bytes(b"\n".join(lines))
        out = tmp / "out"

        def run(skip: bool):
            config = load_config(PrepareConfig, data={
                "output_dir": str(out), "tokenizer": {"path": str(tok.path)}, "workers": 1, "batch_bytes": 48,
                "shard_tokens": shard_tokens, "skip_bad_rows": skip,
                "datasets": {"d": {"sources": [{"path": str(raw)}]}}})
            return outcome(lambda: prepare(config, progress=False), raw)

        manifests = run(skip_bad_rows)
        assert (manifests is None) == (bad > 0 and not skip_bad_rows)
        for shard_file in sorted((out / "d").glob("*.bin")):  # final names only: temporaries start with "."
            shard = Shard(shard_file)  # complete, or ShardError fails the test
            ends = shard.doc_index[1:].astype(np.int64)
            assert shard.n_docs and (np.asarray(shard.tokens)[ends - 1] == tok.eos_id).all()
        if manifests is None:
            assert not (out / "d" / "manifest.json").exists()
            manifests = run(True)  # resumes after the shards the failed run finished
            assert manifests is not None
        stream = TokenStream(out / "d", tok.hash)
        tokens = stream.window(0, stream.n_tokens) if stream.n_tokens else np.empty(0, dtype=np.int64)
        documents, start = [], 0
        for end in np.flatnonzero(tokens == tok.eos_id):
            documents.append(tok.decode(tokens[start:end].tolist()))
            start = end + 1
        assert documents == expected
        assert manifests["d"]["documents"] == len(expected)


# ---- 3. manifest.json and shards ----------------------------------------------------------------------
@pytest.fixture(scope="session")
def fuzz_dataset(tmp_path_factory):
    from tests.conftest import write_dataset

    return write_dataset(tmp_path_factory.mktemp("fuzz-data") / "ds", 250, 7, shard_tokens=100)


MANIFEST_PATHS = ["format", "version", "dtype", "hash", "tokenizer", "tokenizer.hash", "tokenizer.file",
                  "tokenizer.path", "shards", "shards.0", "shards.0.file", "shards.0.tokens", "shards.1.file",
                  "shards.2.tokens", "shards.1"]


def _mutate_json(draw, value, paths: list[str]):
    """Delete or replace a few nested entries (dotted paths, list indices as numbers)."""
    for _ in range(draw(st.integers(1, 3))):
        parts = draw(st.sampled_from(paths)).split(".")
        node = value
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) and part.isdigit() and int(part) < len(node) else \
                node.get(part) if isinstance(node, dict) else None
        last = parts[-1]
        if isinstance(node, list) and last.isdigit() and int(last) < len(node):
            last = int(last)
        elif not isinstance(node, dict):
            continue
        if draw(st.booleans()) and (isinstance(node, dict) and last in node or isinstance(last, int)):
            del node[last]
        else:
            node[last] = draw(JSON_VALUES | st.sampled_from(["", "../ds/s-0.bin", "/", "s-0.bin", "x\x00y",
                                                            "manifest.json", -1, 0, 99, 10**30, 1.5, True]))
    return value


@fuzz(60)
@given(data=st.data(), how=st.sampled_from(["mutate", "mutate", "mutate", "json", "bytes", "shard"]))
def test_manifests_and_mixtures(fuzz_dataset, data, how):
    from compactlm.data.manifest import manifest_tokenizer, read_manifest
    from compactlm.data.mixture import Mixture, MixtureSource, TokenStream

    with scratch() as tmp:
        directory = tmp / "ds"
        shutil.copytree(fuzz_dataset, directory)
        manifest = json.loads((directory / "manifest.json").read_text())
        if how == "mutate":
            (directory / "manifest.json").write_text(json.dumps(_mutate_json(data.draw, manifest, MANIFEST_PATHS)))
        elif how == "json":
            (directory / "manifest.json").write_text(json.dumps(data.draw(JSON_VALUES, label="manifest")))
        elif how == "bytes":
            (directory / "manifest.json").write_bytes(data.draw(st.binary(max_size=40), label="manifest"))
        else:  # a shard file removed, cut or replaced
            shard = directory / data.draw(st.sampled_from(["s-0.bin", "s-1.bin", "s-2.bin"]), label="shard")
            blob = shard.read_bytes()
            action = data.draw(st.sampled_from(["remove", "cut", "grow", "directory"]), label="action")
            if action == "remove":
                shard.unlink()
            elif action == "cut":
                shard.write_bytes(blob[:data.draw(st.integers(0, len(blob) - 1), label="cut")])
            elif action == "grow":
                shard.write_bytes(blob + b"\0" * data.draw(st.integers(1, 16), label="grow"))
            else:
                shard.unlink()
                shard.mkdir()
        read = outcome(lambda: read_manifest(directory), directory)
        if how in ("json", "bytes"):
            assert read is None, "only a mapping with the compactlm format is a manifest"
        if how == "shard":
            assert read is not None, "the manifest itself is intact"
        outcome(lambda: manifest_tokenizer(directory), directory)
        stream = outcome(lambda: TokenStream(directory), directory)
        if stream is not None:
            assert read is not None
            assert stream.n_tokens == sum(len(p) for p in stream.parts)
            assert stream.n_tokens == sum(entry["tokens"] for entry in read["shards"])
            window = stream.window(0, stream.n_tokens)
            assert ((window >= 7) & (window < 7 + 250)).all()
        mixture = outcome(lambda: Mixture([MixtureSource(str(directory))], seq_len=16, val_fraction=0.1), directory)
        if how == "shard":
            assert stream is None and mixture is None, "a removed, cut or grown shard must be noticed"
        if mixture is not None:
            assert stream is not None
            samples = mixture.samples(np.arange(5))
            assert samples.shape == (5, 17) and ((samples >= 7) & (samples < 7 + 250)).all()


@fuzz(60)
@given(data=st.data(), how=st.sampled_from(["bytes", "cut", "flip", "header"]))
def test_shards(data, how):
    from compactlm.data.shards import HEADER_SIZE, MAGIC, Shard, ShardError, write_shard

    with scratch() as tmp:
        path = tmp / "s.bin"
        tokens = np.array(data.draw(st.lists(st.integers(0, 2**16 - 1), max_size=20), label="tokens"), dtype=np.uint16)
        write_shard(path, tokens, np.array([0]))
        blob = bytearray(path.read_bytes())
        if how == "bytes":
            blob = bytearray(data.draw(st.binary(max_size=100), label="bytes"))
        elif how == "cut":
            blob = blob[:data.draw(st.integers(0, len(blob) - 1), label="cut")]
        elif how == "flip":
            for at in data.draw(st.lists(st.integers(0, len(blob) - 1), min_size=1, max_size=3), label="flips"):
                blob[at] ^= data.draw(st.integers(1, 255), label="xor")
        else:
            version, itemsize = data.draw(st.sampled_from([1, 0, 2, 2**32 - 1]), label="version"), \
                data.draw(st.sampled_from([2, 4, 0, 1, 8]), label="itemsize")
            n_tokens, n_docs = (data.draw(st.sampled_from([0, 1, 5, 2**32, 2**64 - 1]) | st.integers(0, 40), label=k)
                                for k in ("n_tokens", "n_docs"))
            body = data.draw(st.integers(0, 400), label="body")
            blob = bytearray(struct.pack("<8sIIQQ", MAGIC, version, itemsize, n_tokens, n_docs).ljust(HEADER_SIZE, b"\0")
                             + bytes(body))
        path.write_bytes(bytes(blob))
        try:
            shard = Shard(path)
        except ShardError as exc:
            assert_one_line_error(exc, path)
            return
        assert len(shard.tokens) == shard.n_tokens and len(shard.doc_index) == shard.n_docs + 1
        assert path.stat().st_size == HEADER_SIZE + shard.n_tokens * shard.dtype.itemsize + 8 * (shard.n_docs + 1)


# ---- 4. checkpoint directories -------------------------------------------------------------------------
@pytest.fixture(scope="session")
def fuzz_checkpoints(tmp_path_factory):
    """A tiny compactlm checkpoint and the same model as a Hugging Face directory, and its train_state.pt."""
    import torch

    from compactlm.checkpoint.model import build_model, save_checkpoint
    from compactlm.checkpoint.training import write_train_state
    from compactlm.convert.hf import save_hf
    from tests.conftest import random_config

    root = tmp_path_factory.mktemp("fuzz-ckpt")
    torch.manual_seed(0)
    model = build_model(random_config(n_layer=1, d_model=32, n_head=2, n_kv_head=1, ffn_dim=64, vocab_size=50,
                                      max_seq_len=32))
    save_checkpoint(model, root / "compactlm")
    save_hf(model, root / "hf")
    state = {"step": 3, "tokens_seen": 96, "data": {"next_index": 5, "weights": [1.0]}, "nonfinite_total": 0,
             "nonfinite_run": 0, "rng_cpu": torch.get_rng_state(), "optimizer": {"state": {0: {"exp_avg": torch.ones(4)}}}}
    (root / "state").mkdir()
    write_train_state(root / "state", state)
    return root, model


def _model_configs(draw, base: dict):
    """A config.json: the real one with a few fields replaced or deleted, extra fields, or any JSON."""
    value = json.loads(json.dumps(base))
    how = draw(st.sampled_from(["mutate", "mutate", "mutate", "mutate", "json", "bytes"]))
    if how == "json":
        return json.dumps(draw(JSON_VALUES)).encode()
    if how == "bytes":
        return draw(st.binary(max_size=40))
    small = (st.integers(-2, 70) | st.sampled_from([0, -1, 10**6, 2.0, 32.5, 1e-30, -1e-5, 1e300, True, False, None,
                                                    "32", "silu", "gelu", "llama", "default", "linear", [], {}, [2, 3],
                                                    {"rope_type": "linear"}, {"rope_theta": "x"}])
             | st.dictionaries(KEY_TEXT, st.integers(-1, 3) | st.text(max_size=3), max_size=2))
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(value) + ["rope_scaling", "unknown_key", "model_type", "format"]))
        if draw(st.integers(0, 3)) == 0:
            value.pop(key, None)
        else:
            value[key] = draw(small)  # bounded: a valid max_seq_len of 10^12 would allocate its RoPE tables
    return json.dumps(value).encode()


def _safetensors_header(blob: bytes) -> dict | None:
    """The JSON header of a safetensors file, if it has a readable one."""
    try:
        (n,) = struct.unpack("<Q", blob[:8])
        return json.loads(blob[8:8 + n])
    except (struct.error, ValueError):
        return None


@fuzz(60)
@given(data=st.data(), layout=st.sampled_from(["compactlm", "hf"]), part=st.sampled_from(["config", "weights"]))
def test_checkpoint_directories(fuzz_checkpoints, data, layout, part):
    import torch

    from compactlm.checkpoint.model import from_pretrained

    root, original = fuzz_checkpoints
    with scratch() as tmp:
        directory = tmp / layout
        shutil.copytree(root / layout, directory)
        config_file, weights = directory / "config.json", directory / "model.safetensors"
        if part == "config":
            config_file.write_bytes(_model_configs(data.draw, json.loads(config_file.read_text())))
        else:
            weights.write_bytes(_damage_safetensors(data.draw, weights.read_bytes()))
        model = outcome(lambda: from_pretrained(directory), directory)
        if model is None:
            return
        assert model.config.n_layer == 1 and model.config.d_model == 32 and model.config.vocab_size == 50
        if part == "config":  # the weights are intact: they must be the ones saved
            for name, tensor in original.state_dict().items():
                if name.startswith("rope."):
                    continue
                assert torch.equal(model.state_dict()[name], tensor), name
        else:  # success with damaged weights: the header still lists every tensor with its shape
            header = _safetensors_header(weights.read_bytes())
            assert header is not None
            names = {k for k in header if k != "__metadata__"}
            assert len(names) == len([k for k in original.state_dict() if not k.startswith("rope.")])


def _damage_safetensors(draw, blob: bytes) -> bytes:
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    how = draw(st.sampled_from(["cut", "length", "header", "entry", "entry", "flip", "bytes"]))
    if how == "cut":
        return blob[:draw(st.integers(0, len(blob) - 1))]
    if how == "length":
        return struct.pack("<Q", draw(st.sampled_from([0, 1, n - 1, n + 1, 2**63, 2**64 - 1]) | st.integers(0, 400))) \
            + blob[8:]
    if how == "bytes":
        return draw(st.binary(max_size=60))
    if how == "flip":
        out = bytearray(blob)
        for at in draw(st.lists(st.integers(0, min(len(blob), n + 8) - 1), min_size=1, max_size=3)):
            out[at] ^= draw(st.integers(1, 255))
        return bytes(out)
    if how == "header":
        new = json.dumps(draw(JSON_VALUES)).encode()
    else:
        name = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "__metadata__", "delete", "rename"]))
        if field == "delete":
            del header[name]
        elif field == "rename":
            header[name + "x"] = header.pop(name)
        elif field == "__metadata__":
            header["__metadata__"] = draw(JSON_VALUES)
        else:
            header[name][field] = draw(st.sampled_from(["F16", "BF16", "F64", "I64", "BOOL", "U8", "F8_E4M3", "Q4", 7])
                                       | st.lists(st.integers(-1, 70), max_size=3) | JSON_VALUES)
        new = json.dumps(header).encode()
    new = new.ljust(n, b" ") if len(new) <= n else new
    return struct.pack("<Q", len(new)) + new + blob[8 + n:]


@fuzz(40)
@given(data=st.data(), how=st.sampled_from(["cut", "flip", "bytes", "object"]))
def test_train_state_files(fuzz_checkpoints, data, how):
    import torch

    from compactlm.checkpoint.training import STATE_KEYS, read_train_state

    root, _ = fuzz_checkpoints
    with scratch() as tmp:
        directory = tmp / "step-00000003"
        directory.mkdir()
        blob = (root / "state" / "train_state.pt").read_bytes()
        if how == "cut":
            blob = blob[:data.draw(st.integers(0, len(blob) - 1), label="cut")]
        elif how == "flip":
            out = bytearray(blob)
            for at in data.draw(st.lists(st.integers(0, len(blob) - 1), min_size=1, max_size=4), label="flips"):
                out[at] ^= data.draw(st.integers(1, 255), label="xor")
            blob = bytes(out)
        elif how == "bytes":
            blob = data.draw(st.binary(max_size=80), label="bytes")
        else:  # a valid torch file of the wrong shape
            buffer = io.BytesIO()
            value = data.draw(st.dictionaries(st.sampled_from(list(STATE_KEYS)) | KEY_TEXT, JSON_VALUES, max_size=7)
                              | JSON_VALUES, label="object")
            torch.save(value, buffer)
            blob = buffer.getvalue()
        (directory / "train_state.pt").write_bytes(blob)
        state = outcome(lambda: read_train_state(directory), directory / "train_state.pt")
        if state is not None:
            assert isinstance(state, dict) and all(k in state for k in STATE_KEYS)


# ---- 5. GGUF tokenizers ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def fuzz_gguf(spm_tokenizer_file, tmp_path_factory):
    from tests.test_tokenizer_gguf import write_gguf_from_spm

    path = tmp_path_factory.mktemp("fuzz-gguf") / "model.gguf"
    write_gguf_from_spm(spm_tokenizer_file, path)
    return path


@fuzz(60)
@given(data=st.data(), how=st.sampled_from(["cut", "flip", "flip", "bytes", "magic"]))
def test_gguf_tokenizers(fuzz_gguf, data, how):
    from compactlm.tokenizer.tokenizer import Tokenizer

    blob = fuzz_gguf.read_bytes()
    if how == "cut":
        blob = blob[:data.draw(st.integers(0, len(blob) - 1), label="cut")]
    elif how == "flip":
        out = bytearray(blob)
        # most of the file is the vocabulary: flips land in the header and key/value metadata as often
        where = st.integers(0, 400) | st.integers(0, len(blob) - 1)
        for at in data.draw(st.lists(where, min_size=1, max_size=4), label="flips"):
            out[at] ^= data.draw(st.integers(1, 255), label="xor")
        blob = bytes(out)
    elif how == "bytes":
        blob = data.draw(st.binary(max_size=80), label="bytes")
    else:  # a GGUF magic and version, then anything
        blob = b"GGUF" + struct.pack("<I", data.draw(st.sampled_from([1, 2, 3, 4]), label="version")) \
            + data.draw(st.binary(max_size=80), label="rest")
    with scratch() as tmp:
        path = tmp / "model.gguf"
        path.write_bytes(blob)
        tokenizer = outcome(lambda: Tokenizer(path), path)
        if tokenizer is not None:
            ids = tokenizer.encode("hello fuzz 123")
            assert all(0 <= i < tokenizer.vocab_size for i in ids)
