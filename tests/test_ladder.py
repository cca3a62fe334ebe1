"""compactlm ladder: the fits recover known laws, the grid resumes, the report is written, bad configs fail."""

import json
import math
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import yaml

from compactlm.cli import main
from compactlm.config.loader import to_dict
from compactlm.ladder import fit as F
from compactlm.ladder.config import LadderConfig, LadderError, load_ladder_config
from compactlm.ladder.command import load_base, run_ladder
from compactlm.ladder.grid import RESULT_FILE, Point, plan_points
from compactlm.ladder.report import write_report
from compactlm.ladder.wsd import cosine_baselines
from compactlm.checkpoint.layout import complete_checkpoints as checkpoint_dirs
from tests.conftest import png_size, run_cli, tiny_train_config

CHINCHILLA = F.LawFit(E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28)


def law_points(law, noise=0.002, seed=0):
    """A 7 x 7 grid over 4.5 decades of N and D: wide enough that all five parameters are identifiable."""
    N, D = (x.ravel() for x in np.meshgrid(np.logspace(5, 9.5, 7), np.logspace(7, 11.5, 7)))
    L = law.predict(N, D) * np.exp(np.random.default_rng(seed).normal(0, noise, N.size))
    return N, D, L


def test_fit_recovers_a_known_law_within_10_percent():
    for true in (CHINCHILLA, F.LawFit(E=3.1, A=300.0, alpha=0.4, B=900.0, beta=0.4)):
        N, D, L = law_points(true, noise=0.001)  # 0.1%: about the evaluation noise of the CPU study
        law = F.fit_law(N, D, L, starts=8)
        for key in ("E", "A", "alpha", "B", "beta"):
            assert getattr(law, key) == pytest.approx(getattr(true, key), rel=0.10), key
        assert F.r_squared(L, law.predict(N, D)) > 0.999


def test_bootstrap_intervals_cover_the_truth():
    N, D, L = law_points(CHINCHILLA, noise=0.003, seed=1)
    law = F.fit_law(N, D, L, starts=8)
    boots = F.bootstrap_law(N, D, L, 20, seed=0, starts=2, around=law)
    assert len(boots) == 20
    for key in ("alpha", "beta", "E"):
        low, high = F.interval([getattr(b, key) for b in boots], 0.95)
        assert low < getattr(law, key) < high
        assert high - low < 0.2 * getattr(CHINCHILLA, key)  # informative, not degenerate


def test_compute_optimum_matches_chinchillas_closed_form():
    law, flops = CHINCHILLA, F.FlopsCurve()  # C = 6ND
    G = (law.alpha * law.A / (law.beta * law.B)) ** (1 / (law.alpha + law.beta))
    for C in (1e18, 1e21, 1e24):
        n, d, _ = F.compute_optimal(law, C, flops)
        assert n == pytest.approx(G * (C / 6) ** law.a, rel=1e-4)
        assert d == pytest.approx((C / 6) ** law.b / G, rel=1e-4)
    n_ref = 968_976_384
    t = F.target_analysis(law, flops, n_ref, 3e12)
    assert t["D_opt"] == pytest.approx((n_ref / G) ** (law.alpha / law.beta) / G, rel=1e-6)
    assert F.compute_optimal(law, 6 * n_ref * t["D_opt"], flops)[0] == pytest.approx(n_ref, rel=1e-4)
    assert t["loss_gain"] > 0 and t["overtraining"] > 1
    assert t["N_star"] > n_ref and t["loss_star"] < t["loss"]  # at equal compute a bigger model is better
    # the equal-loss model sits on the other side of the isoFLOP curve, with the same loss and compute
    assert t["N_equal_loss"] > t["N_star"]
    assert law.predict(t["N_equal_loss"], t["D_equal_loss"]) == pytest.approx(t["loss"], rel=1e-6)
    assert F.compute_optimal(law, t["C_equal_loss"], flops)[2] == pytest.approx(t["loss"], rel=1e-5)
    assert t["compute_ratio"] > 1


