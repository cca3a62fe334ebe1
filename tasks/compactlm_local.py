"""Loaders for compactlm's local lm-eval tasks: the jsonl file beside each YAML, no download.

lm-eval calls a task's `custom_dataset` with the task's metadata and `dataset_kwargs`; `file`
names the jsonl file, relative to this directory.
"""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load_jsonl(file: str, split: str = "test", **_ignored):
    import datasets

    path = HERE / file
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})
