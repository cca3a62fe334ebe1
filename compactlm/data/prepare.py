"""`compactlm prepare CONFIG.yaml`: raw corpora -> packed token shards + a manifest per dataset.

The main process streams every input file in a fixed order, cuts it into batches of raw records
and keeps a bounded window of batches in flight on a pool of worker processes, which parse,
filter and tokenise them; results come back in submission order, so the output does not depend on
the number of workers, and one large file is spread over all of them.

Each input file is a unit of work with its own shards (`SOURCE-FFFFF-KKKK.bin`) and a progress
record (`.progress/SOURCE-FFFFF.json`, rewritten atomically after every shard). A re-run skips
finished files, keeps the finished shards of a half-done file and continues after the records they
cover; a shard under its final name is always complete (temporary name, fsync, rename).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from compactlm.config.loader import load_config
from compactlm.data.manifest import MANIFEST, MANIFEST_FORMAT, has_manifest, read_manifest, write_manifest
from compactlm.data.readers import DataError, SourceConfig, list_files, parse_records, read_batches, record_format
from compactlm.data.shards import token_dtype, write_shard
from compactlm.fileio import atomic_write
from compactlm.tokenizer.tokenizer import Tokenizer


@dataclass
class TokenizerConfig:
    path: str = "tokenizer.json"  # tokenizer.model, tokenizer.json or a .gguf file
    train_vocab_size: int = 0  # > 0: train a byte-level BPE on the sources if `path` does not exist
    train_max_bytes: int = 50_000_000  # text sampled from the sources to train it


@dataclass
class DatasetConfig:
    sources: list[SourceConfig]  # the raw sources whose documents make up this dataset


@dataclass
class PrepareConfig:
    output_dir: str  # a directory per dataset is written here: shards, manifest.json, the tokenizer
    datasets: dict[str, DatasetConfig]  # name -> its sources; each becomes a dataset a mixture can weigh
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    workers: int = 0  # 0: one per core
    shard_tokens: int = 1 << 25  # a shard is closed once it holds this many tokens
    batch_bytes: int = 1 << 20  # raw bytes per batch handed to a worker
    dtype: str = "auto"  # auto (uint16 when the vocabulary fits), uint16 or uint32
    skip_bad_rows: bool = True  # False: a bad row stops the run with its file named


# ---- worker side ---------------------------------------------------------------------------------
_worker_tokenizer: Tokenizer | None = None
_TEST_DELAY = float(os.environ.get("COMPACTLM_TEST_BATCH_DELAY", "0"))  # lets tests kill a run mid-way


def _init_worker(tokenizer_path: str) -> None:
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    _worker_tokenizer = Tokenizer(tokenizer_path)


def _tokenize(records: list, fmt: str, spec: dict, dtype: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """One batch -> (tokens with EOS after every document, document lengths, skipped rows by reason)."""
    if _TEST_DELAY:
        time.sleep(_TEST_DELAY)
    skipped: Counter = Counter()
    texts = parse_records(records, fmt, spec, skipped)
    ids = _worker_tokenizer.encode_batch(texts)
    eos = _worker_tokenizer.eos_id
    lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
    tokens = np.empty(int(lengths.sum()), dtype=dtype)
    ends = np.cumsum(lengths)
    for doc, end in zip(ids, ends):
        tokens[end - len(doc) - 1:end - 1] = doc
    tokens[ends - 1] = eos
    return tokens, lengths, dict(skipped)


# ---- main side -----------------------------------------------------------------------------------
@dataclass
class _Unit:
    dataset: str
    source: SourceConfig
    index: int
    path: Path

    @property
    def stem(self) -> str:
        return f"{self.source.name}-{self.index:05d}"


@dataclass
class _UnitState:
    """What the progress record of one input file says."""

    shards: list[dict] = field(default_factory=list)
    records: int = 0  # raw records covered by the finished shards
    complete: bool = False


def prepare(config: PrepareConfig, progress: bool = True) -> dict[str, dict]:
    """Run the whole preparation; returns each dataset's manifest."""
    tokenizer = resolve_tokenizer(config)
    dtype = _shard_dtype(config, tokenizer)
    if tokenizer.eos_id is None:
        raise DataError(f"{tokenizer.path}: the tokenizer has no EOS token to end documents with")
    out = Path(config.output_dir)
    units = [_Unit(name, source, i, path) for name, dataset in config.datasets.items()
             for source in dataset.sources for i, path in enumerate(list_files(source))]
    _check_source_names(config)
    for name in config.datasets:
        _check_output(out / name, tokenizer)
    states = {id(u): _read_state(out / u.dataset, u, tokenizer) for u in units}
    todo = [u for u in units if not states[id(u)].complete]
    if todo:
        _run_units(todo, states, config, tokenizer, dtype, out, progress)
    return {name: _write_manifest(out / name, name, config, tokenizer, dtype,
                                  [(u, states[id(u)]) for u in units if u.dataset == name])
            for name in config.datasets}


def _check_source_names(config: PrepareConfig) -> None:
    for name, dataset in config.datasets.items():
        names = [s.name for s in dataset.sources]
        if len(set(names)) != len(names):
            raise DataError(f"dataset {name}: two sources share a name ({names}); give each a distinct `name`")