def test_isoflop_minima_recover_the_laws_exponents():
    law, flops = CHINCHILLA, F.FlopsCurve()
    groups = {}
    for C in (1e18, 1e19, 1e20, 1e21):
        n_opt = F.compute_optimal(law, C, flops)[0]
        ns = list(n_opt * np.logspace(-0.6, 0.6, 7))
        groups[C] = (ns, [6 * n for n in ns], [float(law.predict(n, C / (6 * n))) for n in ns])
    for window in (0, 5):  # all seven sizes, or the five around each budget's lowest loss
        result = F.isoflop_minima(groups, window)
        assert all(m["valid"] and m["inside"] for m in result["minima"])
        assert result["a"] == pytest.approx(law.a, abs=0.02)
        assert result["b"] == pytest.approx(law.b, abs=0.02)
    assert F.around_minimum([1, 2, 3, 4, 5, 6], [5, 4, 3, 3.5, 4, 6], 3) == [1, 2, 3]
    assert F.around_minimum([1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6], 4) == [0, 1, 2, 3]


def synthetic_isoflop(tmp_path, bootstrap=10):
    """Results of a 5-size x 3-budget isoFLOP study generated from a known law (no training)."""
    law = F.LawFit(E=2.5, A=60.0, alpha=0.35, B=300.0, beta=0.3)
    config = LadderConfig(out_dir=str(tmp_path / "syn"), budgets=[1e13, 1e14, 1e15], flops="6nd",
                          sizes=[])
    config.fit.bootstrap = bootstrap
    config.fit.starts = 8
    config.fit.isoflop_window = 4
    points, results = [], {}
    rng = np.random.default_rng(0)
    for C in config.budgets:
        for n in (1e5, 3e5, 1e6, 3e6, 1e7):
            d = int(C / (6 * n))
            p = Point(name=f"n{n:.0e}-C{C:.0e}", size=f"n{n:.0e}", n_params=int(n), total_params=int(n) + 500_000,
                      flops_per_token=6 * n, tokens=d, steps=max(1, d // 4096), seq_len=256, budget=C)
            points.append(p)
            loss = float(law.predict(n, d)) * math.exp(rng.normal(0, 0.003))
            results[p.name] = {"name": p.name, "size": p.size, "n_params": p.n_params, "total_params": p.total_params,
                               "flops_per_token": p.flops_per_token, "tokens": d, "steps": p.steps, "budget": C,
                               "flops_model": 6 * n * d, "val_loss": loss, "val_bpb": loss / math.log(2) / 3,
                               "val_blocks": 64, "seconds": 1.0}
    return config, points, results, law


def test_report_and_plots_are_written(tmp_path):
    config, points, results, law = synthetic_isoflop(tmp_path)
    out = tmp_path / "syn"
    summary = write_report(config, points, results, out, config_path="ladder.yaml", console=lambda *a: None)
    text = (out / "ladder.md").read_text()
    for heading in ("## Points", "## Fit", "## Compute-optimal scaling", "Approach 2", "## Extrapolation",
                    "Caveat", "R²"):
        assert heading in text
    for name in ("loss_vs_tokens.png", "isoflop.png", "law_fit.png", "residuals.png", "extrapolation.png"):
        assert f"]({name})" in text
    figures = summary["figures"]
    assert sorted(f.path.name for f in figures.values()) == sorted(summary["plots"])
    for figure in figures.values():
        assert png_size(figure.path) == (figure.width, figure.height)
    assert (figures["loss_vs_tokens"].width, figures["loss_vs_tokens"].height) == (960, 576)  # 8 x 4.8 in, 120 dpi
    # Each size's curve is its points' measured losses; the law-vs-measured plot puts every point once.
    rows = list(results.values())
    for size in {r["size"] for r in rows}:
        mine = sorted((r["tokens"], r["val_loss"]) for r in rows if r["size"] == size)
        line = next(x_y for label, *x_y in figures["loss_vs_tokens"].lines if label.startswith(f"{size} (N "))
        assert line == [[float(t) for t, _ in mine], [v for _, v in mine]]
    measured = [y for label, _, ys in figures["law_fit"].lines if label != "y = x" for y in ys]
    assert sorted(measured) == sorted(r["val_loss"] for r in rows)
    data = json.loads((out / "ladder.json").read_text())
    assert data["fit"]["alpha"] == pytest.approx(law.alpha, rel=0.15)
    assert 0 < data["isoflop"]["a"] < 1 and len(data["isoflop"]["minima"]) == 3
    assert data["r2"] > 0.98 and len(data["bootstrap"]) == 10
    # the fit's targets, judged from its own figures: 0.3% noise gives residuals well under 1%
    targets = data["targets"]
    assert targets["rms_residual"]["value"] == data["rms_residual"] < 0.01 and targets["rms_residual"]["met"]
    for k in ("alpha", "beta"):
        low, high = F.interval([b[k] for b in data["bootstrap"]], 0.95)
        assert targets[f"{k}_half_width"]["interval"] == [low, high]
        assert targets[f"{k}_half_width"]["met"] == ((high - low) / 2 < 0.1)
    assert "Targets: residual RMS <= 1%: met" in text
    assert summary["law"]["beta"] == pytest.approx(law.beta, rel=0.15)
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporary files
    # the verdict: penalties at each budget, and the target under this law and the published ones
    assert "## The over-training verdict" in text
    assert [p["C"] for p in data["penalties"]] == config.budgets
    assert all(0 < r["loss_penalty"] for p in data["penalties"] for r in p["smaller"])
    assert set(data["verdicts"]) == {"this ladder", "hoffmann2022", "besiroglu2024"}
    assert data["verdicts"]["hoffmann2022"]["N"] == 1_100_048_384  # published laws count all parameters
    assert data["verdicts"]["this ladder"]["N"] == 968_976_384  # this one, non-embedding ones
    assert data["verdicts"]["besiroglu2024"]["inference"]["cheapest"] == "inference-optimal"
    # the law is fitted with all parameters too (here 500k more than N at every size)
    assert data["fit_total_params"]["embedding_share"] > 0 and "With N = all parameters" in text


# ---- the grid on real (tiny) training runs ---------------------------------------------------------
def tiny_ladder(tiny_dataset, tmp_path, **extra):
    base = tiny_train_config(tiny_dataset, tmp_path / "unused")
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(to_dict(base)))
    config = {"base": str(tmp_path / "base.yaml"), "out_dir": str(tmp_path / "ladder"),
              "sizes": [{"name": "tiny", "n_layer": 1, "d_model": 32, "n_head": 1, "n_kv_head": 1, "ffn_dim": 96},
                        {"name": "small", "n_layer": 2, "d_model": 64, "n_head": 2, "n_kv_head": 1, "ffn_dim": 176}],
              "tokens": [1536, 2560], "min_steps": 4, "checkpoint_every": 4, "eval_samples": 16,
              "fit": {"bootstrap": 5, "starts": 4}, **extra}
    path = tmp_path / "ladder.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_grid_is_resumable_and_skips_finished_points(tiny_dataset, tmp_path, monkeypatch):
    path = tiny_ladder(tiny_dataset, tmp_path)
    config = load_ladder_config(path, ["jobs=2", "threads=1"])
    points = plan_points(config, load_base(config, path))
    assert sorted(p.name for p in points) == ["small-1.54k", "small-2.56k", "tiny-1.54k", "tiny-2.56k"]
    small = next(p for p in points if p.name == "small-2.56k")
    assert (small.steps, small.tokens) == (10, 2560)
    assert small.train_config["train"]["lr_decay_steps"] == 10
    assert small.train_config["optim"]["warmup_steps"] == 1  # 5% of 10 steps, at least one

    summary = run_ladder(config, path, console=lambda *a: None)  # two worker processes
    assert summary["finished"] == 4 and (tmp_path / "ladder" / "ladder.md").is_file()
    assert (tmp_path / "ladder" / "loss_vs_tokens.png").is_file()
    dirs = {p.name: tmp_path / "ladder" / "points" / p.name for p in points}
    first = {name: json.loads((d / RESULT_FILE).read_text()) for name, d in dirs.items()}
    mtimes = {name: (d / RESULT_FILE).stat().st_mtime_ns for name, d in dirs.items()}

    # Simulate a point killed after its step-8 checkpoint: no result, no final checkpoint.
    killed = dirs["small-2.56k"]
    (killed / RESULT_FILE).unlink()
    shutil.rmtree(checkpoint_dirs(killed)[-1])
    assert int(checkpoint_dirs(killed)[-1].name[5:]) == 8

    import compactlm.train.trainer as trainer_module

    calls = []
    real_train = trainer_module.train

    def counting_train(cfg, resume=False, console=print):
        calls.append((cfg.run_dir, resume))
        return real_train(cfg, resume=resume, console=console)

    monkeypatch.setattr(trainer_module, "train", counting_train)
    config = load_ladder_config(path, ["jobs=1"])  # in-process, so the counter sees every call
    run_ladder(config, path, console=lambda *a: None)
    assert calls == [(str(killed), True)]
    for name, d in dirs.items():
        if name != "small-2.56k":
            assert (d / RESULT_FILE).stat().st_mtime_ns == mtimes[name]
    again = json.loads((killed / RESULT_FILE).read_text())
    assert again["resumed_from_step"] == 8
    assert again["val_loss"] == first["small-2.56k"]["val_loss"]  # exact resume: the same final loss
    metrics = [json.loads(l) for l in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics if "loss" in r] == list(range(1, 11))

    calls.clear()
    run_ladder(config, path, console=lambda *a: None)
    assert calls == []  # everything finished: nothing retrained


def test_ctrl_c_stops_every_worker_of_a_parallel_ladder(tiny_dataset, tmp_path):
    """Ctrl-C reaches the ladder and both workers: each checkpoints its point and stops, and a worker that
    has already taken the next queued point is stopped too, not left to train it to the end."""
    path = tiny_ladder(tiny_dataset, tmp_path, tokens=[2.0e+7], checkpoint_every=1000000,
                       sizes=[{"name": f"s{i}", "n_layer": 1, "d_model": 32, "n_head": 1, "n_kv_head": 1,
                               "ffn_dim": 96 + 8 * i} for i in range(3)])  # 3 points of 78,125 steps each
    proc = run_cli(["ladder", str(path), "--jobs", "2", "threads=1"])
    points = tmp_path / "ladder" / "points"
    deadline = time.monotonic() + 120
    while sum(1 for log in points.glob("*/train.log") if "step " in log.read_text()) < 2:
        assert time.monotonic() < deadline and proc.poll() is None, "the ladder did not start training"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: the whole process group
    try:
        out, _ = proc.communicate(timeout=90)  # the third point alone would train for minutes
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"the ladder kept training after Ctrl-C:\n{proc.communicate()[0].decode()}")
    assert proc.returncode == 130 and "re-run the same command to resume them" in out.decode(), out.decode()
    assert not list(points.glob(f"*/{RESULT_FILE}"))  # nothing finished; the interrupted points checkpointed
    assert len(list(points.glob("*/checkpoints/step-*"))) >= 2


