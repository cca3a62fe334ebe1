"""Ladder points: planning, running (resumable, in parallel processes) and the final evaluation.

Each point is a normal training run directory, `OUT/points/<name>/`, trained by `compactlm.train.trainer.train`
with the base config and the point's size, step count and schedule. When training returns, the point
is evaluated on a fixed validation set (the base config's held-out blocks, `eval_samples` of them, the
same for every point) and `ladder_result.json` is written atomically: that file marks a finished point.
A re-run skips finished points and resumes the others from their newest complete checkpoint.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import time
from pathlib import Path

from compactlm.checkpoint import layout
from compactlm.config.loader import from_dict, to_dict
from compactlm.config.train import TrainConfig, resolve_run
from compactlm.errors import CompactlmError
from compactlm.fileio import atomic_write
from compactlm.ladder.config import LadderConfig, LadderError, SizeSpec
from compactlm.ladder.plots import count
from compactlm.ladder.point import Point
from compactlm.ladder.wsd import branch_wsd

RESULT_FILE = "ladder_result.json"
LOG_FILE = "train.log"


# ---- planning -------------------------------------------------------------------------------------
def _set_key(data: dict, key: str, value, source: str) -> None:
    """Set a dotted key of a config dict; `data.weights` sets the datasets' weights in order."""
    if key == "data.weights":
        datasets = data["data"]["datasets"]
        if not isinstance(value, list) or len(value) != len(datasets):
            raise LadderError(f"{source}: data.weights needs a list of {len(datasets)} weights, got {value!r}")
        for entry, weight in zip(datasets, value):
            entry["weight"] = float(weight)
        return
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise LadderError(f"{source}: {key}: {part} is not a section of the train config")
        node = node[part]
    if parts[-1] not in node:
        raise LadderError(f"{source}: {key} is not a train-config key")
    node[parts[-1]] = value


def _value_label(value) -> str:
    text = json.dumps(value, separators=(",", ":")) if not isinstance(value, str) else value
    return "".join(c if c.isalnum() or c in ".-_+" else "_" for c in text).strip("_") or "value"


