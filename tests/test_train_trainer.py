"""The trainer: schedule, accumulation, exact resume after SIGKILL, refusals, non-finite losses, export."""

import json
import math
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import compactlm
from compactlm.cli import main
from compactlm.data.readers import DataError
from compactlm.model.transformer import lm_loss
from compactlm.checkpoint.layout import complete_checkpoints as checkpoint_dirs
from compactlm.config.train import OptimSection
from compactlm.train.optim import lr_at
from compactlm.train.trainer import Trainer, TrainingError, train
from tests.conftest import losses, quiet, run_cli, tiny_train_config, write_config


def final_weights(run_dir: Path) -> dict:
    return load_file(checkpoint_dirs(run_dir)[-1] / "model.safetensors")


def test_learning_rate_schedule_per_optimizer_step():
    optim = OptimSection(lr=4e-4, min_lr=4e-5, warmup_steps=2000)
    assert lr_at(0, optim, 100_000) == pytest.approx(4e-4 / 2000)
    assert lr_at(999, optim, 100_000) == pytest.approx(4e-4 * 1000 / 2000)
    assert lr_at(1999, optim, 100_000) == pytest.approx(4e-4)
    assert lr_at(2000, optim, 100_000) == pytest.approx(4e-4)
    assert lr_at(51_000, optim, 100_000) == pytest.approx((4e-4 + 4e-5) / 2)
    assert lr_at(100_000, optim, 100_000) == pytest.approx(4e-5)
    assert lr_at(150_000, optim, 100_000) == pytest.approx(4e-5)


@pytest.mark.parametrize("shape, decay", [
    ("linear", [0.75, 0.5, 0.25, 0.0]),
    ("cosine", [0.5 * (1 + math.cos(math.pi * p)) for p in (0.25, 0.5, 0.75, 1.0)]),
    ("1-sqrt", [1 - math.sqrt(p) for p in (0.25, 0.5, 0.75, 1.0)])])
def test_wsd_learning_rate_per_step(shape, decay):
    """Warm-up 2, stable at lr, then the last 20% (4 of 20 steps) down to min_lr, reached at the last step."""
    optim = OptimSection(lr=1e-3, min_lr=1e-4, warmup_steps=2, schedule="wsd", decay_fraction=0.2, decay_shape=shape)
    expected = [5e-4, 1e-3] + [1e-3] * 14 + [1e-4 + f * 9e-4 for f in decay] + [1e-4]
    assert [lr_at(s, optim, 20) for s in range(21)] == pytest.approx(expected, rel=1e-12)
    # the stable phase does not depend on the run's length: a longer run shares it step for step
    assert [lr_at(s, optim, 50) for s in range(16)] == [lr_at(s, optim, 20) for s in range(16)]


def test_a_cooldown_branch_equals_the_uninterrupted_wsd_run(tiny_dataset, tmp_path):
    """One stable WSD run, branched at step 18 into a 24-step budget, gives bit for bit the losses and
    weights of a WSD run trained for 24 steps straight (Hägele et al. 2024's cooldowns)."""
    wsd = {"optim.schedule": "wsd", "optim.decay_fraction": 0.25, "optim.warmup_steps": 3, "checkpoint_every": 6,
           "keep_checkpoints": 10}
    train(tiny_train_config(tiny_dataset, tmp_path / "straight", **wsd, **{"train.max_steps": 24}), console=quiet)
    train(tiny_train_config(tiny_dataset, tmp_path / "stable", **wsd, **{"train.max_steps": 40}), console=quiet)
    stable_18 = tmp_path / "stable" / "checkpoints" / "step-00000018"
    lines = []
    train(tiny_train_config(tiny_dataset, tmp_path / "branch", **wsd, **{"train.max_steps": 24,
                                                                       "train.init_from": str(stable_18)}),
          console=lines.append)
    assert any("branched from" in line and "at step 18" in line for line in lines)
    straight, stable, branch = (losses(tmp_path / r) for r in ("straight", "stable", "branch"))
    assert {s: stable[s] for s in range(1, 19)} == {s: straight[s] for s in range(1, 19)}  # the shared stable phase
    assert branch == {s: straight[s] for s in range(19, 25)}  # only the decay is run, and it is the same
    ours, reference = final_weights(tmp_path / "branch"), final_weights(tmp_path / "straight")
    assert all(torch.equal(ours[k], reference[k]) for k in reference)