def test_ablation_plans_and_reports(tiny_dataset, tmp_path):
    path = tiny_ladder(tiny_dataset, tmp_path, sizes=[], tokens=[],
                       ablation={"knob": "optim.lr", "values": [1e-3, 1e-2], "seeds": [1, 2], "tokens": 1024,
                                 "size": {"name": "tiny", "n_layer": 1, "d_model": 32, "n_head": 1, "n_kv_head": 1,
                                          "ffn_dim": 96}})
    config = load_ladder_config(path, ["eval_samples=8"])
    points = plan_points(config, load_base(config, path))
    assert sorted(p.name for p in points) == ["lr=0.001-seed1", "lr=0.001-seed2", "lr=0.01-seed1", "lr=0.01-seed2"]
    p = next(p for p in points if p.name == "lr=0.01-seed2")
    assert p.train_config["optim"]["lr"] == 0.01 and p.train_config["seed"] == 2
    assert p.train_config["data"]["seed"] == 2
    summary = run_ladder(config, path, console=lambda *a: None)
    text = (tmp_path / "ladder" / "ladder.md").read_text()
    assert "## Ablation of `optim.lr`" in text and "exceeds the seed spread?" in text
    figure = summary["figures"]["ablation"]
    assert png_size(tmp_path / "ladder" / "ablation.png") == (figure.width, figure.height)
    finished = [json.loads((tmp_path / "ladder" / "points" / p.name / RESULT_FILE).read_text()) for p in points]
    plotted = [y for label, _, ys in figure.lines if label.endswith(": seeds") for y in ys]
    assert sorted(plotted) == sorted(r["val_loss"] for r in finished)
    report = json.loads((tmp_path / "ladder" / "ladder.json").read_text())
    assert [row["n"] for row in report["ablation"]] == [2, 2] and "p" in report["ablation"][1]
    # text and code scored apart as well, each on its own held-out blocks
    by_dataset = report["ablation_by_dataset"]
    assert sorted(by_dataset) == ["code", "nl"] and "On `code`'s held-out blocks alone" in text
    for r in finished:
        assert sorted(r["by_dataset"]) == ["code", "nl"] and r["by_dataset"]["nl"]["val_blocks"] == 8
    means = [np.mean([r["by_dataset"]["code"]["val_loss"] for r in finished if r["value"] == v]) for v in (1e-3, 1e-2)]
    assert [row["mean"] for row in by_dataset["code"]] == pytest.approx(means)