def plan_points(config: LadderConfig, base, source: str = "ladder config", lr_by_size: dict | None = None,
                sweep: bool = False, holdout: bool = False) -> list[Point]:
    """The points of a study, in the order they are run (the longest first). lr_by_size: each size's peak
    learning rate (from the sweep); sweep: the learning-rate sweep's points instead of the study's;
    holdout: the held-out points (trained whole, with the schedule of the study)."""
    base_dict = to_dict(base)
    out = Path(config.out_dir)

    def make(name: str, size: SizeSpec | None, tokens: float, label: str, changes: dict, budget=None,
             value=None, seed=None, strict: bool = True, lr: float | None = None) -> Point | None:
        """lr: the peak learning rate (default: the size's from lr_by_size); optim.min_lr keeps its ratio to it."""
        data = json.loads(json.dumps(base_dict))
        if size is not None:
            data["model"].update(size.shape())
            lr = lr if lr is not None else (lr_by_size or {}).get(label)
            if lr is not None:
                changes = {"optim.lr": lr, "optim.min_lr": data["optim"]["min_lr"] * lr / data["optim"]["lr"],
                           **changes}
        for key, val in changes.items():
            _set_key(data, key, val, source)
        seq_len = data["data"]["seq_len"]
        per_step = data["train"]["global_batch"] * seq_len
        steps = max(1, round(tokens / per_step))
        if steps < config.min_steps:
            if not strict:
                return None
            raise LadderError(f"{source}: point {name}: {tokens:,.0f} tokens are {steps} optimizer steps of "
                              f"{per_step:,} tokens, fewer than min_steps {config.min_steps}")
        data["run_dir"] = str(out / "points" / name)
        data["train"].update(max_steps=steps, max_tokens=0, lr_decay_steps=steps)
        data["optim"]["warmup_steps"] = max(1, round(config.warmup_fraction * steps))
        data["checkpoint_every"] = config.checkpoint_every
        data["eval_every"] = steps  # one validation, at the end (the ladder evaluates again, on more blocks)
        try:
            train_config = from_dict(TrainConfig, data, source)
            model = resolve_run(train_config).model  # as the trainer will resolve it
        except CompactlmError as exc:
            raise LadderError(f"{source}: point {name}: {exc}") from None
        return Point(name=name, size=label, n_params=model.non_embedding_params, total_params=model.num_params,
                     flops_per_token=float(model.flops_per_token(seq_len)), tokens=steps * per_step, steps=steps,
                     seq_len=seq_len, budget=budget, value=value, seed=seed, train_config=to_dict(train_config))

    points: list[Point] = []
    if sweep:
        # default: the study's smallest token budget (isoFLOP: the smallest budget's tokens at any size)
        tokens = config.lr_sweep_tokens or min(config.tokens or [
            min(config.budgets) / make(f"{size.label()}-probe", size, 1e30, size.label(), {}).flops_per_token
            for size in config.sizes])
        for size in config.sizes:
            for lr in config.lr_sweep:
                points.append(make(f"sweep-{size.label()}-lr{lr:g}", size, tokens, size.label(), {}, value=lr, lr=lr))
        return sorted(points, key=lambda p: -p.flops())
    if holdout:
        largest = config.sizes[-1].label() if config.sizes else ""
        for h in config.holdout:
            points.append(make(f"holdout-{h.name}", h.size, h.tokens, h.size.label(),
                               {"optim.schedule": config.schedule}, lr=(lr_by_size or {}).get(h.lr_from or largest)))
        return points
    if config.mode == "ablation":
        a = config.ablation
        labels = a.labels or [_value_label(v) for v in a.values]
        knob = a.knob.split(".")[-1] if a.knob != "data.weights" else "weights"
        for value, label in zip(a.values, labels):
            for seed in a.seeds:
                changes = {a.knob: value, **{k: seed for k in a.seed_keys}}
                points.append(make(f"{knob}={label}-seed{seed}", a.size, a.tokens, label, changes,
                                   value=value, seed=seed))
    elif config.mode == "grid":
        for size in config.sizes:
            for tokens in config.tokens:
                points.append(make(f"{size.label()}-{count(tokens)}", size, tokens, size.label(), {}))
    else:
        for size in config.sizes:
            probe = make(f"{size.label()}-probe", size, 1e30, size.label(), {})
            for budget in config.budgets:
                tokens = budget / (probe.flops_per_token if config.flops == "model" else 6.0 * probe.n_params)
                if config.tokens_per_param:
                    low, high = config.tokens_per_param
                    if not low <= tokens / probe.n_params <= high:
                        continue
                point = make(f"{size.label()}-C{budget:.2g}".replace("+", ""), size, tokens, size.label(), {},
                             budget=budget, strict=False)
                if point is not None:
                    points.append(point)
        if not points:
            raise LadderError(f"{source}: no isoFLOP point left (all below min_steps or outside tokens_per_param)")
    if config.schedule == "wsd":
        branch_wsd(points)
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise LadderError(f"{source}: points share names ({', '.join(sorted({n for n in names if names.count(n) > 1}))})"
                          "; give the sizes distinct names or use budgets further apart")
    # the longest first (parallel jobs finish together); branches after the runs they branch from
    return sorted(points, key=lambda p: (p.depends_on is not None, -p.flops()))


def best_learning_rates(config: LadderConfig, points: list[Point], results: dict[str, dict]) -> dict:
    """Each size's sweep: {size: {"losses": {lr: val loss}, "chosen": lr, "at_edge": bool}}; a size
    with no finished sweep run is left out."""
    sweeps: dict[str, dict] = {}
    for p in points:
        if p.name in results:
            sweeps.setdefault(p.size, {"losses": {}})["losses"][p.value] = results[p.name]["val_loss"]
    for entry in sweeps.values():
        lrs = sorted(entry["losses"])
        entry["chosen"] = min(lrs, key=lambda lr: entry["losses"][lr])
        entry["at_edge"] = entry["chosen"] in (min(config.lr_sweep), max(config.lr_sweep))
    return sweeps


# ---- state of a point ------------------------------------------------------------------------------
def point_dir(point: Point) -> Path:
    return Path(point.train_config["run_dir"])


def eval_spec(config: LadderConfig, base) -> dict:
    """The fixed validation set: the base config's data, held-out blocks, `eval_samples` of them."""
    return {"datasets": [dataclasses.asdict(d) for d in base.data.datasets], "seq_len": base.data.seq_len,
            "seed": base.data.seed, "val_fraction": base.data.val_fraction, "samples": config.eval_samples}


def read_result(point: Point) -> dict | None:
    path = point_dir(point) / RESULT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return None  # cannot happen with atomic writes; treat as unfinished


def point_state(point: Point, evaluation: dict) -> str:
    """done | evaluate (trained, validation set changed) | resume | new."""
    result = read_result(point)
    if result is not None:
        if result.get("spec_hash") != point.spec_hash:
            raise LadderError(f"{point_dir(point)}: finished with a different config than this ladder's; "
                              "use another out_dir, or delete the point to retrain it")
        return "done" if result.get("eval") == evaluation else "evaluate"
    return "resume" if layout.latest_checkpoint(point_dir(point)) else "new"


