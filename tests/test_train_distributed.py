"""Data parallel training on the CPU with gloo, launched as users launch it (torchrun / --nproc).

The reference is one process with micro-batch 4; the distributed runs use 2 (or 3) ranks with
micro-batch 2 at the same global batch of 12 sequences, so each optimizer step sees the same samples.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from compactlm.config.loader import to_dict
from compactlm.checkpoint.layout import complete_checkpoints as checkpoint_dirs, is_sharded
from tests.conftest import tiny_train_config

STEPS = 20
TOLERANCE = 1e-5


def write_config(tiny_dataset, run_dir: Path, **overrides) -> Path:
    settings = {"train.global_batch": 12, "train.micro_batch": 2, "train.max_steps": STEPS,
                "train.lr_decay_steps": STEPS, "checkpoint_every": 10, "keep_checkpoints": 5, "eval_every": 100}
    config = tiny_train_config(tiny_dataset, run_dir, **{**settings, **overrides})
    path = run_dir.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(to_dict(config)))
    return path


def run_train(config: Path, nproc: int, *overrides: str, resume: bool = False) -> str:
    """`compactlm train` in 1 process, or under torchrun with nproc ranks (via the --nproc shorthand)."""
    command = [sys.executable, "-m", "compactlm", "train", str(config), *overrides,
               *(["--nproc", str(nproc)] if nproc > 1 else []), *(["--resume"] if resume else [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def step_losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def assert_same_trajectory(run_dir: Path, reference: dict[int, float]) -> None:
    losses = step_losses(run_dir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    worst = max(abs(losses[s] - reference[s]) for s in reference)
    assert worst <= TOLERANCE, f"largest per-step loss difference {worst:.2e}"
    assert losses[STEPS] < losses[1] - 0.5  # it trained


@pytest.fixture(scope="module")
def reference(tiny_dataset, tmp_path_factory):
    """One process, micro-batch 4 (accumulation 3), 20 steps: losses and run directory."""
    run_dir = tmp_path_factory.mktemp("dist") / "single"
    run_train(write_config(tiny_dataset, run_dir, **{"train.micro_batch": 4}), 1)
    return step_losses(run_dir), run_dir


@pytest.mark.parametrize("parallelism", ["fsdp", "ddp"])
def test_two_ranks_match_one_process_at_the_same_global_batch(tiny_dataset, tmp_path, reference, parallelism):
    run_dir = tmp_path / parallelism
    output = run_train(write_config(tiny_dataset, run_dir, **{"train.parallelism": parallelism}), 2)
    assert f"{parallelism} over 2 ranks" in output
    assert_same_trajectory(run_dir, reference[0])
    last = checkpoint_dirs(run_dir)[-1]
    assert is_sharded(last) == (parallelism == "fsdp")  # auto format: sharded under FSDP, full under DDP


def test_sharded_checkpoint_resumes_on_one_then_three_ranks(tiny_dataset, tmp_path, reference):
    """Save on 2 ranks (FSDP, sharded, written in the background), resume on 1, then on 3."""
    run_dir = tmp_path / "resharded"
    config = write_config(tiny_dataset, run_dir, checkpoint_every=4)
    run_train(config, 2, "train.max_steps=10")
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step-00000004", "step-00000008", "step-00000010"]
    assert all(is_sharded(p) for p in checkpoint_dirs(run_dir))
    # Resume from step 8, written in the background while steps 9 and 10 trained.
    shutil.rmtree(checkpoint_dirs(run_dir)[-1])
    output = run_train(config, 1, "train.max_steps=15", resume=True)
    assert "resumed from" in output and "step 8," in output and "sharded checkpoint" in output
    assert not is_sharded(checkpoint_dirs(run_dir)[-1])  # one process writes the full format
    output = run_train(config, 3, "train.checkpoint_format=sharded", resume=True)
    assert "step 15" in output and "fsdp over 3 ranks" in output
    assert_same_trajectory(run_dir, reference[0])


def test_consolidated_sharded_checkpoint_loads_in_transformers(tiny_dataset, tmp_path, reference):
    """A 2-rank sharded checkpoint -> one HF directory; logits equal the single-process run's weights."""
    transformers = pytest.importorskip("transformers")
    import compactlm
    from compactlm.cli import main

    run_dir = tmp_path / "export"
    run_train(write_config(tiny_dataset, run_dir), 2, "train.max_steps=10")
    sharded = checkpoint_dirs(run_dir)[-1]
    assert is_sharded(sharded) and not (sharded / "model.safetensors").exists()
    assert main(["convert", "to-hf", "--checkpoint", str(sharded), "--out", str(tmp_path / "hf")]) == 0
    assert main(["convert", "consolidate", "--checkpoint", str(sharded), "--out", str(tmp_path / "one")]) == 0

    single = next(p for p in checkpoint_dirs(reference[1]) if p.name == "step-00000010")
    expected = compactlm.from_pretrained(single)
    tokens = torch.randint(0, expected.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", torch_dtype=torch.float32).eval()
    with torch.no_grad():
        want = expected(tokens)
        assert (hf_model(tokens).logits - want).abs().max().item() <= TOLERANCE
        assert (compactlm.from_pretrained(tmp_path / "one")(tokens) - want).abs().max().item() <= TOLERANCE


def test_doctored_dcp_metadata_is_refused_not_executed(tiny_dataset, tmp_path, reference):
    """DCP's metadata is a pickle: loading it must not run code (like torch.load(weights_only=True))."""
    import pickle

    import compactlm
    from compactlm.errors import CheckpointError

    run_dir = tmp_path / "evil"
    run_train(write_config(tiny_dataset, run_dir), 2, "train.max_steps=10")
    checkpoint = checkpoint_dirs(run_dir)[-1]
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (checkpoint / "dcp" / ".metadata").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(CheckpointError, match=r"\.metadata: unreadable or unsafe DCP metadata"):
        compactlm.from_pretrained(checkpoint)
    assert not marker.exists()
