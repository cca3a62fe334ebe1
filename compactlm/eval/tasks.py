"""Task suites and running lm-evaluation-harness on one checkpoint.

Task specifications are comma-separated names: a suite (`commonsense`, `problem-solving`, `local`),
an lm-eval task or group name, or `NAME:K` to force K-shot. Each task reports one headline
metric, chosen as TinyLlama's report does: acc_norm where the task defines it, else acc, else the
task's own measure (exact_match, pass@1, f1).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from compactlm.errors import CompactlmError, first_line
from compactlm.eval.results import jsonable


class EvalError(CompactlmError):
    pass


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str
    num_fewshot: int | None = None  # None: the task's own default
    label: str | None = None

    @property
    def key(self) -> str:
        return f"{self.name}|{'default' if self.num_fewshot is None else self.num_fewshot}"

    @property
    def title(self) -> str:
        return self.label or self.name


# The TinyLlama report's evaluation: commonsense reasoning zero-shot, columns in the report's order; problem
# solving as InstructEval ran it. bbh_fewshot is BBH's direct-answer 3-shot prompt set.
SUITES: dict[str, list[TaskSpec]] = {
    "commonsense": [TaskSpec("hellaswag", 0, "HellaSwag"), TaskSpec("openbookqa", 0, "OBQA"),
                    TaskSpec("winogrande", 0, "WinoGrande"), TaskSpec("arc_challenge", 0, "ARC-c"),
                    TaskSpec("arc_easy", 0, "ARC-e"), TaskSpec("boolq", 0, "BoolQ"), TaskSpec("piqa", 0, "PIQA")],
    "problem-solving": [TaskSpec("mmlu", 5, "MMLU"), TaskSpec("bbh_fewshot", 3, "BBH"),
                        TaskSpec("humaneval", 0, "HumanEval"), TaskSpec("drop", 3, "DROP")],
    "local": [TaskSpec("compactlm_facts", 0, "facts"), TaskSpec("compactlm_completion", 0, "completion")],
}
METRIC_PREFERENCE = ("acc_norm", "acc", "exact_match", "pass@1", "pass_at_1", "f1", "em", "word_perplexity")
UNSAFE_TASKS = {"humaneval"}


def local_tasks_dir() -> Path | None:
    """The repository's tasks/ directory (self-made lm-eval tasks in YAML + jsonl), if present."""
    here = Path(__file__).resolve().parents[2] / "tasks"
    return here if here.is_dir() else None


def parse_tasks(spec: str | list[str]) -> list[TaskSpec]:
    items = spec.split(",") if isinstance(spec, str) else [s for part in spec for s in part.split(",")]
    out: list[TaskSpec] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        name, _, shots = item.partition(":")
        if shots and not shots.isdigit():
            raise EvalError(f"task {item!r}: the number of shots after ':' must be an integer")
        fewshot = int(shots) if shots else None
        if name in SUITES:
            out += [dataclasses.replace(t, num_fewshot=fewshot if shots else t.num_fewshot) for t in SUITES[name]]
        else:
            out.append(TaskSpec(name, fewshot))
    if not out:
        raise EvalError("no tasks given (--tasks commonsense, problem-solving, local or lm-eval task names)")
    seen, unique = set(), []
    for t in out:
        if t.key not in seen:
            seen.add(t.key)
            unique.append(t)
    return unique


