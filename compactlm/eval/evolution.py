"""Evaluation over a whole run: every checkpoint, cached per checkpoint, a table, JSON and plots.

`RUN_DIR/eval/step-XXXXXXXX.json` caches each checkpoint's scores (keyed by the directory's identity,
which changes when a checkpoint is replaced); a re-run evaluates only what is missing. The table has
one row per checkpoint with its tokens seen, as the TinyLlama report tracks its intermediate
checkpoints; the plots show each task, the average and validation loss against tokens seen.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from compactlm.checkpoint.layout import EVAL_DIR, complete_checkpoints, step_of
from compactlm.eval.results import average, format_tokens, markdown_table, write_json, write_text
from compactlm.eval.tasks import EvalError, TaskSpec, check_unsafe, evaluate_lm, load_lm, task_manager
from compactlm.train.metrics import read_metrics, tokens_at_step, validation_records


def run_checkpoints(run_dir: Path) -> list[Path]:
    if not run_dir.is_dir():
        raise EvalError(f"{run_dir}: no such run directory")
    found = complete_checkpoints(run_dir)
    if not found:
        raise EvalError(f"{run_dir}: no checkpoints (expected complete {run_dir}/checkpoints/step-XXXXXXXX "
                        "directories written by `compactlm train`)")
    return found


def tokens_seen(checkpoint: Path, metrics: list[dict]) -> int | None:
    found = tokens_at_step(metrics, step_of(checkpoint))
    if found is not None:
        return found
    from compactlm.checkpoint.training import read_train_state
    from compactlm.errors import CheckpointError

    try:
        return int(read_train_state(checkpoint)["tokens_seen"])
    except CheckpointError:
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
    results.json and plots under RUN_DIR/eval. Returns {"evaluated", "cached", "table", "markdown",
    "json", "plots" (paths), "figures" (what each plot shows)}."""
    run_dir = Path(run_dir)
    check_unsafe(specs, confirm_run_unsafe_code)
    checkpoints = run_checkpoints(run_dir)
    metrics = read_metrics(run_dir)
    out_dir = run_dir / EVAL_DIR
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
            write_json(cache_file, data)
            evaluated.append((checkpoint.name, [t.name for t in todo]))
        else:
            cached.append(checkpoint.name)
        if data.get("tokens") is None:
            data["tokens"] = tokens_seen(checkpoint, metrics)
        rows.append((checkpoint, data["tokens"], {t.key: per_limit[t.key] for t in specs}))
    if cached:
        console(f"cached: {', '.join(cached)} (results in {out_dir})")

    table = markdown_table([(f"{c.name} ({format_tokens(n)} tokens)", r) for c, n, r in rows], specs,
                           first="checkpoint")
    summary = {"run_dir": str(run_dir), "limit": limit, "tasks": [dataclasses.asdict(t) for t in specs],
               "checkpoints": [{"checkpoint": c.name, "step": step_of(c), "tokens": n,
                                "results": {t.name: _public(r[t.key]) for t in specs},
                                "average": average([r[t.key] for t in specs])} for c, n, r in rows]}
    stem = "results" if limit is None else f"results-limit{limit}"
    write_text(out_dir / f"{stem}.md", f"# Evaluation of {run_dir}\n\n{table}")
    write_json(out_dir / f"{stem}.json", summary)
    figures = plot_evolution(rows, specs, metrics, out_dir / "plots")
    return {"evaluated": evaluated, "cached": cached, "table": table, "markdown": out_dir / f"{stem}.md",
            "json": out_dir / f"{stem}.json", "plots": [f.path for f in figures], "figures": figures}


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


def plot_evolution(rows, specs: list[TaskSpec], metrics: list[dict], out_dir: Path) -> list:
    """One PNG per task (its metric x100 against tokens seen), the average, and validation loss."""
    from compactlm.plotting import pyplot, save_figure

    plt = pyplot()
    figures = []
    points = [(n if n is not None else step_of(c), r) for c, n, r in rows]
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
        ax.plot([x for x, _ in values], [100 * v for _, v in values], "o-", label=name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{metric.removesuffix(',none')} (x100)")
        ax.set_title(title if title == name else f"{title} ({name})")
        ax.grid(alpha=0.3)
        figures.append(save_figure(fig, out_dir / f"{name}.png", dpi=110))
    val = [(r["tokens"], r["val_loss"]) for r in validation_records(metrics) if "tokens" in r]
    if val:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        ax.plot(*zip(*val), "o-", color="tab:orange", label="val_loss")
        ax.set_xlabel("tokens seen")
        ax.set_ylabel("validation loss (nats/token)")
        ax.set_title("validation loss")
        ax.grid(alpha=0.3)
        figures.append(save_figure(fig, out_dir / "val_loss.png", dpi=110))
    return figures