def _shard_dtype(config: PrepareConfig, tokenizer: Tokenizer) -> str:
    fitting = token_dtype(tokenizer.vocab_size).name
    if config.dtype == "auto":
        return fitting
    if config.dtype not in ("uint16", "uint32"):
        raise DataError(f"dtype {config.dtype!r}: choose auto, uint16 or uint32")
    if config.dtype == "uint16" and fitting == "uint32":
        raise DataError(f"{tokenizer.path}: vocabulary of {tokenizer.vocab_size} tokens does not fit the "
                        "uint16 shard dtype; use dtype: uint32 (or auto)")
    return config.dtype


def _check_output(directory: Path, tokenizer: Tokenizer) -> None:
    if has_manifest(directory):
        recorded = read_manifest(directory)["tokenizer"]["hash"]
        if recorded != tokenizer.hash:
            raise DataError(f"{directory / MANIFEST}: prepared with another tokenizer (hash {recorded[:12]}, this one "
                            f"{tokenizer.hash[:12]}); use a new output_dir")


def _progress_path(directory: Path, unit: _Unit) -> Path:
    return directory / ".progress" / f"{unit.stem}.json"


def _read_state(directory: Path, unit: _Unit, tokenizer: Tokenizer) -> _UnitState:
    path = _progress_path(directory, unit)
    if not path.is_file():
        return _UnitState()
    try:
        record = json.loads(path.read_text())
        if record["tokenizer_hash"] != tokenizer.hash or record["input"] != str(unit.path):
            raise DataError(f"{path}: left by a run with another tokenizer or input; use a new output_dir")
        if any(s["file"] and not (directory / s["file"]).is_file() for s in record["shards"]):
            return _UnitState()  # a finished shard went missing: redo the file
        return _UnitState(shards=record["shards"], records=record["records"], complete=record["complete"])
    except (ValueError, KeyError, TypeError) as exc:  # written atomically: only a hand-edited file lands here
        raise DataError(f"{path}: damaged progress record ({type(exc).__name__}); delete it to redo that "
                        "file") from None


def _save_state(directory: Path, unit: _Unit, state: _UnitState, tokenizer: Tokenizer) -> None:
    path = _progress_path(directory, unit)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"input": str(unit.path), "tokenizer_hash": tokenizer.hash, **asdict(state)}
    atomic_write(path, [json.dumps(payload, indent=2).encode()])


def _records_to_do(unit: _Unit, state: _UnitState, config: PrepareConfig):
    """The unit's batches that its finished shards do not cover yet."""
    skip = state.records
    for batch in read_batches(unit.path, unit.source, config.batch_bytes):
        if skip >= len(batch):
            skip -= len(batch)
            continue
        yield batch[skip:]
        skip = 0


class _ShardBuilder:
    """Collects one input file's tokenised batches and writes a shard every `shard_tokens` tokens."""

    def __init__(self, unit: _Unit, state: _UnitState, directory: Path, shard_tokens: int, dtype: str):
        self.unit, self.state, self.directory = unit, state, directory
        self.shard_tokens, self.dtype = shard_tokens, dtype
        self.tokens: list[np.ndarray] = []
        self.lengths: list[np.ndarray] = []
        self.n_tokens, self.records = 0, 0
        self.skipped: Counter = Counter()

    def add(self, tokens: np.ndarray, lengths: np.ndarray, skipped: dict, n_records: int) -> bool:
        self.tokens.append(tokens)
        self.lengths.append(lengths)
        self.n_tokens += len(tokens)
        self.records += n_records
        self.skipped.update(skipped)
        if self.n_tokens >= self.shard_tokens:
            self.flush()
            return True
        return False

    def flush(self) -> None:
        if not self.records:
            return
        name = f"{self.unit.stem}-{len(self.state.shards):04d}.bin"
        tokens = np.concatenate(self.tokens) if self.tokens else np.empty(0, dtype=self.dtype)
        lengths = np.concatenate(self.lengths) if self.lengths else np.empty(0, dtype=np.int64)
        if len(tokens):
            write_shard(self.directory / name, tokens, np.concatenate([[0], np.cumsum(lengths)[:-1]]))
        # A stretch of rows that were all skipped still counts as progress, with no shard file.
        self.state.shards.append({"file": name if len(tokens) else None, "tokens": int(len(tokens)),
                                  "documents": int(len(lengths)), "records": self.records,
                                  "skipped": dict(self.skipped)})
        self.state.records += self.records
        self.tokens, self.lengths, self.n_tokens, self.records, self.skipped = [], [], 0, 0, Counter()