@pytest.mark.parametrize("override, message", [
    (["tokens=[1e6]", "budgets=[1e12]"], "either tokens"),
    (["tokens=[]"], "give tokens"),
    (["flops=7nd"], "flops '7nd'"),
    (["sizes=[{preset: tinyllama-2m}]"], "unknown model preset"),
    (["tokens=[100]"], "fewer than min_steps"),
    (["colour=red"], "override 'colour=red': colour: unknown key"),
    (["base=missing.yaml"], "missing.yaml not found"),
])
def test_bad_config_gives_one_error_line(tiny_dataset, tmp_path, capsys, override, message):
    path = tiny_ladder(tiny_dataset, tmp_path)
    assert main(["ladder", str(path), *override, "--dry-run"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err


def test_dry_run_lists_points(tiny_dataset, tmp_path, capsys):
    path = tiny_ladder(tiny_dataset, tmp_path)
    assert main(["ladder", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "grid study, 4 points" in out and "tiny-2.56k" in out and "new" in out


def test_a_changed_recipe_is_not_mixed_with_old_points(tiny_dataset, tmp_path):
    path = tiny_ladder(tiny_dataset, tmp_path)
    config = load_ladder_config(path)
    point = plan_points(config, load_base(config, path))[0]
    run_dir = tmp_path / "ladder" / "points" / point.name
    run_dir.mkdir(parents=True)
    (run_dir / RESULT_FILE).write_text(json.dumps({"spec_hash": point.spec_hash, "val_loss": 5.0}))
    changed = load_ladder_config(path, ["overrides=[optim.lr=1e-2]"])
    assert plan_points(changed, load_base(changed, path))[0].spec_hash != point.spec_hash
    with pytest.raises(LadderError, match="different config"):
        run_ladder(changed, path, console=lambda *a: None)


def test_a_wsd_ladder_trains_one_run_per_size_and_branches_the_other_budgets(tiny_dataset, tmp_path, capsys):
    """schedule: wsd. Per size, the longest budget is one WSD run; the shorter ones branch from its stable
    phase at their own decay start and train only their decay: what they compute equals a separate WSD run
    of their length (tests/test_train_trainer.py checks that bit for bit)."""
    path = tiny_ladder(tiny_dataset, tmp_path, schedule="wsd", tokens=[1536, 2560, 4096], cosine_baseline=["small"])
    config = load_ladder_config(path, ["jobs=2", "threads=1"])
    points = {p.name: p for p in plan_points(config, load_base(config, path))}
    # the cosine baseline: the trunk again, differing only in its schedule (and where it is written)
    baseline, = cosine_baselines(list(points.values()), config.cosine_baseline, config.out_dir)
    assert baseline.name == "cosine-small-4.1k" and baseline.steps == points["small-4.1k"].steps
    differs = {k for k in baseline.train_config if baseline.train_config[k] != points["small-4.1k"].train_config[k]}
    assert differs == {"optim", "run_dir", "checkpoint_steps"}
    assert {**baseline.train_config["optim"], "schedule": "wsd"} == points["small-4.1k"].train_config["optim"]
    trunk, branch = points["small-4.1k"], points["small-1.54k"]
    assert trunk.depends_on is None and branch.depends_on == "small-4.1k"
    assert (branch.steps, branch.branch_step) == (6, 5)  # the last 20% (1 of 6 steps) decays
    assert branch.train_config["train"]["init_from"].endswith("small-4.1k/checkpoints/step-00000005")
    assert trunk.train_config["checkpoint_steps"] == [5, 8]  # 2.56k: 10 steps, decay from 8
    assert {p.train_config["optim"]["schedule"] for p in points.values()} == {"wsd"}
    assert {p.train_config["optim"]["warmup_steps"] for p in points.values()} == {1}
    order = [p.name for p in plan_points(config, load_base(config, path))]
    assert all(order.index(p.depends_on) < order.index(name) for name, p in points.items() if p.depends_on)
    assert main(["ladder", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "(branch of small-4.1k at step 5)" in out and "as separate runs" in out

    summary = run_ladder(config, path, console=lambda *a: None)
    assert summary["finished"] == 6
    ladder = tmp_path / "ladder" / "points"
    trained = [json.loads(l)["step"] for l in (ladder / "small-1.54k" / "metrics.jsonl").read_text().splitlines()
               if "loss" in json.loads(l)]
    assert trained == [6]  # only its decay
    trunk_metrics = {json.loads(l)["step"]: json.loads(l) for l in (ladder / "small-4.1k" / "metrics.jsonl")
                     .read_text().splitlines() if "loss" in json.loads(l)}
    assert trunk_metrics[5]["lr"] == trunk_metrics[6]["lr"]  # still stable where the branch decays
    assert (ladder / "small-4.1k" / "checkpoints" / "step-00000005").is_dir()  # branch points are kept
    cosine = [json.loads(l) for l in (ladder / "cosine-small-4.1k" / "metrics.jsonl").read_text().splitlines()]
    assert cosine[-1]["step"] == 16 and [r["lr"] for r in cosine if r.get("step") == 5][0] < trunk_metrics[5]["lr"]
    pair, = json.loads((tmp_path / "ladder" / "ladder.json").read_text())["wsd_vs_cosine"]
    wsd, cos = (json.loads((ladder / n / RESULT_FILE).read_text())["val_loss"]
                for n in ("small-4.1k", "cosine-small-4.1k"))
    assert (pair["wsd"], pair["cosine"]) == (wsd, cos) and pair["gap"] == pytest.approx(wsd / cos - 1)
    assert "## WSD vs cosine at equal budget" in (tmp_path / "ladder" / "ladder.md").read_text()


def test_a_learning_rate_sweep_per_size_sets_each_sizes_rate(tiny_dataset, tmp_path, capsys):
    path = tiny_ladder(tiny_dataset, tmp_path, lr_sweep=[3e-4, 3e-3, 3e-2], lr_sweep_tokens=1024,
                       tokens=[1536, 2560, 3584])
    config = load_ladder_config(path, ["jobs=2", "threads=1"])
    sweep = plan_points(config, load_base(config, path), sweep=True)
    assert sorted(p.name for p in sweep) == sorted(f"sweep-{s}-lr{lr:g}" for s in ("small", "tiny")
                                                   for lr in (3e-4, 3e-3, 3e-2))
    assert {p.steps for p in sweep} == {4}
    assert [p.train_config["optim"]["min_lr"] / p.value for p in sweep] == pytest.approx([0.1] * 6)  # the base's ratio
    summary = run_ladder(config, path, console=lambda *a: None)
    assert summary["finished"] == 6
    data = json.loads((tmp_path / "ladder" / "ladder.json").read_text())
    for size in ("tiny", "small"):
        entry = data["lr_sweep"][size]
        losses = {float(lr): loss for lr, loss in entry["losses"].items()}
        assert entry["chosen"] == min(losses, key=losses.get) and len(losses) == 3
        assert entry["at_edge"] == (entry["chosen"] in (3e-4, 3e-2))
        for point in data["points"]:
            if point["size"] == size:
                config_used = yaml.safe_load((tmp_path / "ladder" / "points" / point["name"] / "config.yaml").read_text())
                assert config_used["optim"]["lr"] == pytest.approx(entry["chosen"])
    assert "## Learning rate per size" in (tmp_path / "ladder" / "ladder.md").read_text()
    # the dry run plans the study at the rates the sweep chose: every point shows as done
    assert main(["ladder", str(path), "--dry-run"]) == 0
    listed = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(("tiny-", "small-"))]
    assert len(listed) == 6 and {row[6] for row in listed} == {"done"}


def test_held_out_points_are_predicted_before_they_are_trained(tiny_dataset, tmp_path, monkeypatch):
    path = tiny_ladder(tiny_dataset, tmp_path, tokens=[1024, 1536, 2560],
                       holdout=[{"name": "wider", "size": {"name": "wide", "n_layer": 2, "d_model": 96, "n_head": 2,
                                                           "n_kv_head": 1, "ffn_dim": 256}, "tokens": 3072},
                                {"name": "longer", "size": {"name": "tiny", "n_layer": 1, "d_model": 32, "n_head": 1,
                                                            "n_kv_head": 1, "ffn_dim": 96}, "tokens": 5120}])
    config = load_ladder_config(path, ["jobs=1"])
    predictions = tmp_path / "ladder" / "predictions.json"
    import compactlm.ladder.grid as grid_module

    seen, real = [], grid_module.run_point

    def watching(payload):  # when a held-out point starts, its prediction is already on disk
        if payload["point"]["name"].startswith("holdout-"):
            seen.append(payload["point"]["name"] in json.loads(predictions.read_text())["predictions"])
        return real(payload)

    monkeypatch.setattr(grid_module, "run_point", watching)
    run_ladder(config, path, console=lambda *a: None)
    assert seen == [True, True]
    first = predictions.read_text()
    recorded = json.loads(first)
    assert len(recorded["fitted_points"]) == 6 and not any(n.startswith("holdout") for n in recorded["fitted_points"])
    data = json.loads((tmp_path / "ladder" / "ladder.json").read_text())
    held = {p["name"]: p for p in data["holdout"]["points"]}
    assert set(held) == {"holdout-wider", "holdout-longer"}
    for p in held.values():
        assert p["measured"] is not None and p["error"] == pytest.approx(p["predicted"] / p["measured"] - 1)
    assert held["holdout-wider"]["N_over_largest_fitted"] > 1
    assert "## Held-out predictions" in (tmp_path / "ladder" / "ladder.md").read_text()
    # a study extended afterwards reports against the first prediction: it is never rewritten
    extended = load_ladder_config(path, ["jobs=1", "tokens=[1024, 1536, 2048, 2560]"])
    run_ladder(extended, path, console=lambda *a: None)
    assert predictions.read_text() == first
