"""Mixture loader throughput from packed shards: tokens/s delivered as [batch, seq_len + 1] tensors.

    .venv/bin/python bench/loader.py [--tokens 50000000] [--seq-len 2048] [--batch 8] [--batches 400]

Writes two datasets of random uint16 tokens (7:3 weights, as TinyLlama's mix) in 16M-token shards,
then times the loader with 0 and 2 DataLoader workers over the same global sample range.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from compactlm.data.mixture import Mixture, MixtureSource, batches
from compactlm.data.manifest import manifest_hash
from compactlm.data.shards import write_shard


def write_dataset(directory: Path, n_tokens: int, seed: int, shard_tokens: int = 1 << 24) -> None:
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    shards = []
    for k, start in enumerate(range(0, n_tokens, shard_tokens)):
        tokens = rng.integers(3, 32000, min(shard_tokens, n_tokens - start), dtype=np.uint16)
        write_shard(directory / f"s-{k:04d}.bin", tokens, np.array([0]))
        shards.append({"file": f"s-{k:04d}.bin", "tokens": len(tokens), "documents": 1})
    manifest = {"format": "compactlm-tokens", "version": 1, "dtype": "uint16", "shards": shards,
                "tokenizer": {"hash": "bench"}}
    manifest["hash"] = manifest_hash(manifest)
    (directory / "manifest.json").write_text(json.dumps(manifest))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=50_000_000, help="tokens per dataset")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(Path(tmp) / "nl", args.tokens, 0)
        write_dataset(Path(tmp) / "code", args.tokens, 1)
        mix = Mixture([MixtureSource(str(Path(tmp) / "nl"), 0.693584), MixtureSource(str(Path(tmp) / "code"), 0.306416)],
                      seq_len=args.seq_len, seed=0)
        print(f"{os.cpu_count()} cores; batch {args.batch} x {args.seq_len + 1} tokens, {args.batches} batches")
        for workers in (0, 2):
            loader = batches(mix, args.batch, start=10_000, num_workers=workers, num_batches=args.batches)
            start = time.perf_counter()
            n = sum(b.numel() for b in loader)
            seconds = time.perf_counter() - start
            print(f"workers={workers}: {n / seconds / 1e6:6.1f} M tokens/s ({seconds:.2f} s, worker start-up included)")


if __name__ == "__main__":
    main()
