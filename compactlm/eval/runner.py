"""Task suites, evaluation of one checkpoint or of every checkpoint of a run, tables and plots.

Task specifications are comma-separated names: a suite (`commonsense`, `problem-solving`, `local`),
an lm-eval task or group name, or `NAME:K` to force K-shot. Each task reports one headline
metric, chosen as TinyLlama's report does: acc_norm where the task defines it, else acc, else the
task's own measure (exact_match, pass@1, f1).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any

from compactlm.errors import CheckpointError, CompactlmError


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


# REFERENCE (Evaluation): commonsense reasoning zero-shot, columns in the report's order; problem
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
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EvalError(f"lm-eval failed on {', '.join(t.name for t in group)}: {message}") from exc
        seconds = time.perf_counter() - started
        for t in group:
            res = result["results"].get(t.name)
            if res is None:
                raise EvalError(f"lm-eval returned no result for {t.name}")
            picked = headline_metric(res)
            entry = {"task": t.name, "num_fewshot": shots, "metric": picked and picked[0],
                     "value": picked and picked[1], "stderr": picked and picked[2],
                     "samples": result.get("n-samples", {}).get(t.name, {}).get("effective"),
                     "all": {k: _jsonable(v) for k, v in res.items() if "," in k},
                     "seconds": round(seconds / len(group), 2)}
            if log_samples:
                entry["samples_log"] = result.get("samples", {}).get(t.name)
            out[t.key] = entry
    return out


def _jsonable(value):
    if isinstance(value, (int, float, str, bool)) or value is None:
        return None if isinstance(value, float) and math.isnan(value) else value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def average(entries: list[dict | None]) -> float | None:
    values = [e["value"] for e in entries if e and e.get("value") is not None]
    return sum(values) / len(values) if len(values) == len(entries) and values else None


def _fmt(value: float | None, metric: str | None = None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}"


def _tokens(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def markdown_table(rows: list[tuple[str, dict[str, dict]]], specs: list[TaskSpec], first: str = "model") -> str:
    """REFERENCE's shape: one row per model or checkpoint, one column per task (x100), then the average."""
    header = f"| {first} | " + " | ".join(t.title for t in specs) + " | avg |"
    lines = [header, "|" + "---|" * (len(specs) + 2)]
    for label, results in rows:
        entries = [results.get(t.key) for t in specs]
        cells = [_fmt(e and e["value"]) for e in entries]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {_fmt(average(entries))} |")
    metrics = ", ".join(f"{t.title}: {e['metric'].removesuffix(',none')}" for t in specs for e in [next(
        (r[t.key] for _, r in rows if r.get(t.key) and r[t.key].get("metric")), None)] if e)
    return "\n".join(lines) + (f"\n\nMetrics (x100): {metrics}." if metrics else "") + "\n"


# ---- one checkpoint -----------------------------------------------------------------------------------------
def load_lm(checkpoint: str | Path, batch_size: int = 16, device: str | None = None, dtype: str | None = None,
            progress: bool = True):
    from compactlm.eval.harness import CompactLM

    path = Path(checkpoint)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory")
    return CompactLM(str(path), batch_size=batch_size, device=device, dtype=dtype, progress=progress)


def evaluate_checkpoint(checkpoint: str | Path, specs: list[TaskSpec], include_paths=None, limit=None,
                        batch_size: int = 16, device: str | None = None, dtype: str | None = None,
                        confirm_run_unsafe_code: bool = False, progress: bool = True) -> dict[str, dict]:
    manager = task_manager(specs, include_paths)
    lm = load_lm(checkpoint, batch_size, device, dtype, progress)
    return evaluate_lm(lm, specs, manager, limit, confirm_run_unsafe_code)


# ---- every checkpoint of a run --------------------------------------------------------------------------------
_STEP_DIR = re.compile(r"step-(\d{8})")


def run_checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    if not run_dir.is_dir():
        raise EvalError(f"{run_dir}: no such run directory")
    found = [p for p in root.iterdir() if _STEP_DIR.fullmatch(p.name) and (p / "config.json").is_file()] \
        if root.is_dir() else []
    if not found:
        raise EvalError(f"{run_dir}: no checkpoints (expected {root}/step-XXXXXXXX directories)")
    return sorted(found, key=lambda p: int(p.name[5:]))


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a kill
    return records


def tokens_seen(checkpoint: Path, metrics: list[dict]) -> int | None:
    step = int(checkpoint.name[5:])
    found = None
    for r in metrics:
        if r.get("step") == step and "tokens" in r:
            found = int(r["tokens"])  # after a resume the last line for a step wins
    if found is not None:
        return found
    state = checkpoint / "train_state.pt"
    if state.is_file():
        try:
            import torch

            return int(torch.load(state, map_location="cpu", weights_only=True)["tokens_seen"])
        except Exception:
            return None
    return None


def _checkpoint_id(checkpoint: Path) -> str:
    """Changes when the directory is replaced (checkpoints are renamed into place atomically)."""
    st = checkpoint.stat()
    return f"{st.st_ino}-{st.st_mtime_ns}"


def _limit_key(limit) -> str:
    return "all" if limit is None else str(limit)


