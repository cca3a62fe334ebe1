"""Fuzzing every format compactlm reads from users (Hypothesis, fixed seed).

Each generated input must end in success or in ONE clear error: a CompactlmError whose message is a
single line naming the file (or the key, or the override) at fault. Any other exception type, a
multi-line message, a hang or a half-written output is a bug. Where success is possible, what was
read is checked against what was written.

Formats: YAML configs and KEY=VALUE overrides (train, prepare, ladder); jsonl / txt / parquet rows
and a whole `prepare` run; manifest.json, token shards and the mixture over them; checkpoint
directories (config.json in compactlm and Hugging Face form, model.safetensors headers, the shard
index, tokenizer.json, train_state.pt and the data position in it); GGUF tokenizers.

Inputs that once broke a reader are kept as explicit examples. The example counts keep the file to
well under a minute on two cores; COMPACTLM_FUZZ_SCALE=10 runs ten times as many (same seed), and
`--hypothesis-show-statistics` shows how often each input ended in success or in each error class.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import os
import shutil
import struct
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from compactlm.errors import CompactlmError

# Fixed seed, no example database (a run is the same on every machine), no per-example deadline.
FUZZ = dict(derandomize=True, database=None, deadline=None, print_blob=False,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


def fuzz(max_examples: int):
    return settings(max_examples=max_examples * int(os.environ.get("COMPACTLM_FUZZ_SCALE", "1")), **FUZZ)


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
        result = call()
    except CompactlmError as exc:
        assert_one_line_error(exc, *names)
        event(f"{type(exc).__name__}")  # --hypothesis-show-statistics: how often each outcome came up
        return None
    event("success")
    return result


@contextlib.contextmanager
def scratch():
    with tempfile.TemporaryDirectory(prefix="fuzz-") as directory:
        yield Path(directory)


def same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


# ---- generic values ------------------------------------------------------------------------------
TRICKY_TEXT = st.sampled_from(["", " ", "auto", "fp32", "bf16", "cpu", "none", "null", "~", "3e-4", "1e400", "nan",
                               ".inf", "-.inf", "yes", "0x10", "1_000", "a\nb", "a: b", "[1, 2", "{", "!!python/none",
                               "é", "\u2028", "\x85", "\x00", "\x1e", "a\rb", "/", ".."])
SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.integers(-3, 100)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12) | TRICKY_TEXT)
KEY_TEXT = st.text(max_size=10) | TRICKY_TEXT
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(KEY_TEXT | st.integers(-2, 2) | st.booleans(), inner, max_size=3),
                      max_leaves=8)
# No NaN: json.dumps would write the non-standard `NaN` token (integers past 64 bits stay).
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
    how = draw(st.sampled_from(["yaml"] * 8 + ["cut", "splice", "text", "bytes"]))
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


WORDS = st.sampled_from(["auto", "cpu", "fp32", "bf16", "eager", "none", "ddp", "full", "model", "6nd", "files",
                         "slimpajama", "starcoder", "tinyllama-1m", "tinyllama-4m", "optim.lr", "text", "out"])


def of_type(hint):
    """Values of a config field's type (in range or not): what a user who read the docs might write."""
    import dataclasses
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([of_type(a) for a in args])
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        fields = dataclasses.fields(hint)
        required = {f.name: of_type(hints[f.name]) for f in fields
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        return st.fixed_dictionaries(required, optional={f.name: of_type(hints[f.name]) for f in fields
                                                         if f.name not in required})
    if origin is list:
        return st.lists(of_type(args[0]) if args else SCALARS, max_size=3)
    if origin is dict:
        return st.dictionaries(st.sampled_from(["nl", "code"]) | st.text(max_size=4), of_type(args[1]), max_size=2)
    return {type(None): st.none(), bool: st.booleans(), int: st.integers(-1, 64),
            float: st.floats(-0.1, 1.0) | st.integers(0, 100), str: WORDS | st.text(max_size=6)}.get(hint, SCALARS)


def typed_fields(cls, where: str = "") -> dict:
    """Dotted key -> strategy of values of its type; sections are descended into, lists and mappings are leaves."""
    import dataclasses
    import typing

    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        section = next((h for h in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(h)), None)
        if section is not None and typing.get_origin(hint) not in (list, dict):
            out.update(typed_fields(section, f"{where}{f.name}."))
        else:
            out[f"{where}{f.name}"] = of_type(hint)
    return out


@st.composite
def config_files(draw, cls, base: dict):
    """A config file: `base` (dotted key -> value) plus known keys, mostly with values of their type,
    sometimes anything, and made-up keys; as YAML, damaged YAML, text or bytes."""
    fields = typed_fields(cls)
    pairs = dict(base)
    for _ in range(draw(st.integers(0, 5))):  # one key in six made up, one value in four of any type
        key = draw(st.sampled_from(sorted(fields)) if draw(st.integers(0, 5)) else KEY_TEXT.filter(bool))
        pairs[key] = draw(fields[key] if key in fields and draw(st.integers(0, 3)) else VALUES)
    return _config_text(draw, nest(pairs))


@st.composite
def override_lists(draw, cls):
    """KEY=VALUE overrides: mostly known keys with values of their type, else anything at all."""
    fields = typed_fields(cls)
    overrides = []
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.integers(0, 5))
        key = draw(st.sampled_from(sorted(fields)) if kind else KEY_TEXT)
        value = draw(fields[key]) if kind > 1 else draw(VALUES)
        text = yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()
        overrides.append(draw(st.text(max_size=16)) if kind == 1 else f"{key}={text}")
    return overrides


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


