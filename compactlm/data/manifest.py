"""`manifest.json`: what a prepared dataset directory holds, and the tokenizer that travels with it.

A dataset directory written by `compactlm prepare` is self-contained: its shards, its manifest, and
a copy of the tokenizer it was tokenised with (`tokenizer.json` or `tokenizer.model`, named in the
manifest), so it can be moved, copied or read from another working directory and still train.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from compactlm.data.readers import DataError
from compactlm.fileio import atomic_write, read_json

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "compactlm-tokens"


def manifest_hash(manifest: dict) -> str:
    """Identity of a prepared dataset's token stream: the tokenizer and the shards in order."""
    key = json.dumps([manifest["tokenizer"]["hash"], manifest["dtype"],
                      [(s["file"], s["tokens"]) for s in manifest["shards"]]])
    return hashlib.sha256(key.encode()).hexdigest()


def has_manifest(directory: str | Path) -> bool:
    return (Path(directory) / MANIFEST).is_file()


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise DataError(f"{directory}: no {MANIFEST}; prepare the data with `compactlm prepare`")
    manifest = read_json(path, DataError)
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(f"{path}: not a compactlm dataset manifest")
    problem = _manifest_problem(manifest)
    if problem:  # a hand-edited or damaged manifest: readers index into these entries
        raise DataError(f"{path}: {problem}")
    return manifest


def _manifest_problem(manifest: dict) -> str | None:
    """What is wrong with the entries that readers rely on, if anything."""
    tokenizer, shards = manifest.get("tokenizer"), manifest.get("shards")
    if not isinstance(tokenizer, dict) or not isinstance(tokenizer.get("hash"), str):
        return "tokenizer.hash is missing or not a string"
    if not isinstance(manifest.get("hash"), str):
        return "hash is missing or not a string"
    if not isinstance(shards, list):
        return "shards is missing or not a list"
    for i, shard in enumerate(shards):
        if not isinstance(shard, dict) or not _is_file_name(shard.get("file")):
            return f"shards[{i}].file is missing or not a file name"
        tokens = shard.get("tokens")
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
            return f"shards[{i}].tokens is missing or not a count of tokens"
    return None


def _is_file_name(name) -> bool:
    """A plain name of a file beside the manifest: no directories, no NUL (open() refuses it), no line
    break (messages name the file on one line)."""
    return isinstance(name, str) and bool(name) and name.isprintable() and Path(name).name == name


def write_manifest(directory: Path, manifest: dict) -> dict:
    """Stamp the manifest with its hash and write it atomically."""
    manifest["hash"] = manifest_hash(manifest)
    atomic_write(Path(directory) / MANIFEST, [json.dumps(manifest, indent=2).encode()])
    return manifest


def manifest_tokenizer(directory: str | Path) -> Path:
    """The tokenizer a prepared dataset was made with.

    The copy stored beside the manifest; manifests written before datasets carried their tokenizer
    name only the path it was read from (relative to the working directory of `prepare`).
    """
    directory = Path(directory)
    if not has_manifest(directory):
        raise DataError(f"{directory}: no {MANIFEST}; set data.tokenizer for lit-gpt data, or prepare the "
                        "data with `compactlm prepare`")
    recorded = read_manifest(directory)["tokenizer"]
    if recorded.get("file"):
        if not _is_file_name(recorded["file"]):
            raise DataError(f"{directory / MANIFEST}: tokenizer.file is not a file name")
        return directory / recorded["file"]
    if not isinstance(recorded.get("path"), str) or not recorded["path"]:
        raise DataError(f"{directory / MANIFEST}: names no tokenizer (tokenizer.file or tokenizer.path); "
                        "set data.tokenizer")
    return Path(recorded["path"])
