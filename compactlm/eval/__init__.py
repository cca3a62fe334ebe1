"""Evaluation: an lm-evaluation-harness backend, the TinyLlama suites, evolution over checkpoints,
perplexity and bits per byte.

Submodules import lm-eval (the `eval` extra: `pip install "compactlm[eval]"`) only when used:
- `harness.py`     the `compactlm` lm-eval model (packed shared contexts, rolling windows, generation)
- `tasks.py`       suites, local tasks, running lm-eval on one checkpoint, the headline metric
- `results.py`     result tables and JSON, written atomically
- `evolution.py`   every checkpoint of a run: cached scores, the table, plots against tokens seen
- `perplexity.py`  perplexity and bits per byte of text files
- `command.py`     `compactlm eval`; `lm_eval_cli.py` / `lm_eval_hook.py`: lm-eval's own command line
"""