def load_fuzzed(load, path: Path, text: bytes, overrides: list[str]):
    """Write the config, load it: the config, or None after one error line naming the file or an override."""
    path.write_bytes(text)
    config = outcome(lambda: load(path, overrides), path, "override")
    if config is not None and not overrides:
        _check_leaves(config, yaml.safe_load(text.decode("utf-8")) or {})
    return config


@fuzz(150)
@given(data=st.data())
@example(data=None)  # None: a fixed set of known-tricky inputs
def test_train_config_yaml_and_overrides(data):
    """load_config(TrainConfig, path, overrides) on YAML of known and made-up keys, damaged files, any overrides."""
    from compactlm.config.loader import load_config
    from compactlm.config.train import TrainConfig

    if data is None:  # each override on its own, then each file
        valid = b"train: {max_steps: 10}\nmodel: {n_layer: 2}\n"
        cases = [(valid, [o]) for o in ["a\nb=1", "train.max_steps=1\n2", "=1", "a..b=1", "optim=3", "optim.lr.x=1",
                                        "\u2028=1", "train.max_steps=[", "optim.lr=1e400", "a\u2028b.c=1",
                                        "optim.lr=" + "[" * 3000, "data.datasets=[{path: x, weight: .nan}]"]]
        cases += [(text, []) for text in [
            b"\xff\xfe\x00", b"- 1\n- 2\n", b"a: !!python/object:os.system {}\n", b"{[1, 2]: 3}\n",
            b"train: {max_steps: 10}\n? [a]\n: 1\n", b"train: {max_steps: 10}\n'a\nb': 1\n",
            b"train: {max_steps: 10}\n\"a\\u2028b\": 1\n", b"train: {max_steps: 10}\noptim: {lr: .nan}\n",
            b"train: {max_steps: 10}\noptim: {\"lr\\nx\": 1}\n", b"[" * 3000, b"&a [*a]",
            b"train: {max_steps: 10}\ndata: {datasets: &a [*a]}\n"]]
    else:
        cases = [(data.draw(config_files(TrainConfig, {"train.max_steps": 10}), label="yaml"),
                  data.draw(override_lists(TrainConfig), label="overrides"))]
    for text, overrides in cases:
        with scratch() as tmp:
            config = load_fuzzed(lambda p, o: load_config(TrainConfig, p, o), tmp / "train.yaml", text, overrides)
            assert config is None or isinstance(config, TrainConfig)


@fuzz(120)
@given(data=st.data())
@example(data=None)
def test_prepare_config_yaml_and_overrides(data):
    """load_config(PrepareConfig, ...): datasets of sources whose own checks (kind, separator) run in the loader."""
    from compactlm.config.loader import load_config
    from compactlm.data.prepare import DatasetConfig, PrepareConfig

    if data is None:  # a source's own checks, with values that hold line breaks
        text = yaml.safe_dump({"output_dir": "out", "datasets": {"a\nb": {"sources": [
            {"path": "x\ny", "kind": "jsonl"}, {"path": "z", "txt_separator": ""}]}}}).encode()
        overrides = []
    else:
        datasets = data.draw(of_type(dict[str, DatasetConfig]), label="datasets")
        text = data.draw(config_files(PrepareConfig, {"output_dir": "out", "datasets": datasets}), label="yaml")
        overrides = data.draw(override_lists(PrepareConfig), label="overrides")
    with scratch() as tmp:
        config = load_fuzzed(lambda p, o: load_config(PrepareConfig, p, o), tmp / "prepare.yaml", text, overrides)
        if config is not None:
            assert isinstance(config, PrepareConfig) and isinstance(config.datasets, dict)
            for dataset in config.datasets.values():
                assert all(s.kind in ("files", "slimpajama", "starcoder") and s.text_field for s in dataset.sources)