def evaluate_run(run_dir: str | Path, specs: list[TaskSpec], include_paths=None, limit=None, batch_size: int = 16,
                 device: str | None = None, dtype: str | None = None, confirm_run_unsafe_code: bool = False,
                 progress: bool = True, console=print) -> dict[str, Any]:
    """Evaluate every checkpoint of a run, reusing RUN_DIR/eval/step-XXXXXXXX.json; write the table,
    results.json and plots under RUN_DIR/eval. Returns {"evaluated": [...], "cached": [...], paths}."""
    run_dir = Path(run_dir)
    check_unsafe(specs, confirm_run_unsafe_code)
    checkpoints = run_checkpoints(run_dir)
    metrics = read_metrics(run_dir)
    out_dir = run_dir / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    lkey = _limit_key(limit)
    manager = None
    evaluated, cached = [], []
    rows = []
    for checkpoint in checkpoints:
        cache_file = out_dir / f"{checkpoint.name}.json"
        data = _read_cache(cache_file, _checkpoint_id(checkpoint))
        per_limit = data["results"].setdefault(lkey, {})
        todo = [t for t in specs if t.key not in per_limit]
        if todo:
            if manager is None:
                manager = task_manager(specs, include_paths)
            console(f"{checkpoint.name}: evaluating {', '.join(t.name for t in todo)}")
            lm = load_lm(checkpoint, batch_size, device, dtype, progress)
            per_limit.update(evaluate_lm(lm, todo, manager, limit, confirm_run_unsafe_code))
            del lm
            data["tokens"] = tokens_seen(checkpoint, metrics)
            _write_json(cache_file, data)
            evaluated.append((checkpoint.name, [t.name for t in todo]))
        else:
            cached.append(checkpoint.name)
        if data.get("tokens") is None:
            data["tokens"] = tokens_seen(checkpoint, metrics)
        rows.append((checkpoint, data["tokens"], {t.key: per_limit[t.key] for t in specs}))
    if cached:
        console(f"cached: {', '.join(cached)} (results in {out_dir})")

    table = markdown_table([(f"{c.name} ({_tokens(n)} tokens)", r) for c, n, r in rows], specs, first="checkpoint")
    summary = {"run_dir": str(run_dir), "limit": limit, "tasks": [dataclasses.asdict(t) for t in specs],
               "checkpoints": [{"checkpoint": c.name, "step": int(c.name[5:]), "tokens": n,
                                "results": {t.name: _public(r[t.key]) for t in specs},
                                "average": average([r[t.key] for t in specs])} for c, n, r in rows]}
    stem = "results" if limit is None else f"results-limit{limit}"
    _write_text(out_dir / f"{stem}.md", f"# Evaluation of {run_dir}\n\n{table}")
    _write_json(out_dir / f"{stem}.json", summary)
    plots = plot_evolution(rows, specs, metrics, out_dir / "plots")
    return {"evaluated": evaluated, "cached": cached, "table": table, "markdown": out_dir / f"{stem}.md",
            "json": out_dir / f"{stem}.json", "plots": plots}


def _public(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k != "samples_log"}


def _read_cache(path: Path, checkpoint_id: str) -> dict:
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            if data.get("checkpoint_id") == checkpoint_id and isinstance(data.get("results"), dict):
                return data
        except ValueError:
            pass  # a damaged cache is recomputed
    return {"checkpoint_id": checkpoint_id, "results": {}}


def _write_text(path: Path, text: str) -> None:
    from compactlm.fileio import atomic_write

    atomic_write(path, [text.encode()])


def _write_json(path: Path, data) -> None:
    _write_text(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def plot_evolution(rows, specs: list[TaskSpec], metrics: list[dict], out_dir: Path) -> list[Path]:
    """One PNG per task (its metric against tokens seen), the average, and validation loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    points = [(n if n is not None else int(c.name[5:]), r) for c, n, r in rows]
    xlabel = "tokens seen" if all(n is not None for _, n, _ in rows) else "step"
    series = [(t.title, re.sub(r"[^A-Za-z0-9_.-]+", "_", t.name), [(x, r[t.key]["value"]) for x, r in points
                                                                   if r[t.key].get("value") is not None],
               next((r[t.key]["metric"] for _, r in points if r[t.key].get("metric")), "score")) for t in specs]
    series.append(("average", "average", [(x, average([r[t.key] for t in specs])) for x, r in points
                                          if average([r[t.key] for t in specs]) is not None], "mean score"))
    for title, name, values, metric in series:
        if not values:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.6))
        ax.plot([x for x, _ in values], [100 * v for _, v in values], "o-")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{metric.removesuffix(',none')} (x100)")
        ax.set_title(title if title == name else f"{title} ({name})")
        ax.grid(alpha=0.3)
        save(fig, f"{name}.png")
    val = [(r["tokens"], r["val_loss"]) for r in metrics if "val_loss" in r and "tokens" in r]
    if val:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        ax.plot(*zip(*val), "o-", color="tab:orange")
        ax.set_xlabel("tokens seen")
        ax.set_ylabel("validation loss (nats/token)")
        ax.set_title("validation loss")
        ax.grid(alpha=0.3)
        save(fig, "val_loss.png")
    return written


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
