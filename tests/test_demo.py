"""Pieces of `compactlm demo` that can be checked without its five minutes of training."""

import json
import math

import numpy as np
import pytest

from compactlm.data.mixture import Mixture, MixtureSource
from compactlm.demo import plot_losses, unigram_loss
from tests.conftest import png_size, write_dataset


def test_unigram_baseline_is_the_cross_entropy_of_token_frequencies(tmp_path):
    # Tokens 0..9 repeated: a uniform unigram distribution over 10 ids, so the loss is ln(10).
    directory = write_dataset(tmp_path / "d", 10_001, 0, shard_tokens=20_000)
    tokens = np.arange(10_001) % 10
    from compactlm.data.shards import write_shard

    write_shard(directory / "s-0.bin", tokens.astype(np.uint32), np.array([0]))
    mixture = Mixture([MixtureSource(str(directory))], seq_len=100, val_fraction=0.1)
    loss = unigram_loss(mixture, mixture.val_samples(), vocab_size=10)
    assert loss == pytest.approx(math.log(10), rel=1e-3)


def test_loss_plot_is_written(tmp_path):
    lines = [{"step": s, "loss": 8 - s / 10, "tokens": s * 100} for s in range(1, 30)]
    lines += [{"step": 10, "tokens": 1000, "val_loss": 7.0}, {"step": 20, "tokens": 2000, "val_loss": 6.2}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    figure = plot_losses(tmp_path, 7.5, tmp_path / "loss.png")
    assert png_size(tmp_path / "loss.png") == (figure.width, figure.height) == (960, 540)  # 8 x 4.5 in at 120 dpi
    assert figure.line("train loss") == ([s * 100 for s in range(1, 30)], [8 - s / 10 for s in range(1, 30)])
    assert figure.line("validation loss") == ([1000, 2000], [7.0, 6.2])
    assert figure.line(f"unigram baseline ({7.5:.2f})")[1] == [7.5, 7.5]
