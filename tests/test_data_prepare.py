"""`compactlm prepare`: shards, manifest, determinism, crash safety, and bad input."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from compactlm.cli import main
from compactlm.config.loader import load_config
from compactlm.data.prepare import PrepareConfig, prepare
from compactlm.data.readers import DataError
from compactlm.data.shards import Shard, ShardError, read_litpkds, write_shard
from compactlm.tokenizer.tokenizer import Tokenizer


def make_config(raw_root: Path, out: Path, tokenizer: Path, **extra) -> PrepareConfig:
    data = {"output_dir": str(out), "tokenizer": {"path": str(tokenizer), "train_vocab_size": 600},
            "datasets": {"natural_language": {"sources": [{"kind": "slimpajama", "path": str(raw_root / "slimpajama")}]},
                         "code": {"sources": [{"kind": "starcoder", "path": str(raw_root / "starcoderdata")}]}},
            "workers": 2, "shard_tokens": 4000, "batch_bytes": 8192}
    data.update(extra)
    return load_config(PrepareConfig, data=data)


@pytest.fixture(scope="module")
def prepared(raw_corpus, tmp_path_factory):
    raw_root, expected = raw_corpus
    base = tmp_path_factory.mktemp("prepared")
    config = make_config(raw_root, base / "out", base / "tokenizer.json")
    manifests = prepare(config, progress=False)
    return base, config, manifests, expected


def shard_documents(directory: Path, manifest: dict) -> list[np.ndarray]:
    docs = []
    for entry in manifest["shards"]:
        shard = Shard(directory / entry["file"])
        docs += [np.array(shard.document(i)) for i in range(shard.n_docs)]
    return docs


def test_shards_hold_every_kept_document_followed_by_eos(prepared):
    base, config, manifests, expected = prepared
    tokenizer = Tokenizer(config.tokenizer.path)
    assert (tokenizer.bos_id, tokenizer.eos_id) == (1, 2) and tokenizer.vocab_size == 600
    for name, texts in (("natural_language", expected["nl_texts"]), ("code", expected["code_texts"])):
        manifest = manifests[name]
        docs = shard_documents(base / "out" / name, manifest)
        assert len(docs) == len(texts) == manifest["documents"]
        for doc, text in zip(docs, texts):
            assert doc[-1] == tokenizer.eos_id and tokenizer.eos_id not in doc[:-1]
            assert doc[:-1].tolist() == tokenizer.encode(text)
        assert manifest["tokens"] == sum(len(d) for d in docs)  # no padding anywhere
        assert len(manifest["shards"]) > 2 and manifest["dtype"] == "uint16"


def test_manifest_records_sources_skips_and_tokenizer(prepared):
    _, config, manifests, expected = prepared
    nl = manifests["natural_language"]
    (source,) = nl["sources"]
    assert source["skipped"] == {"set:RedPajamaGithub": expected["github_rows"]}
    assert source["documents"] == len(expected["nl_texts"]) and source["files"] == 2
    assert nl["tokenizer"]["hash"] == Tokenizer(config.tokenizer.path).hash
    assert nl["config"]["datasets"]["natural_language"]["sources"][0]["kind"] == "slimpajama"
    assert manifests["code"]["sources"][0]["files"] == 4


def test_output_does_not_depend_on_worker_count(prepared, raw_corpus, tmp_path):
    base, config, _, _ = prepared
    one = make_config(raw_corpus[0], tmp_path / "one", Path(config.tokenizer.path), workers=1)
    prepare(one, progress=False)
    for name in ("natural_language", "code"):
        ours = sorted((base / "out" / name).glob("*.bin"))
        theirs = sorted((tmp_path / "one" / name).glob("*.bin"))
        assert [p.name for p in ours] == [p.name for p in theirs]
        assert all(a.read_bytes() == b.read_bytes() for a, b in zip(ours, theirs))


def test_rerun_is_idempotent(prepared):
    base, config, manifests, _ = prepared
    shards = sorted((base / "out").rglob("*.bin"))
    stamps = [p.stat().st_mtime_ns for p in shards]
    again = prepare(config, progress=False)
    assert [p.stat().st_mtime_ns for p in shards] == stamps
    assert again["code"]["hash"] == manifests["code"]["hash"]


def test_kill_and_rerun_finishes_without_redoing_finished_shards(raw_corpus, prepared, tmp_path):
    """SIGKILL a prepare run mid-way, re-run it: same output as an uninterrupted run, old shards untouched."""
    base, config, manifests, _ = prepared
    config_path = tmp_path / "prepare.yaml"
    data = {"output_dir": str(tmp_path / "out"), "tokenizer": {"path": config.tokenizer.path},
            "datasets": {"natural_language": {"sources": [{"kind": "slimpajama",
                                                           "path": str(raw_corpus[0] / "slimpajama")}]}},
            "workers": 1, "shard_tokens": 1500, "batch_bytes": 2048}
    config_path.write_text(yaml.safe_dump(data))
    # Slow each batch down so the kill lands while shards are being produced.
    env = {**os.environ, "COMPACTLM_TEST_BATCH_DELAY": "0.05"}
    proc = subprocess.Popen([sys.executable, "-m", "compactlm", "prepare", str(config_path), "--no-progress"],
                            env=env, start_new_session=True)
    out = tmp_path / "out" / "natural_language"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(out.glob("*.bin"))) < 3:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    survivors = {p.name: p.stat().st_mtime_ns for p in out.glob("*.bin")}
    assert survivors, "the run was killed before writing any shard"
    for name in survivors:
        Shard(out / name)  # every shard under its final name is complete
    assert not (out / "manifest.json").exists()

    assert main(["prepare", str(config_path), "--no-progress"]) == 0
    assert {p: (out / p).stat().st_mtime_ns for p in survivors} == survivors
    reference = tmp_path / "reference"
    prepare(load_config(PrepareConfig, data={**data, "output_dir": str(reference)}), progress=False)
    final = sorted(out.glob("*.bin"))
    assert [p.name for p in final] == [p.name for p in sorted((reference / "natural_language").glob("*.bin"))]
    assert all(p.read_bytes() == (reference / "natural_language" / p.name).read_bytes() for p in final)
    assert not list(out.glob(".*tmp*"))


def test_another_tokenizer_is_refused_on_existing_output(prepared, raw_corpus, tmp_path, spm_tokenizer_file):
    base, config, _, _ = prepared
    other = make_config(raw_corpus[0], base / "out", spm_tokenizer_file)
    with pytest.raises(DataError, match=r"manifest\.json: prepared with another tokenizer"):
        prepare(other, progress=False)


def test_vocabulary_too_large_for_uint16(raw_corpus, tmp_path):
    from tokenizers import Tokenizer as HFTokenizer, models

    big = HFTokenizer(models.WordLevel({f"w{i}": i for i in range(70000)} | {"</s>": 70000}, unk_token="w0"))
    big.save(str(tmp_path / "big.json"))
    config = make_config(raw_corpus[0], tmp_path / "out", tmp_path / "big.json", dtype="uint16")
    with pytest.raises(DataError, match=r"big\.json: vocabulary of 70001 tokens does not fit the uint16 shard dtype"):
        prepare(config, progress=False)
    assert make_config(raw_corpus[0], tmp_path / "o", tmp_path / "big.json").dtype == "auto"


def test_bad_rows_stop_the_run_when_not_allowed(tmp_path, prepared):
    _, config, _, _ = prepared
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "rows.jsonl").write_bytes(b'{"text": "good row"}\n{"text": broken\n')
    data = {"output_dir": str(tmp_path / "out"), "tokenizer": {"path": config.tokenizer.path},
            "datasets": {"d": {"sources": [{"path": str(raw)}]}}, "workers": 1}
    (raw / "empty.jsonl").write_bytes(b"")  # an empty file is a finished unit with no documents
    with pytest.raises(DataError, match=r"rows\.jsonl: bad rows \(bad_json: 1\)"):
        prepare(load_config(PrepareConfig, data={**data, "skip_bad_rows": False}), progress=False)
    manifest = prepare(load_config(PrepareConfig, data=data), progress=False)["d"]
    assert manifest["documents"] == 1 and manifest["sources"][0]["skipped"] == {"bad_json": 1}
    assert manifest["sources"][0]["files"] == 2


def test_cli_prepare_with_overrides_and_one_line_errors(tmp_path, prepared, capsys):
    _, config, _, _ = prepared
    config_path = tmp_path / "p.yaml"
    config_path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"),
                                           "tokenizer": {"path": config.tokenizer.path},
                                           "datasets": {"d": {"sources": [{"path": str(tmp_path / "missing")}]}}}))
    assert main(["prepare", str(config_path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing: source path does not exist" in err
    assert main(["prepare", str(config_path), "--no-progress", "workers=two"]) == 1
    assert "override 'workers=two': workers: must be int, got 'two'" in capsys.readouterr().err


def test_shard_format_and_corruption(tmp_path):
    tokens = np.array([5, 6, 2, 7, 2], dtype=np.uint16)
    write_shard(tmp_path / "s.bin", tokens, np.array([0, 3]))
    shard = Shard(tmp_path / "s.bin")
    assert shard.tokens.tolist() == [5, 6, 2, 7, 2] and shard.document(1).tolist() == [7, 2]
    raw = (tmp_path / "s.bin").read_bytes()
    assert raw[:8] == b"CLMTOKS\0" and len(raw) == 64 + 5 * 2 + 3 * 8
    (tmp_path / "t.bin").write_bytes(raw[:-3])
    with pytest.raises(ShardError, match=r"t\.bin: truncated or corrupt"):
        Shard(tmp_path / "t.bin")
    (tmp_path / "u.bin").write_bytes(b"garbage" * 20)
    with pytest.raises(ShardError, match=r"u\.bin: not a compactlm token shard"):
        Shard(tmp_path / "u.bin")


def test_litgpt_packed_files_are_read_without_their_padding(tmp_path):
    """lit-gpt's LITPKDS layout, spelled out: magic, version u64, dtype code u8, chunk size u64, tokens."""
    import struct

    chunk = np.full(16, 1, dtype=np.uint16)  # pre-filled with the separator (BOS = 1)
    chunk[:7] = [1, 10, 11, 2, 1, 12, 2]
    header = b"LITPKDS" + struct.pack("<Q", 1) + struct.pack("<B", 8) + struct.pack("<Q", 16)
    (tmp_path / "train_0.bin").write_bytes(header + chunk.tobytes())
    assert read_litpkds(tmp_path / "train_0.bin").tolist() == [1, 10, 11, 2, 1, 12, 2]
    (tmp_path / "bad.bin").write_bytes(b"LITPKDX" + header[7:])
    with pytest.raises(ShardError, match=r"bad\.bin: not a lit-gpt packed file"):
        read_litpkds(tmp_path / "bad.bin")