def _quiet_lm_eval() -> None:
    for name in ("lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.ERROR)


def task_manager(specs: list[TaskSpec], include_paths: list[str | Path] | None = None):
    """An lm-eval TaskManager that knows every requested task; unknown names fail with one line.

    Only the include paths (the repo's tasks/ and --include-path) are indexed when they hold every
    requested task: indexing lm-eval's ~15,000 built-in tasks takes seconds.
    """
    _quiet_lm_eval()
    paths = [str(p) for p in (include_paths or [])]
    local = local_tasks_dir()
    if local is not None and str(local) not in paths:
        paths.insert(0, str(local))
    for p in paths:
        if not Path(p).is_dir():
            raise EvalError(f"{p}: --include-path is not a directory")
    check_unsafe(specs, confirm_run_unsafe_code=True)  # names only; the flag is checked where tasks run
    wanted = {t.name for t in specs}
    manager = _manager(tuple(paths), False) if paths else None
    if manager is None or not wanted <= set(manager.all_tasks):
        manager = _manager(tuple(paths), True)
    unknown = sorted(wanted - set(manager.all_tasks))
    if unknown:
        hints = []
        for name in unknown:
            close = [t for t in manager.all_tasks if name.lower() in t.lower()][:3]
            hints.append(name + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise EvalError(f"unknown task{'s' if len(unknown) > 1 else ''}: {'; '.join(hints)} "
                        f"(suites: {', '.join(SUITES)}; `lm_eval ls tasks` lists lm-eval's)")
    return manager


_MANAGERS: dict = {}


def _manager(paths: tuple[str, ...], include_defaults: bool):
    """TaskManagers are cached per process: indexing lm-eval's built-in tasks takes seconds."""
    from lm_eval.tasks import TaskManager

    key = (paths, include_defaults)
    if key not in _MANAGERS:
        _MANAGERS[key] = TaskManager(include_path=list(paths) or None, include_defaults=include_defaults)
    return _MANAGERS[key]


def check_unsafe(specs: list[TaskSpec], confirm_run_unsafe_code: bool) -> None:
    unsafe = [t.name for t in specs if t.name in UNSAFE_TASKS]
    if unsafe and not confirm_run_unsafe_code:
        raise EvalError(f"{', '.join(unsafe)} runs the generated code: pass --confirm-run-unsafe-code to allow it")


def headline_metric(task_result: dict[str, Any]) -> tuple[str, float, float | None] | None:
    """(metric name with its filter, value, stderr) of the preferred metric in one lm-eval result."""
    by_metric: dict[str, list[str]] = {}
    for key, value in task_result.items():
        if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
            continue
        by_metric.setdefault(key.split(",")[0], []).append(key)
    for metric in METRIC_PREFERENCE:
        if metric in by_metric:
            key = sorted(by_metric[metric])[0]
            metric_name, _, filt = key.partition(",")
            stderr = task_result.get(f"{metric_name}_stderr,{filt}")
            stderr = float(stderr) if isinstance(stderr, (int, float)) and not math.isnan(float(stderr)) else None
            return key, float(task_result[key]), stderr
    return None


def evaluate_lm(lm, specs: list[TaskSpec], manager, limit: int | float | None = None,
                confirm_run_unsafe_code: bool = False, log_samples: bool = False) -> dict[str, dict]:
    """Run lm-eval on `lm` for each spec; {spec.key: {"task", "num_fewshot", "metric", "value", ...}}."""
    import lm_eval

    _quiet_lm_eval()
    check_unsafe(specs, confirm_run_unsafe_code)
    if any(t.name in UNSAFE_TASKS for t in specs):
        os.environ.setdefault("HF_ALLOW_CODE_EVAL", "1")
    by_shots: dict[int | None, list[TaskSpec]] = {}
    for t in specs:
        by_shots.setdefault(t.num_fewshot, []).append(t)
    out: dict[str, dict] = {}
    for shots, group in by_shots.items():
        started = time.perf_counter()
        try:
            result = lm_eval.simple_evaluate(model=lm, tasks=[t.name for t in group], num_fewshot=shots,
                                             limit=limit, task_manager=manager, log_samples=log_samples,
                                             confirm_run_unsafe_code=confirm_run_unsafe_code, verbosity="ERROR",
                                             bootstrap_iters=1000)
        except CompactlmError:
            raise
        except Exception as exc:  # datasets / lm-eval: missing data offline, bad task config, ...
            raise EvalError(f"lm-eval failed on {', '.join(t.name for t in group)}: {first_line(exc)}") from exc
        seconds = time.perf_counter() - started
        for t in group:
            res = result["results"].get(t.name)
            if res is None:
                raise EvalError(f"lm-eval returned no result for {t.name}")
            picked = headline_metric(res)
            entry = {"task": t.name, "num_fewshot": shots, "metric": picked and picked[0],
                     "value": picked and picked[1], "stderr": picked and picked[2],
                     "samples": result.get("n-samples", {}).get(t.name, {}).get("effective"),
                     "all": {k: jsonable(v) for k, v in res.items() if "," in k},
                     "seconds": round(seconds / len(group), 2)}
            if log_samples:
                entry["samples_log"] = result.get("samples", {}).get(t.name)
            out[t.key] = entry
    return out


# ---- one checkpoint -----------------------------------------------------------------------------------------
def load_lm(checkpoint: str | Path, batch_size: int = 16, device: str | None = None, dtype: str | None = None,
            progress: bool = True):
    from compactlm.eval.harness import CompactLM

    from compactlm.checkpoint.layout import require_checkpoint

    path = require_checkpoint(checkpoint)
    return CompactLM(str(path), batch_size=batch_size, device=device, dtype=dtype, progress=progress)


def evaluate_checkpoint(checkpoint: str | Path, specs: list[TaskSpec], include_paths=None, limit=None,
                        batch_size: int = 16, device: str | None = None, dtype: str | None = None,
                        confirm_run_unsafe_code: bool = False, progress: bool = True) -> dict[str, dict]:
    manager = task_manager(specs, include_paths)
    lm = load_lm(checkpoint, batch_size, device, dtype, progress)
    return evaluate_lm(lm, specs, manager, limit, confirm_run_unsafe_code)


def demo_evaluation(checkpoint: str | Path, task: str = "compactlm_facts") -> dict | None:
    """What `compactlm demo` prints after training: the local multiple-choice task through the lm-eval
    backend, on the final checkpoint. Returns the task's entry (metric, value, samples), or None when
    lm-eval is not installed."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return None
    import torch

    threads = torch.get_num_threads()
    try:
        # One thread: the requests are tiny, and on a shared 2-core machine a second thread that has
        # to wait for a busy core costs far more than it gives.
        torch.set_num_threads(1)
        spec = TaskSpec(task, 0)
        manager = task_manager([spec])
        lm = load_lm(checkpoint, batch_size=32, progress=False)
        with contextlib.redirect_stderr(io.StringIO()):  # lm-eval's own progress bars
            entry = evaluate_lm(lm, [spec], manager)[spec.key]
        entry["acc"] = entry["all"].get("acc,none")
        return entry
    finally:
        torch.set_num_threads(threads)