def _run_units(units, states, config, tokenizer, dtype, out: Path, progress: bool) -> None:
    workers = config.workers or os.cpu_count() or 1
    # fork starts workers in milliseconds (forkserver re-imports everything in each: ~0.25 s); the
    # workers only parse and tokenise, so the parent's state they inherit is harmless.
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    window = 4 * workers
    started, n_tokens = time.perf_counter(), 0
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(str(tokenizer.path),)) as pool:
        bar = _progress_bar(progress)
        pending: deque = deque()
        builder: _ShardBuilder | None = None

        def drain(limit: int) -> None:
            nonlocal builder, n_tokens
            while len(pending) > limit:
                unit, n_records, result = pending.popleft()
                if builder is None:
                    builder = _ShardBuilder(unit, states[id(unit)], out / unit.dataset, config.shard_tokens, dtype)
                if result is None:  # end of this unit's file (possibly one with nothing left to do)
                    builder.flush()
                    builder.state.complete = True
                    _save_state(out / unit.dataset, unit, builder.state, tokenizer)
                    builder = None
                    continue
                tokens, lengths, skipped = result.result()
                if skipped and not config.skip_bad_rows:
                    bad = {k: v for k, v in skipped.items() if not k.startswith("set:") and k != "empty"}
                    if bad:
                        raise DataError(f"{unit.path}: bad rows ({_format_counts(bad)}); set skip_bad_rows: true "
                                        "to skip and count them")
                if builder.add(tokens, lengths, skipped, n_records):
                    _save_state(out / unit.dataset, unit, builder.state, tokenizer)
                n_tokens += len(tokens)
                if bar is not None:
                    bar.update(len(lengths))
                    rate = n_tokens / max(time.perf_counter() - started, 1e-9)
                    bar.set_postfix_str(f"{n_tokens:,} tokens, {rate:,.0f} tokens/s", refresh=False)

        for unit in units:
            (out / unit.dataset).mkdir(parents=True, exist_ok=True)
            fmt, spec = record_format(unit.path), unit.source.filter_spec()
            for batch in _records_to_do(unit, states[id(unit)], config):
                pending.append((unit, len(batch), pool.submit(_tokenize, batch, fmt, spec, dtype)))
                drain(window)
            pending.append((unit, 0, None))
        drain(0)
    if bar is not None:
        bar.close()


def _progress_bar(enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no monitor thread: workers are forked while the bar is live
    return tqdm(unit=" docs", desc="prepare", dynamic_ncols=True)


def _format_counts(counts: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))


def _write_manifest(directory: Path, name: str, config: PrepareConfig, tokenizer: Tokenizer, dtype: str,
                    unit_states: list) -> dict:
    shards, sources = [], {}
    for unit, state in unit_states:
        entry = sources.setdefault(unit.source.name, {"name": unit.source.name, "kind": unit.source.kind,
                                                       "path": unit.source.path, "files": 0, "documents": 0,
                                                       "tokens": 0, "skipped": Counter()})
        entry["files"] += 1
        for shard in state.shards:
            entry["documents"] += shard["documents"]
            entry["tokens"] += shard["tokens"]
            entry["skipped"].update(shard["skipped"])
            if shard["file"]:
                shards.append({"file": shard["file"], "tokens": shard["tokens"], "documents": shard["documents"]})
    for entry in sources.values():
        entry["skipped"] = dict(sorted(entry["skipped"].items()))
    manifest = {
        "format": MANIFEST_FORMAT, "version": 1, "name": name, "dtype": dtype,
        # The tokenizer travels with the data (`file`, beside the manifest); `path` records its origin.
        "tokenizer": {"kind": tokenizer.kind, "hash": tokenizer.hash, "vocab_size": tokenizer.vocab_size,
                      "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id, "path": str(tokenizer.path),
                      "file": tokenizer.save_model_file(directory).name},
        "documents": sum(s["documents"] for s in sources.values()),
        "tokens": sum(s["tokens"] for s in sources.values()),
        "sources": list(sources.values()),
        "shards": shards,
        "config": asdict(config),
    }
    return write_manifest(directory, manifest)


# ---- tokenizer -----------------------------------------------------------------------------------
def resolve_tokenizer(config: PrepareConfig) -> Tokenizer:
    """The configured tokenizer; trained on the sources first when asked and not there yet."""
    path = Path(config.tokenizer.path)
    if path.exists():
        return Tokenizer(path)
    if config.tokenizer.train_vocab_size <= 0:
        raise DataError(f"{path}: tokenizer not found (set tokenizer.train_vocab_size to train one)")
    from compactlm.tokenizer.tokenizer import train_bpe

    sources = [s for d in config.datasets.values() for s in d.sources]
    return train_bpe(_sample_texts(sources, config.tokenizer.train_max_bytes), config.tokenizer.train_vocab_size,
                     path)


def _sample_texts(sources: list[SourceConfig], max_bytes: int):
    """Up to max_bytes of text, taken evenly from every source (files in order), for tokenizer training."""
    per_source = max_bytes // max(len(sources), 1)
    for source in sources:
        budget, spec = per_source, source.filter_spec()
        for path in list_files(source):
            for batch in read_batches(path, source, 1 << 20):
                for text in parse_records(batch, record_format(path), spec, Counter()):
                    yield text
                    budget -= len(text)
                    if budget <= 0:
                        break
                if budget <= 0:
                    break
            if budget <= 0:
                break


def load_prepare_config(path: str, overrides: list[str] = ()) -> PrepareConfig:
    """Read a prepare config (relative paths in it are relative to the working directory)."""
    return load_config(PrepareConfig, path, overrides)
