"""`OUT/ladder.md`, `OUT/ladder.json` and the PNG plots, written atomically from the finished points."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from compactlm.fileio import atomic_write
from compactlm.ladder import fit as F
from compactlm.ladder.config import LadderConfig
from compactlm.ladder.grid import Point
from compactlm.ladder.holdout import section as holdout_section
from compactlm.ladder.ablation import ablation_section
from compactlm.ladder.plots import (count, markdown_table, num, plot_extrapolation, plot_isoflop, plot_law_fit,
                                    plot_loss_vs_tokens, plot_residuals, points_table)
from compactlm.ladder.verdict import verdict_section

PLOTS = {"loss_vs_tokens": "loss_vs_tokens.png", "isoflop": "isoflop.png", "law_fit": "law_fit.png",
         "residuals": "residuals.png", "extrapolation": "extrapolation.png", "ablation": "ablation.png"}


def _ci(values, confidence: float, fmt=num) -> str:
    low, high = F.interval(values, confidence)
    return f"[{fmt(low)}, {fmt(high)}]" if np.isfinite(low) else "n/a"


# ---- analysis -----------------------------------------------------------------------------------
def flops_curve(config: LadderConfig, rows: list[dict]) -> F.FlopsCurve:
    """F(N) for the compute-optimal analysis: 6N, or the model count between the ladder's shapes and the
    target's family (the presets above the ladder's largest size, at the target's vocabulary and context)."""
    if config.flops == "6nd":
        return F.FlopsCurve()
    from compactlm.config.model import PRESETS, get_preset

    anchors = [(r["n_params"], r["flops_per_token"]) for r in rows]
    largest = max(n for n, _ in anchors)
    target = get_preset(config.fit.target, vocab_size=config.fit.target_vocab, max_seq_len=config.fit.target_seq_len)
    for name in PRESETS:
        cfg = get_preset(name, vocab_size=config.fit.target_vocab, max_seq_len=config.fit.target_seq_len)
        if cfg.non_embedding_params > 4 * largest or name == config.fit.target:
            anchors.append((cfg.non_embedding_params, cfg.flops_per_token(config.fit.target_seq_len)))
    anchors.append((target.non_embedding_params, target.flops_per_token(config.fit.target_seq_len)))
    return F.FlopsCurve(anchors)


