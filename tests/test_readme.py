"""The README's pipeline commands, run in order exactly as written, on a fresh copy of the repository.

Slow (about two minutes on two cores: it prepares the demo corpus and trains 60 steps), and kept in
the suite: it is what a new user types after `make demo`.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[list[str]]:
    """The bash block under "## The pipeline", one command per line, comments dropped."""
    text = (REPO / "README.md").read_text()
    section = text.split("## The pipeline", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = [shlex.split(line, comments=True) for line in block.splitlines()]
    return [c for c in commands if c]


def test_the_readme_block_is_what_this_test_runs():
    commands = readme_commands()
    assert [c[:2] for c in commands] == [["compactlm", "prepare"], ["compactlm", "config"], ["compactlm", "train"],
                                         ["compactlm", "train"], ["compactlm", "generate"], ["compactlm", "convert"],
                                         ["compactlm", "eval"], ["compactlm", "convert"], ["compactlm", "eval"],
                                         ["compactlm", "finetune"], ["compactlm", "generate"], ["compactlm", "eval"]]


@pytest.mark.slow
def test_readme_pipeline_commands_run_as_written(tmp_path):
    for name in ("configs", "data", "tasks"):
        shutil.copytree(REPO / name, tmp_path / name)
    outputs = []
    for command in readme_commands():
        assert command[0] == "compactlm"
        done = subprocess.run([sys.executable, "-m", "compactlm", *command[1:]], cwd=tmp_path, capture_output=True,
                              text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, (command, done.stderr[-2000:])
        outputs.append(done.stdout)
    run = tmp_path / "out" / "runs" / "mine"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000040", "step-00000060"]
    assert "resumed from" in outputs[3] and outputs[4].startswith("def main(")
    assert (tmp_path / "out" / "hf-model" / "model.safetensors").is_file()
    assert "bits per byte" in outputs[6]
    assert (tmp_path / "out" / "mine-q8_0.gguf").is_file() and "bits per byte" in outputs[8]
    sft = tmp_path / "out" / "runs" / "mine-sft" / "checkpoints" / "step-00000020"
    assert "chat_template" in (sft / "tokenizer_config.json").read_text() and outputs[10].strip()
    assert "assistant-token loss" in outputs[11] and "end their turn" in outputs[11]