# ---- running --------------------------------------------------------------------------------------
def _final_checkpoint(run_dir: Path, steps: int) -> Path:
    found = layout.latest_checkpoint(run_dir)
    if found is None or layout.step_of(found) != steps:
        raise LadderError(f"{run_dir}: training returned without a checkpoint of step {steps}")
    return found


def evaluate_checkpoint(checkpoint: Path, evaluation: dict, precision: str = "auto", device: str = "cpu") -> dict:
    """Mean next-token loss (nats) and bits per byte of a checkpoint on the ladder's validation blocks."""
    import torch

    from compactlm.checkpoint.model import from_pretrained
    from compactlm.data.mixture import Mixture, MixtureSource
    from compactlm.tokenizer.tokenizer import load_tokenizer
    from compactlm.train.runtime import autocast_dtype, resolve_device
    from compactlm.train.validate import Validator

    dev = resolve_device(device)
    model = from_pretrained(checkpoint, device=dev)
    tokenizer = load_tokenizer(checkpoint)
    mixture = Mixture([MixtureSource(**d) for d in evaluation["datasets"]], evaluation["seq_len"],
                      evaluation["seed"], evaluation["val_fraction"], tokenizer_hash=tokenizer.hash)
    amp = autocast_dtype(precision, dev)

    def score(samples) -> dict:
        if not len(samples):
            raise LadderError(f"{checkpoint}: the validation set is empty (raise data.val_fraction)")
        result = Validator.for_blocks(torch.from_numpy(samples), tokenizer, 16, dev, amp)(model)
        return {k: result[k] for k in ("val_loss", "val_bpb", "val_blocks", "val_tokens")}

    metrics = score(mixture.val_samples(evaluation["samples"]))
    # each dataset's own held-out blocks as well (e.g. text and code apart): they do not move with the weights
    if len(evaluation["datasets"]) > 1:
        names = dataset_names(evaluation["datasets"])
        metrics["by_dataset"] = {name: score(mixture.dataset_val_samples(i, evaluation["samples"]))
                                 for i, name in enumerate(names)}
    return metrics


def dataset_names(datasets: list[dict]) -> list[str]:
    """Each dataset's folder name, or its full path where two folders share a name."""
    names = [Path(d["path"]).name for d in datasets]
    return [n if names.count(n) == 1 else d["path"] for n, d in zip(names, datasets)]


