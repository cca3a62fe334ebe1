"""compactlm.config.train: one resolution of a run, shared by the trainer, the planner and the ladder."""

from pathlib import Path

import pytest

from compactlm.cli import main
from compactlm.config.train import TrainConfig, load_train_config, resolve_run, result_defining
from compactlm.errors import ConfigError
from compactlm.tokenizer.tokenizer import Tokenizer
from compactlm.train.plan import setup_from_train_config

REPO = Path(__file__).resolve().parents[1]


def train_configs() -> list[Path]:
    """Every train config shipped in configs/ (ladder, prepare and finetune configs are other kinds)."""
    from compactlm.commands import config_kind

    found = [path for path in sorted((REPO / "configs").glob("*.yaml")) if config_kind(str(path), None) == "train"]
    assert {p.name for p in found} >= {"demo.yaml", "tinyllama-1.1b.yaml"}
    return found


def on_tiny_data(path: Path, tiny_dataset, *overrides: str) -> TrainConfig:
    """The config as shipped, its datasets pointed at the test's prepared data (the real corpora are not here)."""
    datasets = "[{path: %s, weight: 0.7}, {path: %s, weight: 0.3}]" % tiny_dataset
    return load_train_config(path, [f"data.datasets={datasets}", *overrides])


@pytest.mark.parametrize("path", train_configs(), ids=lambda p: p.name)
@pytest.mark.parametrize("ranks", [1, 2, 16])
def test_plan_and_resolution_agree_on_vocabulary_accumulation_and_model(path, ranks, tiny_dataset):
    config = on_tiny_data(path, tiny_dataset)
    vocab = Tokenizer(tiny_dataset[0] / "tokenizer.json").vocab_size
    if config.train.global_batch % (config.train.micro_batch * ranks):  # both refuse it, in the same words
        with pytest.raises(ConfigError) as from_resolve:
            resolve_run(config, ranks)
        with pytest.raises(ConfigError) as from_plan:
            setup_from_train_config(config, ranks)
        assert str(from_plan.value) == str(from_resolve.value) and "not a multiple" in str(from_plan.value)
        return
    run = resolve_run(config, ranks)
    model, setup = setup_from_train_config(config, ranks)
    assert model == run.model and model.vocab_size == vocab == 512
    assert setup.accumulation == run.accumulation == config.train.global_batch // (config.train.micro_batch * ranks)
    assert (setup.micro_batch, setup.seq_len, setup.ranks) == (config.train.micro_batch, config.data.seq_len, ranks)


@pytest.mark.parametrize("path", train_configs(), ids=lambda p: p.name)
def test_the_trainer_runs_what_resolution_says(path, tiny_dataset, tmp_path):
    from compactlm.train.trainer import Trainer

    # The shipped recipe at a size this machine can build (the vocabulary and batch are the config's).
    config = on_tiny_data(path, tiny_dataset, f"run_dir={tmp_path / 'run'}", "device=cpu", "model.preset=tinyllama-1m",
                          "data.seq_len=32", "tensorboard=false")
    trainer = Trainer(config, console=lambda *a: None)
    run = resolve_run(config)
    model, setup = setup_from_train_config(config, 1)
    assert trainer.run == run
    assert trainer.model_config == model == run.model and trainer.module.config.vocab_size == 512
    assert trainer.accumulation == setup.accumulation == run.accumulation
    assert (trainer.max_steps, trainer.decay_steps) == (run.max_steps, run.decay_steps)
    # The special ids come from the tokenizer, in one place, and reach the model config.
    tok = trainer.tokenizer
    assert (model.bos_id, model.eos_id) == (tok.bos_id, tok.eos_id)


def test_a_batch_that_does_not_divide_fails_the_same_way_in_plan_and_train(tiny_dataset, tmp_path, capsys):
    path = REPO / "configs" / "demo.yaml"
    datasets = "data.datasets=[{path: %s, weight: 0.7}, {path: %s, weight: 0.3}]" % tiny_dataset
    args = [str(path), datasets, "train.global_batch=30", f"run_dir={tmp_path / 'run'}"]
    assert main(["plan", *args]) == 1
    plan_error = capsys.readouterr().err.strip()
    assert main(["train", *args]) == 1
    train_error = capsys.readouterr().err.strip()
    assert plan_error == train_error == ("error: train.global_batch 30 is not a multiple of micro_batch x ranks "
                                         "(16 x 1 = 16); change train.micro_batch, train.global_batch or the "
                                         "number of ranks")
    assert not (tmp_path / "run").exists()  # refused before anything was written
    with pytest.raises(ConfigError, match=r"\(16 x 3 = 48\)"):  # the rank count enters the message
        resolve_run(on_tiny_data(path, tiny_dataset), world_size=3)


def test_steps_come_from_tokens_when_max_steps_is_unset(tiny_dataset):
    path = REPO / "configs" / "tinyllama-1.1b.yaml"
    run = resolve_run(on_tiny_data(path, tiny_dataset), 16)
    assert run.tokens_per_step == 1024 * 2048
    assert run.max_steps == run.decay_steps == -(-3_000_000_000_000 // (1024 * 2048))  # 1,430,512 steps, as TinyLlama
    planned = resolve_run(on_tiny_data(path, tiny_dataset), 16, vocab_size=32000)
    assert planned.model.vocab_size == 32000 and planned.tokenizer_path is None


def test_result_defining_keys_leave_out_only_what_cannot_change_a_run():
    full = TrainConfig()
    kept = result_defining(full)
    assert set(kept) == {"seed", "device", "model", "data", "optim", "train", "peak_flops"}
    assert "micro_batch" not in kept["train"] and "kernels" not in kept["train"]
    assert kept["train"]["global_batch"] == 1024 and kept["optim"]["lr"] == 4e-4
