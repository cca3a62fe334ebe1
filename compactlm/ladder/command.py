"""`compactlm ladder CONFIG [KEY=VALUE ...] [--jobs N] [--dry-run] [--report-only]`: plan, train, report."""

from __future__ import annotations

import time
from pathlib import Path

from compactlm.ladder import holdout as predictions_file
from compactlm.ladder.fit import fitted_rows
from compactlm.ladder.config import LadderConfig, LadderError, load_ladder_config, resolve_base
from compactlm.ladder.grid import (LOG_FILE, best_learning_rates, eval_spec, plan_points, point_state, read_result,
                                   run_points)
from compactlm.ladder.wsd import cosine_baselines, trained_flops, wsd_vs_cosine
from compactlm.ladder.report import write_report


def run(args) -> None:
    config = load_ladder_config(args.config, args.overrides)
    if args.jobs is not None:
        config.jobs = args.jobs
        config.validate(args.config)
    if args.dry_run:
        dry_run(config, args.config)
        return
    started = time.perf_counter()
    summary = run_ladder(config, args.config, train_points=not args.report_only)
    print(f"ladder: {summary['finished']}/{summary['points']} points finished; report {summary.get('report', '-')} "
          f"({time.perf_counter() - started:.0f} s)")


def dry_run(config: LadderConfig, config_path) -> None:
    base = load_base(config, config_path)
    sweep, lrs = [], {}
    if config.lr_sweep:  # the study's points as they will be trained: at the rates the finished sweep chose
        sweep = plan_points(config, base, config_path, sweep=True)
        lrs = {size: entry["chosen"] for size, entry in best_learning_rates(config, sweep, _finished(sweep)).items()
               if len(entry["losses"]) == len(config.lr_sweep)}
        print(f"learning-rate sweep first ({len(config.lr_sweep)} rates per size); the study's points below use "
              f"the rate it chose for {len(lrs)} of {len(config.sizes)} sizes, else the base config's")
    points = plan_points(config, base, config_path, lrs)
    points = sweep + points + cosine_baselines(points, config.cosine_baseline, config.out_dir)
    evaluation = eval_spec(config, base)
    print(f"{config.mode} study, {len(points)} points -> {config.out_dir}/points "
          f"(N: non-embedding parameters; C: {'flops_per_token x D' if config.flops == 'model' else '6ND'})")
    print(f"{'point':<28}{'N':>12}{'D':>13}{'steps':>7}{'D/N':>8}{'C (FLOPs)':>11}  state")
    for p in points:
        branch = f" (branch of {p.depends_on} at step {p.branch_step})" if p.depends_on else ""
        print(f"{p.name:<28}{p.n_params:>12,}{p.tokens:>13,}{p.steps:>7}{p.tokens / p.n_params:>8.1f}"
              f"{p.flops(config.flops):>11.3g}  {point_state(p, evaluation)}{branch}")
    spent, separate = sum(trained_flops(p) for p in points), sum(p.flops("model") for p in points)
    print(f"total {spent:.3g} training FLOPs (flops_per_token x D)"
          + (f"; {separate:.3g} as separate runs" if spent < separate else ""))


def load_base(config: LadderConfig, config_path: str | Path | None):
    from compactlm.config.train import load_train_config

    return load_train_config(str(resolve_base(config, config_path)), config.overrides)


def _finished(points) -> dict[str, dict]:
    return {p.name: r for p in points if (r := read_result(p)) is not None and r.get("spec_hash") == p.spec_hash}


def run_ladder(config: LadderConfig, config_path: str | Path | None = None, console=print, train_points: bool = True,
               report: bool = True) -> dict:
    """Plan, train the unfinished points, fit and write the report; returns the report's data."""
    base = load_base(config, config_path)
    source = str(config_path or "ladder config")
    evaluation = eval_spec(config, base)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    failed, sweeps = [], None
    if config.lr_sweep:  # first each size's learning rate, then the study at those rates
        sweep = plan_points(config, base, source, sweep=True)
        failed += run_points(sweep, config, evaluation, console) if train_points else []
        sweeps = best_learning_rates(config, sweep, _finished(sweep))
        for size, entry in sweeps.items():
            console(f"{size}: learning rate {entry['chosen']:g} (val loss {entry['losses'][entry['chosen']]:.4f})"
                    + (" AT THE EDGE of the sweep: widen lr_sweep" if entry["at_edge"] else ""))
        missing = [s.label() for s in config.sizes if s.label() not in sweeps]
        if missing:
            raise LadderError(f"the learning-rate sweep has no finished run for {', '.join(missing)}; re-run to "
                              "finish it (or drop lr_sweep)")
    lrs = {k: v["chosen"] for k, v in (sweeps or {}).items()}
    points = plan_points(config, base, source, lrs)
    baselines = cosine_baselines(points, config.cosine_baseline, config.out_dir)  # trained beside, never fitted
    failed += run_points(points + baselines, config, evaluation, console) if train_points else []
    results = _finished(points)
    holdout, fittable = None, fitted_rows(list(results.values()), config.fit.min_steps)
    if config.holdout and len(fittable) >= 5:  # predicted, and the prediction recorded, before they are trained
        held = plan_points(config, base, source, lrs, holdout=True)
        predictions = (predictions_file.recorded(out)  # never refitted: the first prediction stands
                       or predictions_file.record(out, predictions_file.predict(config, fittable, held)))
        failed += run_points(held, config, evaluation, console) if train_points else []
        holdout = (predictions, _finished(held))
    summary = {"points": len(points), "finished": len(results), "failed": failed,
               "seconds": time.perf_counter() - started}
    if report:
        summary.update(write_report(config, points, results, out, config_path=config_path, console=console,
                                    lr_sweeps=sweeps, holdout=holdout,
                                    wsd_vs_cosine=wsd_vs_cosine(baselines, {**results, **_finished(baselines)})))
    if failed:
        raise LadderError(f"{len(failed)} point(s) failed: {', '.join(failed)} (see their {LOG_FILE}); "
                          "re-run the same command to resume them")
    return summary
