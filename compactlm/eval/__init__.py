"""Evaluation: an lm-evaluation-harness backend, the TinyLlama suites, evolution over checkpoints,
perplexity and bits per byte.

Submodules import lm-eval (the `eval` extra: `pip install "compactlm[eval]"`) only when used:
`compactlm.eval.harness` (the `compactlm` lm-eval model), `compactlm.eval.runner` (suites, local
tasks, result tables, evolution and plots), `compactlm.eval.perplexity` (bits per byte), and
`compactlm.eval.lm_eval_cli` (lm-eval's own command line with the backend registered).
"""