def test_init_from_weights_only_continues_pretraining_on_other_data(tiny_dataset, tmp_path):
    train(tiny_train_config(tiny_dataset, tmp_path / "base", **{"train.max_steps": 10}), console=quiet)
    source = checkpoint_dirs(tmp_path / "base")[-1]
    config = tiny_train_config(tiny_dataset, tmp_path / "more", **{
        "train.max_steps": 5, "train.init_from": str(source), "train.init_weights_only": "true",
        "data.datasets": "[{path: %s, weight: 1}]" % tiny_dataset[1]})
    trainer = Trainer(config, console=quiet)
    assert trainer.step == 0
    weights = load_file(source / "model.safetensors")
    assert all(torch.equal(p.detach(), weights[n]) for n, p in trainer.module.named_parameters() if n in weights)
    trainer.fit()
    assert sorted(losses(tmp_path / "more")) == [1, 2, 3, 4, 5]
    with pytest.raises(TrainingError, match="its step 10 is not before train.max_steps 10"):
        Trainer(tiny_train_config(tiny_dataset, tmp_path / "late", **{"train.max_steps": 10,
                                                                     "train.init_from": str(source)}), console=quiet)


def test_learning_rate_changes_once_per_optimizer_step_not_per_micro_batch(tiny_dataset, tmp_path):
    config = tiny_train_config(tiny_dataset, tmp_path / "run", **{"train.micro_batch": 2, "train.max_steps": 8})
    train(config, console=quiet)
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "lr" in r]
    assert [r["step"] for r in steps] == list(range(1, 9))
    assert [r["lr"] for r in steps] == pytest.approx([lr_at(s, config.optim, 8) for s in range(8)])
    assert steps[-1]["tokens"] == 8 * 8 * 32
    # Peak memory on every step line (CPU: the process's peak RSS), so each run checks `compactlm plan`.
    import resource

    peaks = [r["peak_memory"] for r in steps]
    assert peaks == sorted(peaks) and peaks[0] > 50 * 2**20  # non-decreasing; torch alone takes more than 50 MiB
    assert peaks[-1] <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def test_gradient_accumulation_is_equivalent_to_a_big_batch(tiny_dataset, tmp_path):
    """Micro-batch 2 x 4 accumulation and 8 x 1 give the same loss and the same gradient to apply.

    Gradients are compared rather than Adam's update: Adam divides by |g|, so for coordinates whose
    gradient is ~0 a rounding difference flips the update's sign, whatever the accumulation.
    """
    seen = {}
    for micro in (2, 8):
        config = tiny_train_config(tiny_dataset, tmp_path / f"m{micro}",
                                   **{"train.micro_batch": micro, "train.max_steps": 1})
        trainer = Trainer(config, console=quiet)
        grads = {}

        def capture(*args, _trainer=trainer, _grads=grads, **kwargs):
            _grads.update({n: p.grad.clone() for n, p in _trainer.model.named_parameters()})

        trainer.optimizer.step = capture
        seen[micro] = (trainer.fit()["loss"], grads)
        assert trainer.accumulation == 8 // micro
    assert seen[2][0] == pytest.approx(seen[8][0], rel=1e-6)
    for name, grad in seen[8][1].items():
        torch.testing.assert_close(seen[2][1][name], grad, rtol=1e-4, atol=1e-7)


