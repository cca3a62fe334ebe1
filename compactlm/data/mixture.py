"""A deterministic, resumable mixture of prepared datasets.

Global sample *i* is a pure function of (seed, the datasets' manifests, weights, seq_len, i):

1. **Which dataset.** Samples are dealt in periods of `PERIOD` slots; each dataset owns a share of
   the slots proportional to its weight (largest remainder), and the slots of period p are shuffled
   with a generator seeded by (seed, p). So over any stretch the mixture is within 1/PERIOD of the
   weights, yet the order looks random.
2. **Which block of it.** The k-th sample drawn from dataset d is block pi_{d,e}(k mod n_d) of epoch
   e = k div n_d, where pi is a keyed pseudo-random permutation of the dataset's n_d training blocks
   (a Feistel network, so nothing of size n_d is ever materialised): every block once per epoch,
   reshuffled each epoch.
3. **The tokens.** Block b is tokens [b*L, b*L + L + 1) of the dataset's token stream (its shards
   concatenated in manifest order): inputs are the first L, targets the last L, every token a target
   exactly once per epoch. The last blocks of each dataset are held out for validation.

Ranks and data-loader workers share the one global stream: rank r takes samples
start + r, start + r + world, ..., so the samples consumed after each optimizer step are exactly
[0, step x global batch), whatever the number of ranks. The loader's state is that index.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compactlm.data.manifest import MANIFEST, has_manifest, read_manifest
from compactlm.data.readers import DataError
from compactlm.data.shards import Shard, read_litpkds

PERIOD = 4096


@dataclass
class MixtureSource:
    path: str  # a directory prepared by `compactlm prepare`, or of lit-gpt LITPKDS `*.bin` files
    weight: float = 1.0  # share of the mixture (weights are normalised to sum to 1)


class TokenStream:
    """One prepared dataset as a single token sequence spread over memory-mapped shards."""

    def __init__(self, directory: str | Path, tokenizer_hash: str | None = None):
        self.directory = Path(directory)
        if has_manifest(self.directory):
            manifest = read_manifest(self.directory)
            if tokenizer_hash is not None and manifest["tokenizer"]["hash"] != tokenizer_hash:
                raise DataError(f"{self.directory / MANIFEST}: prepared with another tokenizer than the model's "
                                f"({manifest['tokenizer']['hash'][:12]} vs {tokenizer_hash[:12]}); prepare it again")
            self.hash = manifest["hash"]
            self.parts = [Shard(self.directory / s["file"]).tokens for s in manifest["shards"]]
            for part, entry in zip(self.parts, manifest["shards"]):
                if len(part) != entry["tokens"]:
                    raise DataError(f"{self.directory / entry['file']}: {len(part)} tokens, manifest says {entry['tokens']}")
        else:
            files = sorted(self.directory.glob("*.bin"))
            if not files:
                raise DataError(f"{self.directory}: no {MANIFEST} and no lit-gpt *.bin files; prepare the data "
                                "with `compactlm prepare CONFIG` and list its output directories in data.datasets")
            self.parts = [read_litpkds(f) for f in files]  # lit-gpt data as the original project prepared it
            self.hash = hashlib.sha256(json.dumps([(f.name, len(p)) for f, p in zip(files, self.parts)]).encode()).hexdigest()
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.n_tokens = int(self.offsets[-1])

    def window(self, start: int, length: int) -> np.ndarray:
        """tokens[start:start+length] of the concatenated stream (copied, possibly across shards)."""
        part = int(np.searchsorted(self.offsets, start, side="right")) - 1
        local = start - int(self.offsets[part])
        chunk = self.parts[part][local:local + length]
        if len(chunk) == length:
            return np.asarray(chunk)
        pieces, need = [chunk], length - len(chunk)
        while need > 0:
            part += 1
            piece = self.parts[part][:need]
            pieces.append(piece)
            need -= len(piece)
        return np.concatenate(pieces)


# ---- keyed permutation -------------------------------------------------------------------------
def _mix(x: np.ndarray, key: int) -> np.ndarray:
    """A 64-bit mixing function (splitmix64 finaliser) of x and key."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(key)) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


@functools.lru_cache(maxsize=1024)
def _seed_key(*parts) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little")


def _round_keys(key: int, rounds: int) -> tuple[int, ...]:
    return tuple(_seed_key(key, r) for r in range(rounds))


