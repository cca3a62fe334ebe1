"""The mixture loader: determinism, disjoint coverage across ranks and workers, weights, exact resume."""

from collections import Counter

import numpy as np
import pytest
import torch

from compactlm.data.mixture import Mixture, MixtureSource, batches, permute, rank_indices
from compactlm.data.readers import DataError
from tests.conftest import write_dataset

SEQ = 16


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    base = tmp_path_factory.mktemp("mix")
    nl = write_dataset(base / "nl", 16 * 700 + 1, 0)
    code = write_dataset(base / "code", 16 * 300 + 1, 10_000_000)
    return nl, code


def block_ids(samples: np.ndarray) -> list[tuple[int, int]]:
    """(dataset, block) of each sample, read back from the token values."""
    return [(int(s[0] >= 10_000_000), int(s[0] % 10_000_000) // SEQ) for s in samples]


def test_permutation_is_a_bijection():
    for n in (1, 2, 3, 5, 64, 1000, 4097):
        for key in (0, 7):
            out = permute(np.arange(n), n, key)
            assert sorted(out.tolist()) == list(range(n))
    assert permute(np.arange(1000), 1000, 1).tolist() != permute(np.arange(1000), 1000, 2).tolist()


def test_windows_are_seq_plus_one_tokens_and_cross_shards(two_datasets):
    mix = Mixture([MixtureSource(str(two_datasets[0]))], seq_len=SEQ, seed=0)
    samples = mix.samples(range(700))
    assert samples.shape == (700, SEQ + 1)
    assert (np.diff(samples, axis=1) == 1).all()  # contiguous tokens, also across shard borders
    assert sorted(s[0] for s in samples) == [b * SEQ for b in range(700)]  # one epoch = every block once


def test_same_seed_same_stream_other_seed_other_stream(two_datasets):
    sources = [MixtureSource(str(p), w) for p, w in zip(two_datasets, (0.7, 0.3))]
    a = Mixture(sources, SEQ, seed=3).samples(range(500))
    b = Mixture(sources, SEQ, seed=3).samples(range(500))
    c = Mixture(sources, SEQ, seed=4).samples(range(500))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_mixture_follows_the_weights_over_100k_samples(two_datasets):
    sources = [MixtureSource(str(p), w) for p, w in zip(two_datasets, (0.693584, 0.306416))]
    datasets, _ = Mixture(sources, SEQ, seed=0).locate(range(100_000))
    share = np.bincount(datasets) / 100_000
    assert abs(share[0] - 0.693584) < 0.01 and abs(share[1] - 0.306416) < 0.01


def test_each_dataset_epoch_covers_every_block_once_and_reshuffles(two_datasets):
    sources = [MixtureSource(str(p), w) for p, w in zip(two_datasets, (0.5, 0.5))]
    mix = Mixture(sources, SEQ, seed=1)
    ids = block_ids(mix.samples(range(1200)))
    code = [b for d, b in ids if d == 1]
    assert len(code) >= 600
    assert sorted(code[:300]) == list(range(300)) and sorted(code[300:600]) == list(range(300))
    assert code[:300] != code[300:600]  # a new order each epoch


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_ranks_and_workers_read_disjoint_slices_covering_the_stream(two_datasets, world_size, num_workers):
    sources = [MixtureSource(str(p), w) for p, w in zip(two_datasets, (0.7, 0.3))]
    mix = Mixture(sources, SEQ, seed=5)
    batch_size, steps = 4, 10
    seen = []
    for rank in range(world_size):
        loader = batches(mix, batch_size, start=0, rank=rank, world_size=world_size, num_workers=num_workers,
                         num_batches=steps)
        rank_samples = torch.cat(list(loader)).numpy()
        assert len(rank_samples) == batch_size * steps
        expected = np.concatenate([rank_indices(0, b, batch_size, rank, world_size) for b in range(steps)])
        assert np.array_equal(rank_samples, mix.samples(expected))
        seen += expected.tolist()
    total = batch_size * steps * world_size
    assert sorted(seen) == list(range(total))  # no sample twice, none skipped
    reference = block_ids(mix.samples(range(total)))
    assert Counter(block_ids(mix.samples(seen))) == Counter(reference)


def test_resume_continues_exactly_also_with_another_rank_count(two_datasets):
    sources = [MixtureSource(str(p), w) for p, w in zip(two_datasets, (0.7, 0.3))]
    straight = Mixture(sources, SEQ, seed=9).samples(range(3000))
    # Stop after 2000 samples; a new process rebuilds the mixture from the saved state.
    state = Mixture(sources, SEQ, seed=9).state(next_index=2000)
    resumed = Mixture(sources, SEQ, seed=9)
    start = resumed.check_state(state)
    assert np.array_equal(resumed.samples(range(start, start + 1000)), straight[2000:])
    # Two ranks before, three after: together they read exactly the next 1000 samples.
    got = np.concatenate([resumed.samples(rank_indices(start, b, 1, r, 3)) for b in range(334) for r in range(3)])
    assert np.array_equal(got[:1000], straight[2000:])


def test_validation_blocks_are_held_out(two_datasets):
    sources = [MixtureSource(str(p), w) for p, w in zip(two_datasets, (0.7, 0.3))]
    mix = Mixture(sources, SEQ, seed=0, val_fraction=0.1)
    assert mix.n_val.tolist() == [70, 30] and mix.n_train.tolist() == [630, 270]
    train = set(block_ids(mix.samples(range(5000))))
    val = set(block_ids(mix.val_samples()))
    assert len(val) == 100 and not train & val
    assert {d for d, _ in block_ids(mix.val_samples(limit=10))} == {0, 1}


def test_one_datasets_validation_blocks_do_not_depend_on_the_weights(two_datasets):
    """What the ladder scores text and code on apart: the same blocks as that dataset's own mixture holds out."""
    for d, path in enumerate(two_datasets):
        alone = Mixture([MixtureSource(str(path), 1.0)], SEQ, seed=0, val_fraction=0.1).val_samples(limit=20)
        for weights in ((0.7, 0.3), (1.0, 0.0)):
            mix = Mixture([MixtureSource(str(p), w) for p, w in zip(two_datasets, weights)], SEQ, seed=0,
                          val_fraction=0.1)
            assert np.array_equal(mix.dataset_val_samples(d, 20), alone)
    assert len(mix.dataset_val_samples(1)) == 30  # all of them, without a limit


def test_state_of_another_mixture_is_refused(two_datasets, tmp_path):
    sources = [MixtureSource(str(p), w) for p, w in zip(two_datasets, (0.7, 0.3))]
    state = Mixture(sources, SEQ, seed=1).state(100)
    with pytest.raises(DataError, match="ckpt: data seed differs"):
        Mixture(sources, SEQ, seed=2).check_state(state, "ckpt")
    with pytest.raises(DataError, match="ckpt: mixture weights differ"):
        Mixture([MixtureSource(s.path, w) for s, w in zip(sources, (0.5, 0.5))], SEQ, seed=1).check_state(state, "ckpt")
    other = write_dataset(tmp_path / "other", 16 * 300 + 1, 10_000_000, shard_tokens=500)
    with pytest.raises(DataError, match="ckpt: data manifests differs"):
        Mixture([sources[0], MixtureSource(str(other), 0.3)], SEQ, seed=1).check_state(state, "ckpt")


def test_shards_of_another_tokenizer_are_refused(two_datasets):
    with pytest.raises(DataError, match=r"manifest\.json: prepared with another tokenizer than the model's"):
        Mixture([MixtureSource(str(two_datasets[0]))], SEQ, tokenizer_hash="something-else")


def test_litgpt_prepared_directory_is_a_dataset(tmp_path):
    import struct

    tokens = np.arange(3, 3 + 200, dtype=np.uint16)
    padded = np.concatenate([tokens, np.ones(56, dtype=np.uint16)])
    header = b"LITPKDS" + struct.pack("<QBQ", 1, 8, 256)
    (tmp_path / "train_slimpajama_0.bin").write_bytes(header + padded.tobytes())
    mix = Mixture([MixtureSource(str(tmp_path))], seq_len=SEQ)
    assert mix.n_train.tolist() == [(200 - 1) // SEQ]
    assert 1 not in mix.samples(range(int(mix.n_train[0]))).ravel()  # the BOS padding is never trained on