@pytest.fixture(scope="module")
def straight_run(tiny_dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("straight") / "run"
    train(tiny_train_config(tiny_dataset, run), console=quiet)
    return run


@pytest.mark.parametrize("kill_during", ["training", "checkpoint-write"])
def test_sigkill_and_resume_is_bit_identical(tiny_dataset, tmp_path, straight_run, kill_during):
    config = write_config(tiny_train_config(tiny_dataset, tmp_path / "run"), tmp_path / "train.yaml")
    rng = random.Random(kill_during)
    env = {"COMPACTLM_TEST_CHECKPOINT_DELAY": "0.5"} if kill_during == "checkpoint-write" else {}
    proc = run_cli(["train", str(config)], env)
    metrics = tmp_path / "run" / "metrics.jsonl"
    target = rng.randint(7, 30)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if kill_during == "training" and metrics.is_file() and len(metrics.read_text().splitlines()) >= target:
            break
        if kill_during == "checkpoint-write" and list((tmp_path / "run" / "checkpoints").glob(".step-*.tmp-*")) \
                if (tmp_path / "run" / "checkpoints").is_dir() else False:
            if len(checkpoint_dirs(tmp_path / "run")) >= 1:
                break
        time.sleep(0.005)
    assert proc.poll() is None, proc.stdout.read().decode()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(losses(tmp_path / "run"))
    assert killed_at < 40
    resumed = run_cli(["train", str(config), "--resume"])
    output = resumed.communicate(timeout=300)[0].decode()
    assert resumed.returncode == 0, output
    assert "resumed from" in output
    assert losses(tmp_path / "run") == losses(straight_run)  # every step, bit for bit
    ours, reference = final_weights(tmp_path / "run"), final_weights(straight_run)
    assert all(torch.equal(ours[k], reference[k]) for k in reference)
    assert not list((tmp_path / "run" / "checkpoints").glob(".*"))  # no half-written leftovers


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_checkpoints_and_stops_with_the_conventional_exit_code(tiny_dataset, tmp_path, signum, code):
    """Ctrl-C (SIGINT) and SIGTERM: a checkpoint, one line "stopped: ...", exit 128 + the signal number."""
    config = write_config(tiny_train_config(tiny_dataset, tmp_path / "run", **{"train.max_steps": 100000,
                                                                                "checkpoint_every": 100000}),
                          tmp_path / "train.yaml")
    proc = run_cli(["train", str(config)])
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.01)
    proc.send_signal(signum)
    output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == code
    assert f"stopped: stopped by signal {int(signum)}" in output and "continue with --resume" in output
    assert "error:" not in output and "Traceback" not in output
    (checkpoint,) = checkpoint_dirs(tmp_path / "run")
    assert compactlm.from_pretrained(checkpoint).config.n_layer == 2


def test_resume_refuses_another_model_or_data(tiny_dataset, tmp_path):
    train(tiny_train_config(tiny_dataset, tmp_path / "run", **{"train.max_steps": 5}), console=quiet)
    with pytest.raises(TrainingError, match=r"step-00000005: checkpoint model config differs .*n_layer: 2 -> 3"):
        Trainer(tiny_train_config(tiny_dataset, tmp_path / "run", **{"model.n_layer": 3}), resume=True, console=quiet)
    with pytest.raises(DataError, match=r"train_state\.pt: data seed differs"):
        Trainer(tiny_train_config(tiny_dataset, tmp_path / "run", **{"data.seed": 8}), resume=True, console=quiet)
    with pytest.raises(TrainingError, match=r"model config differs .*max_seq_len: 32 -> 16"):
        Trainer(tiny_train_config(tiny_dataset, tmp_path / "run", **{"data.seq_len": 16}), resume=True, console=quiet)
    with pytest.raises(DataError, match=r"train_state\.pt: mixture weights differ"):
        Trainer(tiny_train_config(tiny_dataset, tmp_path / "run", **{"data.datasets": "[{path: %s, weight: 1}, "
                                                                    "{path: %s, weight: 1}]" % tiny_dataset}),
                resume=True, console=quiet)