@fuzz(120)
@given(data=st.data())
def test_ladder_config_yaml_and_overrides(data):
    """load_ladder_config(path, overrides): the loader's errors and the ladder's own validation."""
    from compactlm.ladder.config import LadderConfig, load_ladder_config

    text = data.draw(config_files(LadderConfig, {"sizes": [{"preset": "tinyllama-1m"}], "tokens": [1e6]}), label="yaml")
    overrides = data.draw(override_lists(LadderConfig), label="overrides")
    with scratch() as tmp:
        config = load_fuzzed(load_ladder_config, tmp / "ladder.yaml", text, overrides)
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


@fuzz(200)
@given(lines=st.lists(JSON_ROWS, max_size=12), trailing_newline=st.booleans(),
       kind=st.sampled_from(["files", "slimpajama"]),
       wrapper=st.sampled_from(["jsonl", "jsonl", "jsonl.gz", "jsonl.zst", "cut.gz", "cut.zst"]),
       cut=st.integers(0, 40))
@example(lines=[b'{"text": "a"}', b"[" * 100_000, b'{"text": ' * 50_000], trailing_newline=False, kind="files",
         wrapper="jsonl", cut=0)
def test_jsonl_rows(lines, trailing_newline, kind, wrapper, cut):
    """read_batches + parse_records on jsonl (plain, gzip, zstd, cut): every row is a text or counted."""
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


@fuzz(100)
@given(data=st.binary(max_size=80) | TEXTS.map(lambda t: t.encode("utf-8", "surrogatepass")),
       separator=st.none() | st.sampled_from(["\n\n", "<|endoftext|>", "", "é", "\x00"]) | st.text(max_size=3))
def test_txt_documents(data, separator):
    """.txt files of any bytes, whole or split on a separator: every piece is a text or counted."""
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


@fuzz(150)
@given(data=st.data(), name=st.sampled_from(["text", "text", "content"]), row_group=st.integers(1, 4),
       damage=st.sampled_from(["none", "none", "none", "cut", "bytes"]))
def test_parquet_rows(data, name, row_group, damage):
    """Parquet files with a text column of any Arrow type, or damaged: texts, counted skips, or one DataError."""
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
        if damage != "none":
            return  # a damaged file may still be read (a cut in its footer padding), or fail with one line
        kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
        text_like = any(check(kind) for check in (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary,
                                                  pa.types.is_null))
        if name != "text" or not text_like:
            assert result is None, f"a {name!r} column of {column.type} gave records"
            return
        assert result is not None, f"a text column of {column.type} must be readable"
        records, texts, _ = result
        assert len(records) == len(column)
        expected = []
        for value in column.to_pylist():
            if isinstance(value, bytes):
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError:
                    continue
            if isinstance(value, str) and value.strip():
                expected.append(value)
        assert texts == expected


@pytest.fixture(scope="session")
def fuzz_tokenizer(bpe_tokenizer_file):
    from compactlm.tokenizer.tokenizer import Tokenizer

    return Tokenizer(bpe_tokenizer_file)


PREPARE_ROWS = st.one_of(
    st.builds(lambda t: _dumps({"text": t}, False), st.text(min_size=1, max_size=30)),  # good rows, mostly
    st.builds(lambda t: _dumps({"text": t}, False), st.text(min_size=1, max_size=30)),
    JSON_ROWS,
)


@fuzz(30)
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


EDIT_VALUES = JSON_VALUES | st.sampled_from(["", "../ds/s-0.bin", "/", "..", "s-0.bin", "x\x00y", "s\n0.bin",
                                             "manifest.json", -1, 0, 99, 10**30, 1.5, True, [], {}])


def edit_lists(paths: list[str]):
    """A few (dotted path, delete?, new value) edits of a JSON document."""
    return st.lists(st.tuples(st.sampled_from(paths), st.booleans(), EDIT_VALUES), min_size=1, max_size=3)


