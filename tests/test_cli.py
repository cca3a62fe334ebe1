"""The `compactlm` command's error boundary and run-directory protection, tried as a user would.

Every bad input ends in exactly one line `error: <file or key>: <problem>; <what to do>`, exit 1,
and the files the command could have touched are byte-identical afterwards.
"""

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from compactlm.cli import build_parser, main
from compactlm.config.loader import to_dict
from tests.conftest import fails_with_one_line, tiny_train_config, tree_hashes

REPO = Path(__file__).resolve().parents[1]


def write_yaml(config, path: Path) -> Path:
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    return path


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    """(config file, run dir) of a finished 10-step run with checkpoints at steps 5 and 10."""
    root = tmp_path_factory.mktemp("cli-run")
    config = write_yaml(tiny_train_config(tiny_dataset, root / "run", **{"train.max_steps": 10}), root / "train.yaml")
    assert main(["train", str(config)]) == 0
    return config, root / "run"


def copy_run(trained, tmp_path) -> tuple[Path, Path]:
    """A copy of the finished run (its own config and directory) to damage."""
    config, run = trained
    shutil.copytree(run, tmp_path / "run")
    data = yaml.safe_load(config.read_text())
    data["run_dir"] = str(tmp_path / "run")
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(data))
    return tmp_path / "train.yaml", tmp_path / "run"


# ---- configs and flags ------------------------------------------------------------------------------
@pytest.mark.parametrize("override, expected", [
    ("optim.lr=-1", "override 'optim.lr=-1': optim.lr: must be positive, got -1.0"),
    ("data.seq_len=0", "override 'data.seq_len=0': data.seq_len: must be at least 1, got 0"),
    ("train.max_steps=-5", "override 'train.max_steps=-5': train.max_steps: must be >= 0"),
    ("train.lr=3e-4", "override 'train.lr=3e-4': train.lr: unknown key; did you mean optim.lr?"),
    ("optim.lrr=3e-4", "optim.lrr: unknown key; did you mean optim.lr"),
    ("train.precision=fp8", "train.precision: 'fp8': choose auto, bf16, fp32"),
    ("keep_checkpoints=0", "keep_checkpoints: must be at least 1, got 0"),
    ("data.document_positions=reset", "data.document_positions: 'reset': choose continue, restart"),
    ("data.document_positions=restart", "data.document_positions: 'restart' needs data.document_mask: true"),
    ("train.micro_batch=three", "train.micro_batch: must be int, got 'three'"),
    ("optim=3", "override 'optim=3': optim: must be a mapping"),
    ("=3", "expected KEY=VALUE"),
])
def test_bad_overrides_are_blamed_on_the_command_line(trained, override, expected, capsys):
    config, run = trained
    fails_with_one_line(["train", str(config), override, "--resume"], expected, capsys, untouched=[run, config])


def test_bad_keys_in_the_file_are_blamed_on_the_file(trained, tmp_path, capsys):
    config, run = trained
    data = yaml.safe_load(config.read_text())
    data["train"]["lr"] = 1e-3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    fails_with_one_line(["train", str(bad)], f"{bad}: train.lr: unknown key; did you mean optim.lr?", capsys,
                        untouched=[run])


@pytest.mark.parametrize("content, expected", [
    (b"run_dir: caf\xe9\n", "not UTF-8 text (byte 12)"),
    (b"run_dir: [unclosed\n", "invalid YAML"),
    (b"- a list\n", "a config must be a mapping"),
])
def test_unreadable_config_files(tmp_path, content, expected, capsys):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    for command in (["train", str(path)], ["plan", str(path)], ["config", "show", str(path), "--kind", "train"]):
        fails_with_one_line(command, f"{path}: {expected}", capsys, untouched=[tmp_path])
    fails_with_one_line(["train", str(tmp_path / "nope.yaml")], "nope.yaml: config file not found", capsys)