def test_a_prepared_dataset_carries_its_tokenizer_and_trains_after_a_move(prepared, tmp_path, monkeypatch):
    """Moved to another directory, with the original tokenizer gone and another working directory."""
    import shutil

    from compactlm.data.manifest import manifest_tokenizer, read_manifest
    from tests.conftest import tiny_train_config
    from compactlm.train.trainer import train

    base, config, manifests, _ = prepared
    original = Tokenizer(config.tokenizer.path)
    for name in ("natural_language", "code"):
        recorded = read_manifest(base / "out" / name)["tokenizer"]
        assert recorded["file"] == "tokenizer.json" and recorded["hash"] == original.hash
        assert Tokenizer(base / "out" / name / "tokenizer.json").hash == original.hash  # a byte-identical copy

    moved = tmp_path / "elsewhere" / "data"
    shutil.copytree(base / "out", moved)
    workdir = tmp_path / "another" / "cwd"
    workdir.mkdir(parents=True)
    monkeypatch.chdir(workdir)
    assert manifest_tokenizer(moved / "code") == moved / "code" / "tokenizer.json"
    relative = [Path("../../elsewhere/data/natural_language"), Path("../../elsewhere/data/code")]
    hidden = Path(config.tokenizer.path).rename(tmp_path / "original-tokenizer-out-of-the-way.json")
    try:
        last = train(tiny_train_config(relative, "run", **{"train.max_steps": 3, "eval_every": 3}),
                     console=lambda *a: None)
    finally:
        hidden.rename(config.tokenizer.path)
    assert last["step"] == 3 and last["val_loss"] > 0
    assert (workdir / "run" / "checkpoints" / "step-00000003" / "tokenizer.json").read_bytes() == \
        (moved / "natural_language" / "tokenizer.json").read_bytes()