def apply_edits(value, edits):
    """Delete or replace nested entries (dotted paths, list indices as numbers); paths that no longer
    lead anywhere are skipped."""
    for path, delete, new in edits:
        parts, node = path.split("."), value
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) and part.isdigit() and int(part) < len(node) else \
                node.get(part) if isinstance(node, dict) else None
        last = parts[-1]
        if isinstance(node, list) and last.isdigit() and int(last) < len(node):
            last = int(last)
        elif not isinstance(node, dict):
            continue
        if delete and (isinstance(last, int) or last in node):
            del node[last]
        else:
            node[last] = new
    return value


@fuzz(200)
@given(data=st.data(), how=st.sampled_from(["mutate", "mutate", "mutate", "json", "bytes", "shard"]),
       edits=edit_lists(MANIFEST_PATHS))
@example(data=None, how="mutate", edits=[("shards.0.file", False, "s\n0.bin")])
@example(data=None, how="mutate", edits=[("shards.1.file", False, "x\x00y")])
@example(data=None, how="mutate", edits=[("tokenizer", False, ["a"])])
@example(data=None, how="mutate", edits=[("shards", False, [])])
def test_manifests_and_mixtures(fuzz_dataset, data, how, edits):
    """read_manifest, manifest_tokenizer, TokenStream and Mixture on a damaged manifest.json or shard."""
    from compactlm.data.manifest import manifest_tokenizer, read_manifest
    from compactlm.data.mixture import Mixture, MixtureSource, TokenStream

    with scratch() as tmp:
        directory = tmp / "ds"
        shutil.copytree(fuzz_dataset, directory)
        manifest = json.loads((directory / "manifest.json").read_text())
        if how == "mutate":
            (directory / "manifest.json").write_text(json.dumps(apply_edits(manifest, edits)))
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
            if stream.n_tokens:
                window = stream.window(0, stream.n_tokens)
                assert ((window >= 7) & (window < 7 + 250)).all()
        mixture = outcome(lambda: Mixture([MixtureSource(str(directory))], seq_len=16, val_fraction=0.1), directory)
        if how == "shard":
            assert stream is None and mixture is None, "a removed, cut or grown shard must be noticed"
        if mixture is not None:
            assert stream is not None
            samples = mixture.samples(np.arange(5))
            assert samples.shape == (5, 17) and ((samples >= 7) & (samples < 7 + 250)).all()


WEIGHTS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 1.0, 1e308, 5e-324, -0.0, -1.0])


@fuzz(100)
@given(weights=st.lists(WEIGHTS, min_size=1, max_size=3))
@example(weights=[1e308, 1e308])
@example(weights=[1.0, float("inf")])
def test_mixture_weights(fuzz_dataset, weights):
    """Mixture weights as a config can give them (the config refuses only negatives and NaN)."""
    from compactlm.data.mixture import Mixture, MixtureSource

    mixture = outcome(lambda: Mixture([MixtureSource(str(fuzz_dataset), w) for w in weights], seq_len=16),
                      "data.datasets")
    if mixture is not None:
        assert np.isclose(mixture.weights.sum(), 1.0) and mixture.slots.sum() == 4096 and (mixture.slots >= 0).all()
        samples = mixture.samples(np.arange(6))
        assert samples.shape == (6, 17) and ((samples >= 7) & (samples < 7 + 250)).all()


@fuzz(200)
@given(data=st.data(), how=st.sampled_from(["bytes", "cut", "flip", "header"]))
def test_shards(data, how):
    """Shard(path) on random bytes, a cut or byte-flipped shard, or a header of random fields."""
    from compactlm.data.shards import HEADER_SIZE, MAGIC, Shard, write_shard

    flips = []
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
            flips = data.draw(st.lists(st.integers(0, len(blob) - 1), min_size=1, max_size=3), label="flips")
            for at in flips:
                blob[at] ^= data.draw(st.integers(1, 255), label="xor")
        else:
            version, itemsize = data.draw(st.sampled_from([1, 0, 2, 2**32 - 1]), label="version"), \
                data.draw(st.sampled_from([2, 4, 0, 1, 8]), label="itemsize")
            n_tokens, n_docs = (data.draw(st.sampled_from([0, 1, 5, 2**32, 2**64 - 1]) | st.integers(0, 40), label=k)
                                for k in ("n_tokens", "n_docs"))
            body = data.draw(st.integers(0, 400), label="body")
            header = struct.pack("<8sIIQQ", MAGIC, version, itemsize, n_tokens, n_docs)
            blob = bytearray(header.ljust(HEADER_SIZE, b"\0") + bytes(body))
        path.write_bytes(bytes(blob))
        shard = outcome(lambda: Shard(path), path)
        if shard is None:  # flips past the header fields (reserved bytes, tokens, index) leave a well-formed shard
            assert not flips or min(flips) < struct.calcsize("<8sIIQQ"), f"flips at {flips} made the shard unreadable"
            return
        assert len(shard.tokens) == shard.n_tokens and len(shard.doc_index) == shard.n_docs + 1
        assert path.stat().st_size == HEADER_SIZE + shard.n_tokens * shard.dtype.itemsize + 8 * (shard.n_docs + 1)


