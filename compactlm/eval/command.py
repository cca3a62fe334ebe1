"""`compactlm eval`: the command line of compactlm.eval (arguments and what each mode does)."""

from __future__ import annotations

import argparse
from pathlib import Path

from compactlm.errors import CompactlmError

DESCRIPTION = """\
Evaluate checkpoints with lm-evaluation-harness through compactlm's backend, or measure perplexity
and bits per byte on text files.

  compactlm eval --checkpoint CKPT --tasks commonsense          # the TinyLlama report's zero-shot suite
  compactlm eval --checkpoint CKPT --tasks problem-solving --confirm-run-unsafe-code
  compactlm eval --checkpoint CKPT --tasks local                # self-made offline tasks in tasks/
  compactlm eval --checkpoint CKPT --tasks arc_easy:5,piqa      # any lm-eval task, NAME:K for K-shot
  compactlm eval --run out/runs/demo --tasks local              # every checkpoint: table + plots
  compactlm eval --checkpoint CKPT --text held_out.txt more.jsonl   # perplexity, bits per byte

Suites: commonsense = hellaswag, openbookqa, winogrande, arc_challenge, arc_easy, boolq, piqa
(0-shot); problem-solving = mmlu 5-shot, bbh_fewshot 3-shot, humaneval 0-shot, drop 3-shot;
local = compactlm_facts, compactlm_completion. Offline, point --include-path at YAML tasks that
read local files (docs/evaluation.md)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = DESCRIPTION
    what = p.add_mutually_exclusive_group()
    what.add_argument("--checkpoint", help="a compactlm checkpoint or Hugging Face Llama directory")
    what.add_argument("--run", help="a training run directory: evaluate every RUN/checkpoints/step-* (cached)")
    p.add_argument("--tasks", help="comma-separated suites / lm-eval task names, NAME:K for K-shot")
    p.add_argument("--text", nargs="+", metavar="FILE", help="held-out text files (.txt, .md, ... or .jsonl "
                   "with a \"text\" field): perplexity and bits per byte")
    p.add_argument("--chat", metavar="FILE", help="held-out conversations (jsonl, as finetune reads them): "
                   "assistant-token loss, the share of greedy replies that end their turn, samples")
    p.add_argument("--template", default="", help="with --chat: zephyr, chatml or a .jinja file (default: the "
                   "checkpoint's own)")
    p.add_argument("--include-path", action="append", default=[], metavar="DIR",
                   help="more lm-eval task YAMLs (repeatable; the repo's tasks/ is always included)")
    p.add_argument("--limit", default=None, help="at most N documents per task (or a fraction, e.g. 0.1)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="sequences per forward pass (default 16; one sequence packs a context and all its choices)")
    p.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1, mps ...")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")
    p.add_argument("--output", default=None, help="with --checkpoint: directory for results.json / results.md "
                   "(default eval-results/<checkpoint name>); --run writes to RUN/eval")
    p.add_argument("--confirm-run-unsafe-code", action="store_true",
                   help="allow tasks that execute generated code (humaneval)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--install-lm-eval-plugin", action="store_true",
                   help="make plain `lm_eval --model compactlm` work in this Python environment (writes "
                        "compactlm_lm_eval.pth into site-packages)")
    p.add_argument("--uninstall-lm-eval-plugin", action="store_true", help="remove that file again")


def _limit(value: str | None):
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        raise CompactlmError(f"--limit {value!r}: expected a number of documents or a fraction") from None
    if number <= 0:
        raise CompactlmError(f"--limit {value!r}: must be positive")
    return number if "." in value and number < 1 else int(number)


def _require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise CompactlmError("lm-evaluation-harness is not installed: pip install 'compactlm[eval]'") from None


def _chat(args: argparse.Namespace, console) -> None:
    if not args.checkpoint or args.tasks or args.text:
        raise CompactlmError("--chat measures one --checkpoint, alone (not with --run, --tasks or --text)")
    from compactlm.checkpoint.layout import require_checkpoint
    from compactlm.eval.results import write_json
    from compactlm.finetune.evaluate import evaluate_chat, format_chat_eval

    result = evaluate_chat(require_checkpoint(args.checkpoint), args.chat, args.template,
                           batch_size=args.batch_size, device=args.device)
    console(format_chat_eval(result))
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "chat_results.json", result)


def run(args: argparse.Namespace, console=print) -> None:
    from compactlm.eval import lm_eval_hook

    if args.install_lm_eval_plugin:
        _require_lm_eval()
        console(f"wrote {lm_eval_hook.install_pth()}: `lm_eval --model compactlm --model_args pretrained=PATH` "
                "now works in this environment")
        return
    if args.uninstall_lm_eval_plugin:
        removed = lm_eval_hook.uninstall_pth()
        console(f"removed {removed}" if removed else "no compactlm_lm_eval.pth was installed")
        return
    if not args.checkpoint and not args.run:
        raise CompactlmError("give --checkpoint CKPT or --run RUN_DIR (compactlm eval -h)")
    if args.chat:
        return _chat(args, console)
    if args.run and args.text:
        raise CompactlmError("--text measures one --checkpoint, not a --run")
    if not args.tasks and not args.text:
        raise CompactlmError("nothing to do: give --tasks (commonsense, problem-solving, local, lm-eval names) "
                             "and/or --text FILE")
    limit = _limit(args.limit)
    progress = not args.no_progress
    _require_lm_eval()
    from compactlm.eval import results, tasks

    specs = tasks.parse_tasks(args.tasks) if args.tasks else []
    tasks.check_unsafe(specs, args.confirm_run_unsafe_code)
    if args.run:
        from compactlm.eval.evolution import evaluate_run

        summary = evaluate_run(args.run, specs, args.include_path, limit, args.batch_size, args.device,
                                      args.dtype, args.confirm_run_unsafe_code, progress, console=console)
        console(summary["table"])
        console(f"wrote {summary['markdown']}, {summary['json']} and {len(summary['plots'])} plots in "
                f"{Path(summary['markdown']).parent / 'plots'}")
        return

    from compactlm.checkpoint.layout import require_checkpoint

    checkpoint = require_checkpoint(args.checkpoint)
    out_dir = Path(args.output) if args.output else Path("eval-results") / checkpoint.resolve().name
    manager = tasks.task_manager(specs, args.include_path) if specs else None  # unknown names fail first
    lm = tasks.load_lm(checkpoint, args.batch_size, args.device, args.dtype, progress)
    report: dict = {"checkpoint": str(checkpoint), "limit": limit}
    markdown = f"# Evaluation of {checkpoint}\n\n"
    if specs:
        scores = tasks.evaluate_lm(lm, specs, manager, limit, args.confirm_run_unsafe_code)
        table = results.markdown_table([(checkpoint.name, scores)], specs)
        report["tasks"] = {t.name: {**scores[t.key]} for t in specs}
        report["average"] = results.average([scores[t.key] for t in specs])
        markdown += table
        console(table)
    if args.text:
        from compactlm.eval.perplexity import format_table, text_perplexity

        text = text_perplexity(lm, args.text, progress=progress)
        report["text"] = text
        table = format_table(text)
        markdown += ("\n" if specs else "") + table
        console(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    results.write_json(out_dir / "results.json", report)
    results.write_text(out_dir / "results.md", markdown)
    console(f"wrote {out_dir / 'results.json'} and {out_dir / 'results.md'}")