def test_datasets_prepared_before_tokenizers_travelled_still_name_theirs(tiny_dataset, tmp_path):
    """Old manifests only recorded the tokenizer's path (relative to where `prepare` ran)."""
    import json
    import shutil

    from compactlm.data.manifest import manifest_tokenizer

    old = tmp_path / "old"
    shutil.copytree(tiny_dataset[0], old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["tokenizer"]["file"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert manifest_tokenizer(old) == Path(manifest["tokenizer"]["path"])


def test_control_token_strings_in_documents_stay_text_in_the_shards(tmp_path, bpe_tokenizer_file):
    import json

    docs = ["first </s> not an end", "<s><unk><|endoftext|> all literal", "plain"]
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    config = load_config(PrepareConfig, data={"output_dir": str(tmp_path / "out"), "workers": 1,
                                              "tokenizer": {"path": str(bpe_tokenizer_file)},
                                              "datasets": {"d": {"sources": [{"path": str(raw)}]}}})
    manifest = prepare(config, progress=False)["d"]
    tok = Tokenizer(bpe_tokenizer_file)
    shard_docs = shard_documents(tmp_path / "out" / "d", manifest)
    assert [tok.decode(d[:-1].tolist()) for d in shard_docs] == docs  # documents round-trip
    assert all(d[-1] == tok.eos_id and tok.eos_id not in d[:-1] for d in shard_docs)  # one EOS, at the end


def test_empty_documents_are_counted_not_fatal_even_without_skipping_bad_rows(tmp_path, bpe_tokenizer_file):
    import json

    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("one", "", "two")) + "{bad json\n")
    data = {"output_dir": str(tmp_path / "out"), "workers": 1, "skip_bad_rows": False,
            "tokenizer": {"path": str(bpe_tokenizer_file)}, "datasets": {"d": {"sources": [{"path": str(raw)}]}}}
    with pytest.raises(DataError, match=r"raw\.jsonl: bad rows \(bad_json: 1\)"):  # a bad row is still fatal
        prepare(load_config(PrepareConfig, data=data), progress=False)
    raw.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("one", "", "two")))
    shutil_out = tmp_path / "out2"
    manifest = prepare(load_config(PrepareConfig, data={**data, "output_dir": str(shutil_out)}), progress=False)["d"]
    assert manifest["documents"] == 2 and manifest["sources"][0]["skipped"] == {"empty": 1}