# ---- 4. checkpoint directories -------------------------------------------------------------------------
@pytest.fixture(scope="session")
def fuzz_checkpoints(tmp_path_factory, fuzz_tokenizer, fuzz_mixture):
    """A tiny compactlm checkpoint and the same model as a Hugging Face directory (both with a tokenizer),
    and a train_state.pt whose data state belongs to fuzz_mixture."""
    import torch

    from compactlm.checkpoint.model import build_model, save_checkpoint
    from compactlm.checkpoint.training import write_train_state
    from compactlm.convert.hf import save_hf
    from tests.conftest import random_config

    root = tmp_path_factory.mktemp("fuzz-ckpt")
    torch.manual_seed(0)
    model = build_model(random_config(n_layer=1, d_model=32, n_head=2, n_kv_head=1, ffn_dim=64, vocab_size=50,
                                      max_seq_len=32))
    save_checkpoint(model, root / "compactlm", fuzz_tokenizer)
    save_hf(model, root / "hf", fuzz_tokenizer)
    state = {"step": 3, "tokens_seen": 96, "data": fuzz_mixture.state(40), "nonfinite_total": 0, "nonfinite_run": 0,
             "rng_cpu": torch.get_rng_state(), "optimizer": {"state": {0: {"exp_avg": torch.ones(4)}}}}
    (root / "state").mkdir()
    write_train_state(root / "state", state)
    return root


@pytest.fixture(scope="session")
def fuzz_mixture(fuzz_dataset):
    from compactlm.data.mixture import Mixture, MixtureSource

    return Mixture([MixtureSource(str(fuzz_dataset))], seq_len=16, seed=3)


def _model_configs(draw, base: dict):
    """A config.json: the real one with a few fields replaced or deleted, extra fields, or any JSON."""
    value = json.loads(json.dumps(base))
    how = draw(st.sampled_from(["mutate", "mutate", "mutate", "mutate", "json", "bytes"]))
    if how == "json":
        return json.dumps(draw(JSON_VALUES)).encode()
    if how == "bytes":
        return draw(st.binary(max_size=40))
    small = (st.integers(-2, 70) | st.sampled_from([0, -1, 10**5, 2.0, 32.5, 1e-30, -1e-5, 1e300, True, False, None,
                                                    "32", "silu", "gelu", "llama", "default", "linear", [], {}, [2, 3],
                                                    {"rope_type": "linear"}, {"rope_theta": "x"}])
             | st.dictionaries(KEY_TEXT, st.integers(-1, 3) | st.text(max_size=3), max_size=2))
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(value) + ["rope_scaling", "unknown_key", "model_type", "format"]))
        if draw(st.integers(0, 3)) == 0:
            value.pop(key, None)
        else:
            value[key] = draw(small)  # bounded: max_seq_len 10^9 is valid and would fill memory with RoPE tables
    return json.dumps(value).encode()


def _safetensors_header(blob: bytes) -> dict | None:
    """The JSON header of a safetensors file, if it has a readable one."""
    try:
        (n,) = struct.unpack("<Q", blob[:8])
        return json.loads(blob[8:8 + n])
    except (struct.error, ValueError):
        return None


def _rename_first_tensor(blob: bytes, name: str) -> bytes:
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    first = next(k for k in header if k != "__metadata__")
    header[name] = header.pop(first)
    new = json.dumps(header).encode()
    return struct.pack("<Q", len(new)) + new + blob[8 + n:]


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


