"""`compactlm ladder CONFIG [KEY=VALUE ...] [--jobs N] [--dry-run] [--report-only]`."""

from __future__ import annotations

import time


def run(args) -> None:
    from compactlm.ladder.config import load_ladder_config
    from compactlm.ladder.grid import eval_spec, load_base, plan_points, point_state, run_ladder

    config = load_ladder_config(args.config, args.overrides)
    if args.jobs is not None:
        config.jobs = args.jobs
        config.validate(args.config)
    if args.dry_run:
        base = load_base(config, args.config)
        points = plan_points(config, base, args.config)
        evaluation = eval_spec(config, base)
        print(f"{config.mode} study, {len(points)} points -> {config.out_dir}/points "
              f"(N: non-embedding parameters; C: {'flops_per_token x D' if config.flops == 'model' else '6ND'})")
        print(f"{'point':<28}{'N':>12}{'D':>13}{'steps':>7}{'D/N':>8}{'C (FLOPs)':>11}  state")
        for p in points:
            print(f"{p.name:<28}{p.n_params:>12,}{p.tokens:>13,}{p.steps:>7}{p.tokens / p.n_params:>8.1f}"
                  f"{p.flops(config.flops):>11.3g}  {point_state(p, evaluation)}")
        print(f"total {sum(p.flops('model') for p in points):.3g} training FLOPs (flops_per_token x D)")
        return
    started = time.perf_counter()
    summary = run_ladder(config, args.config, train_points=not args.report_only)
    print(f"ladder: {summary['finished']}/{summary['points']} points finished; report {summary.get('report', '-')} "
          f"({time.perf_counter() - started:.0f} s)")