# ---- the report -----------------------------------------------------------------------------------
def write_report(config: LadderConfig, points: list[Point], results: dict[str, dict], out: Path,
                 config_path=None, console=print, lr_sweeps: dict | None = None,
                 holdout: tuple[dict, dict] | None = None, wsd_vs_cosine: list[dict] | None = None) -> dict:
    """ladder.md, ladder.json and the plots. lr_sweeps: best_learning_rates' result; holdout: (the
    recorded predictions, the held-out points' results); wsd_vs_cosine: ladder.wsd.wsd_vs_cosine's pairs."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [results[p.name] for p in points if p.name in results]
    rows.sort(key=lambda r: (r["n_params"], r["tokens"], str(r.get("value")), r.get("seed") or 0))
    conf = config.fit.confidence
    data: dict = {"mode": config.mode, "flops": config.flops, "points": rows, "planned": len(points)}
    md = [f"# Ladder report: {config.out_dir}\n",
          f"`compactlm ladder {config_path or '<config>'}`: {config.mode} study, {len(rows)} of {len(points)} "
          f"points finished. Base train config `{config.base}`"
          + (f" with {' '.join(f'`{o}`' for o in config.overrides)}" if config.overrides else "") + ".\n",
          "N counts non-embedding parameters (transformer blocks and final norm; not the embedding or the head). "
          + ("C = flops_per_token(seq_len) x D: the model's training FLOPs per token (6 x the weights of every "
             "matmul, the output head included, plus attention scores), times the tokens trained."
             if config.flops == "model" else "C = 6 N D (the Kaplan/Chinchilla approximation).")
          + f" Loss: mean next-token cross-entropy (nats) on the same {rows[0]['val_blocks'] if rows else '?'} "
          "held-out blocks for every point, after the run's last step.\n"]
    written, figures = [], {}

    def plot(key: str, fn, *args) -> None:
        figures[key] = fn(*args, out / PLOTS[key])
        written.append(PLOTS[key])

    if lr_sweeps:
        data["lr_sweep"] = lr_sweeps
        md += _sweep_section(config, lr_sweeps)
    law = None
    if rows and config.mode != "ablation":
        md += ["## Points\n"]
    if config.mode == "ablation":
        md += ablation_section(config, rows, plot, data)
    elif len(rows) >= 5:
        md += _scaling_sections(config, rows, plot, data, conf)
        law = data.get("law")
    else:
        md.append(points_table(rows, None))
        md.append(f"\nToo few finished points to fit ({len(rows)}; 5 parameters need at least 5).\n")
        if rows:
            plot("loss_vs_tokens", plot_loss_vs_tokens, rows, None)
    if wsd_vs_cosine:
        md += _wsd_vs_cosine_section(config, wsd_vs_cosine, data)
    if holdout is not None:
        md += holdout_section(*holdout, data)
    md += ["\n## Plots\n"] + [f"![{name}]({name})\n" for name in written]
    data.pop("law", None)
    report = out / "ladder.md"
    atomic_write(out / "ladder.json", [json.dumps(data, indent=2, default=_json_default).encode() + b"\n"])
    atomic_write(report, ["\n".join(md).encode()])
    console(f"wrote {report}, {out / 'ladder.json'} and {len(written)} plot(s)")
    return {"report": str(report), "plots": written, "figures": figures,
            "law": law.as_dict() if law is not None else None}


RMS_TARGET = 0.01  # residuals' RMS at most 1%
HALF_WIDTH_TARGET = 0.1  # alpha's and beta's intervals narrower than +/- 0.1


def _fit_targets(boots, conf: float, data: dict) -> str:
    """Whether the fit is identified well enough to answer its question: the residuals' RMS and the half-widths
    of alpha's and beta's intervals against fixed targets (stored in ladder.json's `targets`)."""
    targets = {"rms_residual": {"value": data["rms_residual"], "target": RMS_TARGET,
                                "met": data["rms_residual"] <= RMS_TARGET}}
    for k in ("alpha", "beta"):
        low, high = F.interval([b.as_dict()[k] for b in boots], conf) if boots else (math.nan, math.nan)
        half = (high - low) / 2
        targets[f"{k}_half_width"] = {"value": half, "interval": [low, high], "target": HALF_WIDTH_TARGET,
                                      "met": bool(half < HALF_WIDTH_TARGET)}
    data["targets"] = targets

    def verdict(key: str) -> str:
        return "met" if targets[key]["met"] else "missed"

    return (f"\nTargets: residual RMS <= {RMS_TARGET:.0%}: {verdict('rms_residual')}; alpha's and beta's intervals "
            f"narrower than ±{HALF_WIDTH_TARGET:g}: alpha ±{targets['alpha_half_width']['value']:.3f} "
            f"({verdict('alpha_half_width')}), "
            f"beta ±{targets['beta_half_width']['value']:.3f} ({verdict('beta_half_width')}).\n")


def _wsd_vs_cosine_section(config: LadderConfig, pairs: list[dict], data: dict) -> list[str]:
    data["wsd_vs_cosine"] = pairs
    body = [[p["size"], count(p["N"]), count(p["D"]), p["steps"], f"{p['wsd']:.4f}", f"{p['cosine']:.4f}",
             f"{100 * p['gap']:+.2f}%"] for p in pairs]
    return ["\n## WSD vs cosine at equal budget\n",
            "Each size's WSD run (the trunk its shorter budgets branch from) against the same run with a cosine "
            "decay over all its steps: same warm-up, peak and final learning rate, data order and seed. "
            "Hägele et al. 2024 found WSD with a 20% 1-sqrt cooldown within a fraction of a percent of cosine.\n\n",
            markdown_table(["size", "N", "D", "steps", "WSD loss", "cosine loss", "WSD vs cosine"], body)]


def _total_params_fit(rows: list[dict], D, L, fit_cfg, data: dict) -> str:
    """The same fit with N = all parameters (embedding and head included), as Hoffmann et al. counted them:
    the law above counts non-embedding ones, which Kaplan et al. found to give cleaner power laws; where
    the embedding is a large share of a small model, the two disagree (Pearce and Song 2024)."""
    total = np.array([r["total_params"] for r in rows], float)
    law = F.fit_law(total, D, L, fit_cfg.huber_delta, fit_cfg.starts)
    predicted = law.predict(total, D)
    rms = float(np.sqrt(np.mean((L / predicted - 1) ** 2)))
    share = float(np.mean([1 - r["n_params"] / r["total_params"] for r in rows]))
    data["fit_total_params"] = {**law.as_dict(), "r2": F.r_squared(L, predicted), "rms_residual": rms,
                                "embedding_share": share}
    return (f"\nWith N = all parameters instead (embedding and head: {100 * share:.0f}% of them on average here): "
            f"alpha {law.alpha:.3f}, beta {law.beta:.3f}, E {law.E:.3f}, a = {law.a:.3f}; R² "
            f"{data['fit_total_params']['r2']:.4f}, residual RMS {100 * rms:.2f}%. The law above (non-embedding N) is "
            "the one used below.\n")


def _sweep_section(config: LadderConfig, sweeps: dict) -> list[str]:
    lrs = sorted(config.lr_sweep)
    body = [[size, *(f"**{e['losses'][lr]:.4f}**" if lr == e["chosen"] else
                     f"{e['losses'][lr]:.4f}" if lr in e["losses"] else "-" for lr in lrs),
             f"{e['chosen']:g}" + (" (at the edge)" if e["at_edge"] else "")] for size, e in sweeps.items()]
    edge = [s for s, e in sweeps.items() if e["at_edge"]]
    return ["## Learning rate per size\n",
            f"Short runs ({count(config.lr_sweep_tokens) if config.lr_sweep_tokens else 'the smallest budget'} "
            "tokens each) at every peak learning rate; each size's points use its best. "
            + (f"**At the edge of the sweep for {', '.join(edge)}**: a wider sweep may find a better rate.\n\n"
               if edge else "Every chosen rate lies inside the sweep.\n\n"),
            markdown_table(["size", *(f"lr {lr:g}" for lr in lrs), "chosen"], body), ""]


def _json_default(x):
    if isinstance(x, F.LawFit):
        return x.as_dict()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return str(x)


def _scaling_sections(config: LadderConfig, all_rows: list[dict], plot, data: dict, conf: float) -> list[str]:
    fit_cfg = config.fit
    rows = F.fitted_rows(all_rows, fit_cfg.min_steps)
    left_out = [r["name"] for r in all_rows if r["steps"] < fit_cfg.min_steps]
    data["left_out_of_fits"] = left_out
    if len(rows) < 5:
        return [points_table(all_rows, None),
                f"\nToo few points with at least fit.min_steps {fit_cfg.min_steps} steps to fit ({len(rows)}).\n"]
    N = np.array([r["n_params"] for r in rows], float)
    D = np.array([r["tokens"] for r in rows], float)
    L = np.array([r["val_loss"] for r in rows], float)
    law, boots = F.fit_with_intervals(rows, fit_cfg)
    predicted = law.predict(N, D)
    rel = L / predicted - 1
    r2, r2_log = F.r_squared(L, predicted), F.r_squared(np.log(L), np.log(predicted))
    data.update(law=law, fit=law.as_dict(), r2=r2, r2_log=r2_log, rms_residual=float(np.sqrt(np.mean(rel ** 2))),
                max_residual=float(np.abs(rel).max()), bootstrap=[b.as_dict() for b in boots])
    md = [points_table(all_rows, law)]
    if left_out:
        md.append(f"\nLeft out of the fits (fewer than fit.min_steps = {fit_cfg.min_steps} optimizer steps): "
                  f"{', '.join(left_out)}.\n")
    md += ["\n## Fit: L(N, D) = E + A / N^alpha + B / D^beta (Chinchilla approach 3)\n",
           f"Huber loss (delta {fit_cfg.huber_delta:g}) on log-loss residuals, log-sum-exp parametrisation, "
           f"L-BFGS from the {fit_cfg.starts} best points of Chinchilla's initialisation grid. "
           f"{conf:.0%} intervals: {len(boots)} bootstrap refits (points resampled with replacement).\n"]
    params = [("E", "irreducible loss"), ("A", ""), ("alpha", "N exponent"), ("B", ""), ("beta", "D exponent"),
              ("a", "N*(C) ~ C^a, = beta/(alpha+beta)"), ("b", "D*(C) ~ C^b, = alpha/(alpha+beta)")]
    fitted = law.as_dict()
    md.append(markdown_table(["parameter", "fit", f"{conf:.0%} CI", "meaning"],
                             [[k, num(fitted[k], 4), _ci([b.as_dict()[k] for b in boots], conf), meaning]
                              for k, meaning in params]))
    md.append(f"\nQuality: R² {r2:.4f} on the losses ({r2_log:.4f} on log-losses); residuals (measured / predicted - 1): "
              f"RMS {100 * data['rms_residual']:.2f}%, largest {100 * data['max_residual']:.2f}% "
              f"({rows[int(np.abs(rel).argmax())]['name']}). {len(rows)} points for 5 parameters.\n")
    md.append(_fit_targets(boots, conf, data))
    md.append(_total_params_fit(rows, D, L, fit_cfg, data))
    plot("loss_vs_tokens", plot_loss_vs_tokens, rows, law)
    plot("law_fit", plot_law_fit, rows, law, r2)
    plot("residuals", plot_residuals, rows, law)

    flops = flops_curve(config, rows)
    md += ["\n## Compute-optimal scaling\n",
           f"Approach 3 (from the fit): N*(C) ~ C^{law.a:.3f}, D*(C) ~ C^{law.b:.3f} under C = 6ND "
           f"({conf:.0%} CI a {_ci([b.a for b in boots], conf)}, b {_ci([b.b for b in boots], conf)}).\n"]
    groups: dict[float, tuple[list, list, list]] = {}
    for r in rows:
        if r.get("budget"):
            ns, fs, ls = groups.setdefault(r["budget"], ([], [], []))
            ns.append(r["n_params"]), fs.append(r["flops_per_token"]), ls.append(r["val_loss"])
    groups = {c: g for c, g in groups.items() if len(set(g[0])) >= 3}
    if groups:
        window = fit_cfg.isoflop_window
        approach2 = F.isoflop_minima(groups, window)
        boots2 = F.bootstrap_isoflop(groups, max(fit_cfg.bootstrap, 1), fit_cfg.seed, window)
        data["isoflop"] = approach2
        body = []
        for m in approach2["minima"]:
            n3, d3, l3 = F.compute_optimal(law, m["C"], flops)
            body.append([num(m["C"], 3), count(m["N"]), count(m["D"]), num(m["loss"], 4),
                         "yes" if m["inside"] else ("no (extrapolated)" if m["valid"] else "no minimum"),
                         count(n3), count(d3), num(l3, 4)])
        through = (f"the {window} sizes around each budget's lowest loss" if window else "each budget's points")
        md.append(f"\nApproach 2 (isoFLOP profiles): a parabola in log N through {through}; its vertex "
                  "is N*, and D* = C / FLOPs-per-token(N*). Approach 3's optimum at the same C beside it.\n\n")
        md.append(markdown_table(["C (FLOPs)", "N* (parabola)", "D*", "L*", "vertex inside the sizes tried",
                                  "N* (law)", "D* (law)", "L* (law)"], body))
        if np.isfinite(approach2["a"]):
            md.append(f"\nApproach 2 fits: N*(C) ~ C^{approach2['a']:.3f} ({conf:.0%} CI "
                      f"{_ci([b['a'] for b in boots2], conf)}), D*(C) ~ C^{approach2['b']:.3f} "
                      f"({_ci([b['b'] for b in boots2], conf)}), from {sum(m['valid'] for m in approach2['minima'])} "
                      f"budgets (C in this study's FLOPs measure; CIs from {len(boots2)} resamples of each budget's "
                      "points).\n")
        else:
            md.append("\nApproach 2: fewer than two budgets have a minimum; no exponent.\n")
        plot("isoflop", plot_isoflop, groups, approach2, law, flops, window)

    md += _target_section(config, law, boots, flops, rows, plot, data, conf)
    md += verdict_section(config, law, flops, rows, data)
    return md


def _target_section(config, law, boots, flops, rows, plot, data, conf) -> list[str]:
    from compactlm.config.model import get_preset

    fit_cfg = config.fit
    target = get_preset(fit_cfg.target, vocab_size=fit_cfg.target_vocab, max_seq_len=fit_cfg.target_seq_len)
    n_ref, d_ref = float(target.non_embedding_params), float(fit_cfg.target_tokens)
    try:
        main = F.target_analysis(law, flops, n_ref, d_ref)
    except (ValueError, ZeroDivisionError, OverflowError, FloatingPointError) as exc:
        data["target"] = {"name": fit_cfg.target, "error": str(exc)}
        return [f"\n## Extrapolation: {fit_cfg.target} trained on {count(d_ref)} tokens\n",
                f"Not computable from this fit ({exc}): the law has no usable optimum.\n"]
    per_boot = []
    for b in boots:
        try:
            per_boot.append(F.target_analysis(b, flops, n_ref, d_ref))
        except (ValueError, ZeroDivisionError, OverflowError, FloatingPointError):
            continue
    data["target"] = {"name": fit_cfg.target, **main}

    def ci(key, fmt=num):
        return _ci([t[key] for t in per_boot], conf, fmt)

    n_max, d_max = max(r["n_params"] for r in rows), max(r["tokens"] for r in rows)
    rows_md = [
        ["compute-optimal tokens D_opt for this N", count(main["D_opt"]), ci("D_opt", count)],
        ["  = tokens per parameter", f"{main['tokens_per_param_opt']:.1f}", ci("tokens_per_param_opt")],
        ["loss at D_opt", num(main["loss_at_D_opt"], 4), ci("loss_at_D_opt")],
        [f"loss at D = {count(d_ref)}", num(main["loss"], 4), ci("loss")],
        [f"what {count(d_ref)} tokens buy over D_opt (loss drop)", num(main["loss_gain"], 3), ci("loss_gain")],
        ["over-training factor D / D_opt", f"{main['overtraining']:.3g}x", ci("overtraining")],
        ["training compute C = F(N) x D", num(main["C"]), "-"],
        ["compute-optimal model at that C: N*", count(main["N_star"]), ci("N_star", count)],
        ["  its tokens D*", count(main["D_star"]), ci("D_star", count)],
        ["  its loss", num(main["loss_star"], 4), ci("loss_star")],
        ["equal-loss larger model at equal compute: N", count(main["N_equal_loss"]), ci("N_equal_loss", count)],
        ["  its tokens", count(main["D_equal_loss"]), ci("D_equal_loss", count)],
        ["compute the optimal frontier needs for the same loss", num(main["C_equal_loss"]), ci("C_equal_loss")],
        ["  = compute over-training spends for it (ratio)", f"{main['compute_ratio']:.2f}x", ci("compute_ratio")],
    ]
    md = [f"\n## Extrapolation: {fit_cfg.target} trained on {count(d_ref)} tokens\n",
          f"N = {n_ref:,.0f} non-embedding parameters ({target.num_params:,} in all at vocabulary "
          f"{fit_cfg.target_vocab}), {target.flops_per_token(fit_cfg.target_seq_len) / 1e9:.2f} GFLOPs per "
          f"training token at context {fit_cfg.target_seq_len}. {len(per_boot)} bootstrap fits for the "
          f"{conf:.0%} intervals.\n\n",
          markdown_table(["quantity", "law", f"{conf:.0%} CI"], rows_md),
          f"\n**Caveat.** This extrapolates the law {n_ref / n_max:,.0f}x beyond the largest N measured "
          f"({count(n_max)}) and {d_ref / d_max:,.0f}x beyond the largest D ({count(d_max)}). Losses are in "
          "nats on this study's data and tokenizer, not on the target's (E in particular is a property of the "
          "corpus); only the shape of the trade-off (tokens per parameter, loss drops, compute ratios) carries "
          "over, and even that holds only if the exponents stay constant over the whole range, which "
          "nothing here tests. The intervals show the statistical uncertainty of the fit alone.\n"]
    if all(math.isfinite(main[k]) for k in ("D_opt", "loss_star", "N_star")) and main["D_opt"] < 1e40:
        plot("extrapolation", plot_extrapolation, law, boots, flops, main, fit_cfg.target, conf)
    else:  # a degenerate fit (too few or too noisy points) has no optimum to draw
        md.append("\nNo extrapolation plot: this fit's compute-optimal point is not finite.\n")
    return md