# (layout, what is damaged, how, whether from_pretrained must still load it): found by fuzzing, kept
KNOWN_DAMAGE = [
    ("compactlm", "config", lambda d: (d / "config.json").write_text("[]"), False),
    ("compactlm", "config", lambda d: _edit_json(d / "config.json", n_head=0), False),
    ("compactlm", "config", lambda d: _edit_json(d / "config.json", n_layer=1.0), False),
    ("compactlm", "config", lambda d: _edit_json(d / "config.json", head_dim=-16), False),
    ("compactlm", "config", lambda d: _edit_json(d / "config.json", bos_id="1", eos_id=[]), False),
    # RoPE tables of 2^50 positions: more than any address space, so refused at once on every machine
    ("compactlm", "config", lambda d: _edit_json(d / "config.json", max_seq_len=2**50), False),
    ("hf", "config", lambda d: _edit_json(d / "config.json", max_position_embeddings=2**60), False),
    ("hf", "config", lambda d: _edit_json(d / "config.json", eos_token_id=[]), False),
    ("hf", "config", lambda d: _edit_json(d / "config.json", rope_scaling="linear", rope_parameters=None), False),
    ("hf", "config", lambda d: _edit_json(d / "config.json", _name_or_path=5), False),
    ("hf", "config", lambda d: _edit_json(d / "config.json", bos_token_id=[], eos_token_id="x"), False),
    ("compactlm", "weights", lambda d: (d / "model.safetensors").write_bytes(
        _rename_first_tensor((d / "model.safetensors").read_bytes(), "a\nb")), False),
    ("hf", "weights", lambda d: (d / "model.safetensors").write_bytes(
        _rename_first_tensor((d / "model.safetensors").read_bytes(), "\u2028")), False),
    ("hf", "index", lambda d: (d / "model.safetensors.index.json").write_text('{"weight_map": {"x": "a\\u001eb"}}'),
     False),
    ("hf", "index", lambda d: (d / "model.safetensors.index.json").write_text('{"weight_map": {"x": "/"}}'), False),
    ("hf", "index", lambda d: (d / "model.safetensors.index.json").write_text("[1]"), False),
]


@fuzz(200)
@given(data=st.data(), layout=st.sampled_from(["compactlm", "hf"]),
       part=st.sampled_from(["config", "config", "weights", "weights", "index", "tokenizer"]))
@example(data=None, layout="", part="known")
def test_checkpoint_directories(fuzz_checkpoints, data, layout, part):
    """from_pretrained, and the tokenizer beside the weights, on a damaged config.json (compactlm or
    Hugging Face), model.safetensors header, model.safetensors.index.json (Hugging Face layout) or
    tokenizer.json."""
    if data is None:
        for case in KNOWN_DAMAGE:
            _check_checkpoint(fuzz_checkpoints, *case)
        return
    layout = "hf" if part == "index" else layout
    if part == "config":
        damage, must_load = lambda d: (d / "config.json").write_bytes(
            _model_configs(data.draw, json.loads((d / "config.json").read_text()))), False
    elif part == "weights":
        damage, must_load = lambda d: (d / "model.safetensors").write_bytes(
            _damage_safetensors(data.draw, (d / "model.safetensors").read_bytes())), False
    elif part == "index":
        index, must_load = _shard_index(data.draw, (fuzz_checkpoints / "hf" / "model.safetensors").read_bytes())
        damage = lambda d: (d / "model.safetensors.index.json").write_bytes(index)  # noqa: E731
    else:  # the model does not read its tokenizer: it must load whatever became of tokenizer.json
        blob = (fuzz_checkpoints / layout / "tokenizer.json").read_bytes()
        new = data.draw(st.integers(0, len(blob) - 1).map(lambda n: blob[:n]) | st.binary(max_size=40)
                        | JSON_VALUES.map(lambda v: json.dumps(v).encode()), label="tokenizer.json")
        damage, must_load = lambda d: (d / "tokenizer.json").write_bytes(new), True
    _check_checkpoint(fuzz_checkpoints, layout, part, damage, must_load)


def _check_checkpoint(root: Path, layout: str, part: str, damage, must_load: bool) -> None:
    import torch
    from safetensors.torch import load_file

    from compactlm.checkpoint.model import from_pretrained
    from compactlm.tokenizer.tokenizer import load_tokenizer

    with scratch() as tmp:
        directory = tmp / layout
        shutil.copytree(root / layout, directory)
        damage(directory)
        tokenizer = outcome(lambda: load_tokenizer(directory), directory)
        if tokenizer is not None:
            assert all(i is None or isinstance(i, int) and 0 <= i for i in (tokenizer.bos_id, tokenizer.eos_id))
            assert tokenizer.decode(tokenizer.encode("fuzz")) == "fuzz"
        model = outcome(lambda: from_pretrained(directory), directory)
        if model is None:
            assert not must_load, f"{part}: an intact model no longer loads"
            return
        assert model.config.n_layer == 1 and model.config.d_model == 32 and model.config.vocab_size == 50
        if part in ("config", "index"):  # the weights are intact: they must be the ones saved
            for name, tensor in load_file(root / "compactlm" / "model.safetensors").items():
                assert torch.equal(model.state_dict()[name], tensor), name
        else:  # success with damaged weights: the header still lists every tensor with its shape
            header = _safetensors_header((directory / "model.safetensors").read_bytes())
            saved = _safetensors_header((root / layout / "model.safetensors").read_bytes())
            assert header is not None
            assert {k: v["shape"] for k, v in header.items() if k != "__metadata__"} == \
                {k: v["shape"] for k, v in saved.items() if k != "__metadata__"}