def permute(index: np.ndarray, n: int, key: int, rounds: int = 4) -> np.ndarray:
    """A bijection of [0, n) evaluated at `index`: a Feistel network on the next power of 4, cycle-walked."""
    half_bits = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
    low = np.uint64((1 << half_bits) - 1)
    shift = np.uint64(half_bits)
    keys = _round_keys(key, rounds)

    def feistel(x):
        left, right = x >> shift, x & low
        for k in keys:
            left, right = right, left ^ (_mix(right, k) & low)
        return (left << shift) | right

    x = np.asarray(index, dtype=np.uint64)
    out = feistel(x)
    outside = out >= np.uint64(n)
    while outside.any():  # cycle-walking: fewer than 4 steps expected, since n > 4^half_bits / 4
        out[outside] = feistel(out[outside])
        outside = out >= np.uint64(n)
    return out.astype(np.int64)


class Mixture:
    """Weighted, deterministic sampling of (seq_len + 1)-token blocks from several token streams."""

    def __init__(self, sources: list[MixtureSource], seq_len: int, seed: int = 0, val_fraction: float = 0.0,
                 tokenizer_hash: str | None = None):
        if not sources:
            raise DataError("a mixture needs at least one dataset")
        weights = np.array([s.weight for s in sources], dtype=np.float64)
        with np.errstate(over="ignore"):
            total = weights.sum()
        # .inf passes the config's ">= 0" check and 1e308 + 1e308 overflows: neither leaves a share to deal
        if (weights < 0).any() or not 0 < total < np.inf:
            raise DataError(f"data.datasets weights must be non-negative with a finite sum above 0, "
                            f"got {weights.tolist()}")
        self.sources, self.seq_len, self.seed = sources, seq_len, seed
        self.weights = weights / weights.sum()
        self.streams = [TokenStream(s.path, tokenizer_hash) for s in sources]
        n_blocks = np.array([(s.n_tokens - 1) // seq_len if s.n_tokens > seq_len else 0 for s in self.streams])
        self.n_val = np.ceil(n_blocks * val_fraction).astype(np.int64) if val_fraction > 0 else np.zeros_like(n_blocks)
        self.n_train = n_blocks - self.n_val
        for source, n, w in zip(sources, self.n_train, self.weights):
            if n <= 0 and w > 0:
                raise DataError(f"{source.path}: too few tokens for one training block of {seq_len + 1}")
        self.slots = self._slot_counts()
        self._period_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    # ---- schedule -------------------------------------------------------------------------------
    def _slot_counts(self) -> np.ndarray:
        exact = self.weights * PERIOD
        counts = np.floor(exact).astype(np.int64)
        order = np.argsort(-(exact - counts), kind="stable")
        counts[order[:PERIOD - counts.sum()]] += 1
        return counts

    def _period(self, p: int) -> tuple[np.ndarray, np.ndarray]:
        """(dataset of each slot, how many earlier slots of the period hold the same dataset)."""
        if p not in self._period_cache:
            if len(self._period_cache) > 8:
                self._period_cache.clear()
            slots = np.repeat(np.arange(len(self.slots)), self.slots)
            np.random.Generator(np.random.PCG64(_seed_key(self.seed, "period", p))).shuffle(slots)
            rank = np.empty(PERIOD, dtype=np.int64)
            for d in range(len(self.slots)):
                where = slots == d
                rank[where] = np.arange(where.sum())
            self._period_cache[p] = (slots, rank)
        return self._period_cache[p]

    def locate(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Global sample indices -> (dataset, block within that dataset's token stream)."""
        indices = np.asarray(indices, dtype=np.int64)
        datasets = np.empty_like(indices)
        blocks = np.empty_like(indices)
        for j, i in enumerate(indices.tolist()):
            p, slot = divmod(i, PERIOD)
            slots, rank = self._period(p)
            d = int(slots[slot])
            k = p * int(self.slots[d]) + int(rank[slot])  # how many samples dataset d gave before this one
            epoch, position = divmod(k, int(self.n_train[d]))
            datasets[j] = d
            blocks[j] = permute(np.array([position]), int(self.n_train[d]), _seed_key(self.seed, d, epoch))[0]
        return datasets, blocks

    def samples(self, indices) -> np.ndarray:
        """Global sample indices -> int64 array [len(indices), seq_len + 1]."""
        datasets, blocks = self.locate(indices)
        return self._windows(zip(datasets.tolist(), blocks.tolist()))

    def _windows(self, pairs) -> np.ndarray:
        """(dataset, block) pairs -> int64 array [len(pairs), seq_len + 1]."""
        pairs = list(pairs)
        out = np.empty((len(pairs), self.seq_len + 1), dtype=np.int64)
        for row, (d, b) in enumerate(pairs):
            out[row] = self.streams[d].window(b * self.seq_len, self.seq_len + 1)
        return out

    def val_samples(self, limit: int | None = None) -> np.ndarray:
        """The held-out blocks of every dataset, interleaved in proportion to the weights, in a fixed order."""
        pairs = []
        for d in np.argsort(-self.weights, kind="stable").tolist():
            first = int(self.n_train[d])
            share = int(self.n_val[d]) if limit is None else min(int(self.n_val[d]),
                                                                  max(1, round(limit * self.weights[d])))
            pairs += [(d, first + j) for j in range(share)]
        return self._windows(pairs if limit is None else pairs[:limit])

    def dataset_val_samples(self, dataset: int, limit: int | None = None) -> np.ndarray:
        """One dataset's held-out blocks (the first `limit`), whatever the weights."""
        first, count = int(self.n_train[dataset]), int(self.n_val[dataset])
        return self._windows([(dataset, first + j) for j in range(count if limit is None else min(count, limit))])

    def train_token_counts(self, vocab_size: int) -> list[np.ndarray]:
        """How often each token id occurs in each dataset's training blocks (held-out blocks excluded)."""
        counts = []
        for stream, n_train in zip(self.streams, self.n_train):
            end = int(n_train) * self.seq_len
            total = np.zeros(vocab_size, dtype=np.int64)
            for part, offset in zip(stream.parts, stream.offsets[:-1]):
                take = max(0, min(len(part), end - int(offset)))
                total += np.bincount(np.asarray(part[:take]), minlength=vocab_size)[:vocab_size]
            counts.append(total)
        return counts

    # ---- resume ---------------------------------------------------------------------------------
    def state(self, next_index: int) -> dict:
        return {"seed": self.seed, "seq_len": self.seq_len, "weights": self.weights.tolist(),
                "manifests": [s.hash for s in self.streams], "next_index": int(next_index)}

    def check_state(self, state: dict, source: str = "checkpoint") -> int:
        """The next global sample index of a saved state, after checking it belongs to this mixture."""
        mine = self.state(0)
        if not isinstance(state, dict):
            raise DataError(f"{source}: the data state is not a mapping")
        for key in ("seed", "seq_len", "manifests"):
            if state.get(key) != mine[key]:
                raise DataError(f"{source}: data {key} differs from this run's ({state.get(key)!r} vs {mine[key]!r})")
        weights = state.get("weights")
        if not (isinstance(weights, list) and len(weights) == len(mine["weights"])
                and all(isinstance(w, float) for w in weights) and np.allclose(weights, mine["weights"])):
            raise DataError(f"{source}: mixture weights differ from this run's ({weights!r} vs {mine['weights']})")
        next_index = state.get("next_index")
        if not isinstance(next_index, int) or isinstance(next_index, bool) or next_index < 0:
            raise DataError(f"{source}: data next_index must be a sample count, got {next_index!r}")
        return next_index


def rank_indices(start: int, batch: int, batch_size: int, rank: int, world_size: int) -> np.ndarray:
    """Global sample indices of a rank's `batch`-th micro-batch, counting from global index `start`."""
    local = np.arange(batch * batch_size, (batch + 1) * batch_size, dtype=np.int64)
    return start + local * world_size + rank


def batches(mixture: Mixture, batch_size: int, start: int = 0, rank: int = 0, world_size: int = 1,
            num_workers: int = 0, num_batches: int | None = None):
    """A torch DataLoader of one rank's micro-batches [batch_size, seq_len + 1] (int64).

    Worker w of W builds micro-batches w, w + W, ...; the DataLoader returns them round-robin, i.e.
    in order, so the stream is the same for any number of workers.
    """
    import torch
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    class _RankBatches(IterableDataset):
        def __iter__(self):
            info = get_worker_info()
            b, step = (info.id, info.num_workers) if info is not None else (0, 1)
            while num_batches is None or b < num_batches:
                yield torch.from_numpy(mixture.samples(rank_indices(start, b, batch_size, rank, world_size)))
                b += step

    return DataLoader(_RankBatches(), batch_size=None, num_workers=num_workers,
                      persistent_workers=False, multiprocessing_context="fork" if num_workers else None)