def test_non_finite_losses_are_skipped_then_stop_the_run(tiny_dataset, tmp_path, monkeypatch):
    import compactlm.train.objective as train_module

    real_loss, calls = train_module.lm_loss, {"n": 0}

    def flaky_loss(model, batch, **options):
        calls["n"] += 1
        loss = real_loss(model, batch, **options)
        step = (calls["n"] - 1) // 2 + 1  # two micro-batches per step
        return loss * float("nan") if step == 3 or step >= 6 else loss

    monkeypatch.setattr(train_module, "lm_loss", flaky_loss)
    config = tiny_train_config(tiny_dataset, tmp_path / "run", **{"train.max_nonfinite": 3})
    trainer = Trainer(config, console=quiet)
    with pytest.raises(TrainingError, match=r"3 non-finite steps in a row at step 8; stopped with checkpoint"):
        trainer.fit()
    assert trainer.nonfinite_total == 4 and trainer.step == 7
    (checkpoint,) = checkpoint_dirs(tmp_path / "run")[-1:]
    state = torch.load(checkpoint / "train_state.pt", weights_only=True)
    assert state["nonfinite_total"] == 4
    weights = load_file(checkpoint / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_trainer_checkpoint_converts_to_hf_and_matches_transformers(tiny_dataset, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    train(tiny_train_config(tiny_dataset, tmp_path / "run", **{"train.max_steps": 5}), console=quiet)
    checkpoint = checkpoint_dirs(tmp_path / "run")[-1]
    assert main(["convert", "to-hf", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "hf")]) == 0
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    model = compactlm.from_pretrained(checkpoint)
    tokenizer = compactlm.load_tokenizer(checkpoint)
    ids = torch.tensor([tokenizer.encode("def parse(text):\n    return text.split()")])
    with torch.no_grad():
        assert (reference(ids).logits - model(ids)).abs().max().item() <= 1e-5
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    assert hf_tok("Hello world", add_special_tokens=False)["input_ids"] == tokenizer.encode("Hello world")


def test_validation_reports_loss_perplexity_and_bits_per_byte(tiny_dataset, tmp_path):
    last = train(tiny_train_config(tiny_dataset, tmp_path / "run", **{"train.max_steps": 20}), console=quiet)
    assert last["val_ppl"] == pytest.approx(math.exp(last["val_loss"]))
    assert 0 < last["val_bpb"] < last["val_loss"] / math.log(2)  # more than one byte per token
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_bf16_autocast_trains_with_float32_master_weights(tiny_dataset, tmp_path):
    config = tiny_train_config(tiny_dataset, tmp_path / "run", **{"train.precision": "bf16", "train.max_steps": 30})
    trainer = Trainer(config, console=quiet)
    last = trainer.fit()
    first = losses(tmp_path / "run")[1]
    assert trainer.amp_dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert last["loss"] < first - 0.5


def test_resume_before_the_first_checkpoint_logs_every_step_once(tiny_dataset, tmp_path):
    """A run killed before its first checkpoint restarts from scratch: its logged steps are dropped."""
    run_dir = tmp_path / "run"
    config = tiny_train_config(tiny_dataset, run_dir, **{"train.max_steps": 6, "checkpoint_every": 100})
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 9.0}) + "\n" for s in (1, 2, 3)))
    train(config, resume=True, console=quiet)
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert 9.0 not in losses(run_dir).values()


def test_document_masking_trains_and_validates_with_the_same_attention(tiny_dataset, tmp_path):
    # blocks of 256 tokens: long enough that batches hold document boundaries (EOS)
    steps = {"train.max_steps": 6, "eval_every": 6, "checkpoint_every": 6, "data.seq_len": 256}
    plain = train(tiny_train_config(tiny_dataset, tmp_path / "plain", **steps), console=quiet)
    config = tiny_train_config(tiny_dataset, tmp_path / "masked", **steps, **{"data.document_mask": "true",
                                                                           "data.document_positions": "restart"})
    trainer = Trainer(config, console=quiet)
    options = trainer.objective.loss_options
    assert options["document_eos"] == trainer.model_config.eos_id is not None and options["restart_positions"]
    # validation scores its blocks with the training loss options, not plain causal attention
    samples = trainer.validator.samples
    with torch.no_grad():
        masked_loss = lm_loss(trainer.module.eval(), samples, **options).item()
        causal_loss = lm_loss(trainer.module, samples, fused=options["fused"]).item()
    assert trainer.validate()["val_loss"] == pytest.approx(masked_loss, rel=1e-5)
    assert abs(masked_loss - causal_loss) > 1e-4
    trainer.module.train()
    masked = trainer.fit()
    # the same data and initial weights: the losses differ only through the attention
    assert losses(tmp_path / "masked") != losses(tmp_path / "plain")
    assert math.isfinite(masked["val_loss"]) and masked["val_loss"] != plain["val_loss"]