def _shard_index(draw, blob: bytes) -> tuple[bytes, bool]:
    """model.safetensors.index.json: the real map with an entry changed or gone, or any JSON; and
    whether the model must still load (every tensor is still in a listed file)."""
    names = sorted(k for k in _safetensors_header(blob) if k != "__metadata__")
    index = {"metadata": {"total_size": len(blob)}, "weight_map": {name: "model.safetensors" for name in names}}
    how = draw(st.sampled_from(["valid", "drop", "file", "map", "json"]))
    if how == "drop":
        del index["weight_map"][draw(st.sampled_from(names))]
    elif how == "file":
        index["weight_map"][draw(st.sampled_from(names))] = draw(
            st.sampled_from(["", "missing.safetensors", "config.json", "/", ".", "..", "a\x1eb", "\x00"]) | JSON_VALUES)
    elif how == "map":
        index["weight_map"] = draw(JSON_VALUES)
    elif how == "json":
        index = draw(JSON_VALUES)
    return json.dumps(index).encode(), how in ("valid", "drop")


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
            header[draw(st.just(name + "x") | KEY_TEXT)] = header.pop(name)
        elif field == "__metadata__":
            header["__metadata__"] = draw(JSON_VALUES)
        else:
            header[name][field] = draw(st.sampled_from(["F16", "BF16", "F64", "I64", "BOOL", "U8", "F8_E4M3", "Q4", 7])
                                       | st.lists(st.integers(-1, 70), max_size=3) | JSON_VALUES)
        new = json.dumps(header).encode()
    new = new.ljust(n, b" ") if len(new) <= n else new
    return struct.pack("<Q", len(new)) + new + blob[8 + n:]


@fuzz(150)
@given(data=st.data(), how=st.sampled_from(["cut", "flip", "bytes", "object", "state", "data"]))
def test_train_state_files(fuzz_checkpoints, fuzz_mixture, data, how):
    """read_train_state, then what resuming does with it: the mixture checks the saved data position."""
    import torch

    from compactlm.checkpoint.training import STATE_TYPES, read_train_state

    root = fuzz_checkpoints
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
        elif how == "object":  # a valid torch file of anything
            blob = _torch_bytes(data.draw(st.dictionaries(st.sampled_from(list(STATE_TYPES)) | KEY_TEXT, JSON_VALUES,
                                                          max_size=7) | JSON_VALUES, label="object"))
        else:  # the real state with one entry gone or replaced, or its data position damaged
            value = torch.load(root / "state" / "train_state.pt", weights_only=True)
            key = data.draw(st.sampled_from([*STATE_TYPES, "optimizer"]), label="key")
            action = data.draw(st.sampled_from(["keep", "drop", "replace"]), label="action")
            if how == "data":
                value["data"] = apply_edits(value["data"], data.draw(edit_lists(
                    ["seed", "seq_len", "weights", "weights.0", "weights.1", "manifests", "manifests.0", "next_index"]),
                    label="edits"))
            elif action == "drop":
                del value[key]
            elif action == "replace":
                tensors = st.sampled_from([torch.zeros(2), torch.zeros(3, dtype=torch.uint8)])
                value[key] = data.draw(JSON_VALUES | tensors, label="value")
            blob = _torch_bytes(value)
        (directory / "train_state.pt").write_bytes(blob)
        source = directory / "train_state.pt"
        state = outcome(lambda: read_train_state(directory), source)
        if how in ("state", "data") and (action == "keep" or how == "data"):
            assert state is not None, "an intact state (its data position aside) loads"
        if how == "state" and action == "drop" and key in STATE_TYPES:
            assert state is None, f"a state without {key} loads"
        if state is None:
            return
        # what resuming indexes into, and hands to torch.set_rng_state
        assert all(isinstance(state[k], int) and not isinstance(state[k], bool)
                   for k in ("step", "tokens_seen", "nonfinite_total", "nonfinite_run"))
        assert isinstance(state["data"], dict) and isinstance(state.get("optimizer", {}), dict)
        assert isinstance(state["rng_cpu"], torch.Tensor) and state["rng_cpu"].dtype == torch.uint8
        next_index = outcome(lambda: fuzz_mixture.check_state(state["data"], str(source)), source)
        if how == "state" and not (key == "data" and action == "replace"):
            assert next_index == 40
        elif next_index is not None:
            assert next_index == state["data"]["next_index"]