def test_config_errors_come_before_heavy_imports(trained):
    """A typo costs a fraction of a second: neither torch nor the trainer is imported first."""
    config, _ = trained
    code = ("import sys; from compactlm.cli import main; rc = main(['train', sys.argv[1], 'train.lr=1']); "
            "print(rc, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.split() == ["1", "False"] and "did you mean optim.lr" in out.stderr


@pytest.mark.parametrize("flags, expected", [
    (["--max-new-tokens", "-1"], "--max-new-tokens -1: must be at least 1"),
    (["--temperature", "-1"], "--temperature -1.0: must be >= 0"),
    (["--top-p", "5"], "--top-p 5.0: must be in (0, 1]"),
    (["--top-k", "0"], "--top-k 0: must be at least 1"),
])
def test_generate_checks_its_sampling_flags_before_loading(trained, flags, expected, capsys):
    _, run = trained
    fails_with_one_line(["generate", "--checkpoint", str(run / "checkpoints" / "step-00000010"), "--prompt", "x",
                         *flags], expected, capsys)


def test_a_missing_checkpoint_reads_the_same_in_every_command(trained, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    expected = f"{missing}: no such checkpoint directory; give a checkpoint directory such as RUN_DIR/checkpoints/"
    fails_with_one_line(["generate", "--checkpoint", str(missing), "--prompt", "x"], expected, capsys)
    fails_with_one_line(["eval", "--checkpoint", str(missing), "--text", __file__], expected, capsys)
    fails_with_one_line(["convert", "to-hf", "--checkpoint", str(missing), "--out", str(tmp_path / "o")], expected,
                        capsys)
    _, run = trained  # a run directory instead of a checkpoint: the newest checkpoint is named
    fails_with_one_line(["generate", "--checkpoint", str(run), "--prompt", "x"],
                        f"this is a run directory; its newest checkpoint is {run}/checkpoints/step-00000010", capsys)


def test_convert_never_replaces_an_existing_output_unless_asked(trained, tmp_path, capsys):
    _, run = trained
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    checkpoint = str(run / "checkpoints" / "step-00000010")
    fails_with_one_line(["convert", "to-hf", "--checkpoint", checkpoint, "--out", str(out)],
                        "already exists; choose another --out, or pass --overwrite", capsys, untouched=[out])
    assert main(["convert", "to-hf", "--checkpoint", checkpoint, "--out", str(out), "--overwrite"]) == 0
    assert (out / "config.json").is_file() and not (out / "keep.txt").exists()


def test_unprepared_data_says_to_prepare_it(trained, tmp_path, capsys):
    config, _ = trained
    empty = tmp_path / "raw"
    empty.mkdir()
    fails_with_one_line(["train", str(config), f"data.datasets=[{{path: {empty}}}]", f"run_dir={tmp_path / 'r'}"],
                        "prepare the data with `compactlm prepare`", capsys)
    assert not (tmp_path / "r").exists()


# ---- resuming from damaged checkpoints ---------------------------------------------------------------
def test_resume_with_a_truncated_train_state(trained, tmp_path, capsys):
    config, run = copy_run(trained, tmp_path)
    state = run / "checkpoints" / "step-00000010" / "train_state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    fails_with_one_line(["train", str(config), "train.max_steps=12", "--resume"],
                        "train_state.pt: cannot load safely with weights_only=True", capsys, untouched=[run])


def test_resume_with_weights_of_another_shape(trained, tmp_path, capsys):
    config, run = copy_run(trained, tmp_path)
    weights = run / "checkpoints" / "step-00000010" / "model.safetensors"
    tensors = load_file(weights)
    tensors["layers.0.mlp.down.weight"] = torch.zeros(3, 5)
    del tensors["norm.weight"]
    save_file(tensors, weights)
    err = fails_with_one_line(["train", str(config), "train.max_steps=12", "--resume"],
                              "model.safetensors: does not match the model config; missing tensors: norm.weight; "
                              "wrong shapes: layers.0.mlp.down.weight (file [3, 5], model [64, 176])", capsys,
                              untouched=[run])
    assert len(err) < 400


# ---- run directories ----------------------------------------------------------------------------------
def test_a_fresh_run_never_lands_on_an_existing_one(trained, tmp_path, capsys):
    config, run = copy_run(trained, tmp_path)
    fails_with_one_line(["train", str(config), "train.max_steps=3"],
                        "already holds a run; continue it with --resume, replace it with --overwrite, or set "
                        "another run_dir=", capsys, untouched=[run])
    fails_with_one_line(["train", str(config), "--resume", "--overwrite"], "contradict each other", capsys,
                        untouched=[run])
    # --overwrite replaces it: the new run's metrics and checkpoints only
    assert main(["train", str(config), "train.max_steps=3", "--overwrite"]) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[0] == 1 and max(steps) == 3
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000003"]


def test_resume_with_nothing_left_to_do_says_so_and_touches_nothing(trained, capsys):
    config, run = trained
    before = tree_hashes(run)
    assert main(["train", str(config), "--resume"]) == 0
    assert "already trained to step 10 (train.max_steps 10); nothing to do" in capsys.readouterr().out
    assert tree_hashes(run) == before


def test_a_second_process_on_the_same_run_fails_fast_and_a_dead_ones_lock_is_no_obstacle(trained, tmp_path, capsys):
    config, run = copy_run(trained, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from compactlm.train.run_dir import claim; "
                               "claim(sys.argv[1], True, False); print('locked', flush=True); time.sleep(120)",
                               str(run)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        fails_with_one_line(["train", str(config), "train.max_steps=12", "--resume"],
                            f"{run}: in use by process {holder.pid} (a run is training there)", capsys,
                            untouched=[run / "checkpoints", run / "metrics.jsonl"])
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run / ".lock").is_file()  # left behind by the killed holder, and harmless:
    assert main(["train", str(config), "train.max_steps=12", "--resume"]) == 0
    assert (run / "checkpoints" / "step-00000012").is_dir()


# ---- the boundary itself -------------------------------------------------------------------------------
def test_an_unexpected_exception_is_reported_as_a_bug_and_debug_shows_it(monkeypatch, capsys):
    from compactlm import commands

    def broken(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(commands, "presets", broken)
    assert main(["presets"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error (ZeroDivisionError: division by zero)" in err
    assert "bug in compactlm" in err and "--debug" in err
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "presets"])


def test_version_and_help_for_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == "compactlm 0.1.0"
    undocumented = []

    def walk(parser, prefix):
        for action in parser._actions:
            if action.dest == "help":
                continue
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                for name, sub in action.choices.items():
                    walk(sub, f"{prefix} {name}")
            elif not action.help:
                undocumented.append(f"{prefix} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "compactlm")
    assert undocumented == []


def test_config_show_lists_every_key_with_type_default_and_meaning(capsys):
    from compactlm.commands import CONFIG_KINDS

    override = {"train": "optim.lr=1e-3", "finetune": "optim.lr=1e-3", "ladder": "jobs=1", "prepare": "workers=1"}
    for path, kind in (("configs/demo.yaml", "train"), ("configs/prepare-demo.yaml", "prepare"),
                       ("configs/ladder-demo.yaml", "ladder"), ("configs/sft-demo.yaml", "finetune")):
        assert main(["config", "show", str(REPO / path), override[kind]]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].startswith(f"# {kind} config")
        rows = [line for line in out[1:] if line.strip()]
        assert all("  # " in r and r.split("  # ", 1)[1].strip() for r in rows), [r for r in rows if "  # " not in r]
        assert len(rows) >= 8
    assert sorted(CONFIG_KINDS) == ["finetune", "ladder", "prepare", "train"]
    assert main(["config", "show", str(REPO / "configs/demo.yaml"), "optim.lr=1e-3"]) == 0
    line = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("optim.lr "))
    assert "float" in line and "0.001" in line and "(default 0.0004)" in line and "peak learning rate" in line
    assert main(["config", "show"]) == 0  # the defaults, without a file
    assert "train.global_batch" in capsys.readouterr().out
    # a section given in part keeps the fine-tuning defaults for the rest (not OptimSection's own)
    assert main(["config", "show", str(REPO / "configs/sft-demo.yaml"), "optim.lr=1e-3"]) == 0
    rows = {r.split()[0]: r for r in capsys.readouterr().out.splitlines()[1:] if r.strip()}
    assert "0.001" in rows["optim.lr"] and "(default 0.0001)" in rows["optim.lr"]
    assert rows["finetune.method"].split()[2] == '"sft"' and "every weight" in rows["finetune.adapter"]