def _last_train_loss(run_dir: Path, steps: int) -> float | None:
    from compactlm.train.metrics import read_metrics, step_records

    tail = [r["loss"] for r in step_records(read_metrics(run_dir)) if r["step"] > steps - max(1, steps // 20)]
    return sum(tail) / len(tail) if tail else None


def run_point(payload: dict) -> dict:
    """Train (or resume) one point, evaluate it, write its result atomically. Runs in a worker process."""
    import torch

    from compactlm.train import trainer  # trainer.train, looked up at call time (tests count the calls)

    if payload.get("threads"):
        torch.set_num_threads(payload["threads"])
    point = Point(**payload["point"])
    run_dir = point_dir(point)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    resumed_from = 0
    with open(run_dir / LOG_FILE, "a") as log:
        def console(*args):
            print(*args, file=log, flush=True)

        if not payload.get("evaluate_only"):
            latest = layout.latest_checkpoint(run_dir)
            resumed_from = layout.step_of(latest) if latest else 0
            config = from_dict(TrainConfig, point.train_config, str(run_dir))
            trainer.train(config, resume=True, console=console)
        checkpoint = _final_checkpoint(run_dir, point.steps)
        metrics = evaluate_checkpoint(checkpoint, payload["eval"], point.train_config["train"]["precision"],
                                      point.train_config["device"])
        console(f"ladder evaluation: {metrics}")
    previous = read_result(point) or {}
    seconds = time.perf_counter() - started
    result = {"name": point.name, "spec_hash": point.spec_hash, "eval": payload["eval"],
              **{k: v for k, v in dataclasses.asdict(point).items() if k != "train_config"},
              "flops_model": point.flops("model"), "flops_6nd": point.flops("6nd"), **metrics,
              "train_loss": _last_train_loss(run_dir, point.steps), "checkpoint": str(checkpoint),
              "seconds": previous.get("seconds", 0.0) + seconds if payload.get("evaluate_only") else seconds,
              "resumed_from_step": resumed_from, "threads": payload.get("threads") or torch.get_num_threads()}
    atomic_write(run_dir / RESULT_FILE, [json.dumps(result, indent=2).encode() + b"\n"])
    return result


def run_points(points: list[Point], config: LadderConfig, evaluation: dict, console=print) -> list[str]:
    """Train the unfinished points, `config.jobs` at a time; returns the names of points that failed."""
    states = {p.name: point_state(p, evaluation) for p in points}
    todo = [p for p in points if states[p.name] != "done"]
    done = len(points) - len(todo)
    if done:
        console(f"{done} of {len(points)} points already finished: skipped")
    if not todo:
        return []
    jobs = min(config.jobs, len(todo))
    threads = config.threads or max(1, (os.cpu_count() or 1) // jobs)
    console(f"training {len(todo)} points, {jobs} at a time, {threads} torch thread(s) each "
            f"(logs: <point>/{LOG_FILE})")
    failed: list[str] = []
    started = time.perf_counter()
    # WSD branches start from their size's run: it goes first, and a branch of a failed run is not tried
    first = [p for p in todo if p.depends_on is None]
    _run_wave(first, 0, len(todo), states, evaluation, jobs, threads, failed, started, console)
    branches = [p for p in todo if p.depends_on is not None]
    for p in [p for p in branches if p.depends_on in failed]:
        failed.append(p.name)
        console(f"{p.name}: not trained, {p.depends_on} (the run it branches from) failed")
    branches = [p for p in branches if p.name not in failed]
    _run_wave(branches, len(first), len(todo), states, evaluation, jobs, threads, failed, started, console)
    return failed


def _run_wave(todo: list[Point], offset: int, total: int, states: dict, evaluation: dict, jobs: int, threads: int,
              failed: list[str], started: float, console) -> None:
    """Train points that do not depend on each other, `jobs` at a time; failures are appended to `failed`."""
    if not todo:
        return
    jobs = min(jobs, len(todo))
    payloads = [{"point": {k: v for k, v in dataclasses.asdict(p).items()}, "eval": evaluation, "threads": threads,
                 "evaluate_only": states[p.name] == "evaluate"} for p in todo]

    def report(i: int, point: Point, result: dict | None, error: BaseException | None) -> None:
        elapsed = time.perf_counter() - started
        if error is not None:
            failed.append(point.name)
            console(f"[{i}/{total}] {point.name}: FAILED ({error}) [{elapsed:.0f} s]")
        else:
            how = {"resume": " (resumed)", "evaluate": " (re-evaluated)"}.get(states[point.name], "")
            console(f"[{i}/{total}] {point.name}{how}: N {point.n_params:,}, D {point.tokens:,}: "
                    f"val loss {result['val_loss']:.4f} in {result['seconds']:.0f} s [{elapsed:.0f} s]")

    if jobs == 1:
        for i, (point, payload) in enumerate(zip(todo, payloads), offset + 1):
            console(f"[{i}/{total}] {point.name}: {states[point.name]}, {point.steps} steps ...")
            try:
                result = run_point(payload)
            except CompactlmError as exc:
                if _interrupted(exc):  # Ctrl-C / SIGTERM: the trainer checkpointed; stop the ladder too
                    raise _stopped(exc, point.name) from None
                report(i, point, None, exc)
                continue
            report(i, point, result, None)
        return
    context = multiprocessing.get_context("spawn")
    # Submitted one per free worker, never queued ahead: after Ctrl-C (which every worker receives, and each
    # answers with a checkpoint) no worker finds another point waiting and starts it.
    waiting, running, finished = list(zip(todo, payloads)), {}, offset
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
        try:
            while waiting or running:
                while waiting and len(running) < jobs:
                    point, payload = waiting.pop(0)
                    running[pool.submit(run_point, payload)] = point
                done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    point, finished = running.pop(future), finished + 1
                    error = future.exception()
                    if error is not None and (not isinstance(error, CompactlmError) or _interrupted(error)):
                        raise error
                    report(finished, point, None if error else future.result(), error)
        except BaseException as exc:
            pool.shutdown(wait=True, cancel_futures=True)
            if isinstance(exc, KeyboardInterrupt) or _interrupted(exc):
                raise _stopped(exc) from None
            raise


def _interrupted(exc: BaseException) -> bool:
    return "stopped by signal" in str(exc)


def _stopped(exc: BaseException, point: str = "") -> LadderError:
    """The ladder's error for Ctrl-C or SIGTERM: exit 128 + the signal, as `compactlm train` does."""
    what = f"{point}: {exc}" if point and str(exc) else str(exc) or "interrupted"
    error = LadderError(f"{what}; the running points checkpointed: re-run the same command to resume them")
    error.exit_code = getattr(exc, "exit_code", 130)
    return error