def _torch_bytes(value) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


# ---- 5. GGUF tokenizers ------------------------------------------------------------------------------
def damaged(blob: bytes, data, how: str, header: int) -> bytes:
    """blob cut short ("cut"), with one flipped byte anywhere ("flip"), or with up to three flipped in
    its first `header` bytes ("flip_header": the header and first key/value pairs); else unchanged."""
    if how == "cut":
        return blob[:data.draw(st.integers(0, len(blob) - 1), label="cut")]
    if not how.startswith("flip"):
        return blob
    out = bytearray(blob)
    where = st.integers(0, header) if how == "flip_header" else st.integers(0, len(blob) - 1)
    for at in data.draw(st.lists(where, min_size=1, max_size=3 if how == "flip_header" else 1), label="flips"):
        out[at] ^= data.draw(st.integers(1, 255), label="xor")
    return bytes(out)


@pytest.fixture(scope="session")
def fuzz_gguf(spm_tokenizer_file, tmp_path_factory):
    from tests.test_tokenizer_gguf import write_gguf_from_spm

    path = tmp_path_factory.mktemp("fuzz-gguf") / "model.gguf"
    write_gguf_from_spm(spm_tokenizer_file, path)
    return path


@fuzz(200)
@given(data=st.data(), how=st.sampled_from(["cut", "flip", "flip", "flip_header", "bytes", "magic"]))
@example(data=None, how="intact")
def test_gguf_tokenizers(fuzz_gguf, data, how):
    """Tokenizer(path.gguf) on a valid GGUF (written with gguf.GGUFWriter) cut or byte-flipped, or any bytes."""
    from compactlm.tokenizer.tokenizer import Tokenizer

    blob = damaged(fuzz_gguf.read_bytes(), data, how, header=400)
    if how == "bytes":
        blob = data.draw(st.binary(max_size=80), label="bytes")
    elif how == "magic":  # a GGUF magic and version, then anything
        blob = b"GGUF" + struct.pack("<I", data.draw(st.sampled_from([1, 2, 3, 4]), label="version")) \
            + data.draw(st.binary(max_size=80), label="rest")
    with scratch() as tmp:
        path = tmp / "model.gguf"
        path.write_bytes(blob)
        tokenizer = outcome(lambda: Tokenizer(path), path)
        if how == "intact":
            assert tokenizer is not None and tokenizer.vocab_size == 400
            assert tokenizer.decode(tokenizer.encode("hello fuzz 123")) == "hello fuzz 123"
        if tokenizer is not None:
            ids = tokenizer.encode("hello fuzz 123")
            assert all(0 <= i < tokenizer.vocab_size for i in ids)


# ---- 6. GGUF model files -----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def fuzz_gguf_model(bpe_tokenizer_file, tmp_path_factory):
    """A tiny byte-level BPE Llama exported to q8_0 GGUF: metadata, tokenizer, quantized and f32 tensors."""
    from compactlm.checkpoint.model import build_model
    from compactlm.convert.gguf import export_gguf
    from compactlm.tokenizer.tokenizer import Tokenizer
    from tests.conftest import random_config

    tokenizer = Tokenizer(bpe_tokenizer_file)
    model = build_model(random_config(vocab_size=tokenizer.vocab_size, d_model=32, n_head=2, n_kv_head=1,
                                      ffn_dim=64, n_layer=1))
    return export_gguf(model, tmp_path_factory.mktemp("fuzz-gguf-model") / "model.gguf", tokenizer, "q8_0")


@fuzz(100)
@given(data=st.data(), how=st.sampled_from(["cut", "flip", "flip", "flip_header"]))
@example(data=None, how="intact")
def test_gguf_model_files(fuzz_gguf_model, data, how):
    """from_pretrained(path.gguf) on a cut or byte-flipped model file: a model or one line naming the file."""
    from compactlm.checkpoint.model import from_pretrained

    blob = damaged(fuzz_gguf_model.read_bytes(), data, how, header=600)
    with scratch() as tmp:
        path = tmp / "model.gguf"
        path.write_bytes(blob)
        model = outcome(lambda: from_pretrained(path), path)
        if how == "intact":
            assert model is not None and model.config.n_layer == 1
