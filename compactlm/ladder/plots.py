"""The ladder's PNG plots, each returning what it shows (compactlm.plotting.Figure)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from compactlm.ladder import fit as F
from compactlm.plotting import Figure, pyplot, save_figure


# ---- number formatting (the report and the plots) ---------------------------------------------------------------------------------
def num(x: float, digits: int = 3) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        mantissa, exponent = f"{x:.{digits - 1}e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{x:.{digits}g}"


def count(x: float) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


# ---- plots ----------------------------------------------------------------------------------------
def _sizes(rows):
    order = sorted({(r["n_params"], r["size"]) for r in rows})
    cmap = pyplot().get_cmap("viridis")
    return {label: cmap(i / max(1, len(order) - 1) * 0.9) for i, (_, label) in enumerate(order)}, order


def plot_loss_vs_tokens(rows, law, out: Path) -> Figure:
    plt = pyplot()
    colors, order = _sizes(rows)
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for n, label in order:
        mine = sorted((r["tokens"], r["val_loss"]) for r in rows if r["size"] == label)
        ax.plot(*zip(*mine), "o-", color=colors[label], label=f"{label} (N {count(n)})")
        if law is not None:
            d = np.logspace(math.log10(min(t for t, _ in mine)) - 0.3, math.log10(max(t for t, _ in mine)) + 0.3, 50)
            ax.plot(d, law.predict(n, d), "--", color=colors[label], alpha=0.6, lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("tokens trained D")
    ax.set_ylabel("final validation loss (nats/token)")
    ax.set_title("loss vs tokens per size" + (" (dashed: fitted law)" if law is not None else ""))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_figure(fig, out)


def plot_isoflop(groups, approach2, law, flops, window: int, out: Path) -> Figure:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    cmap = plt.get_cmap("plasma")
    budgets = sorted(groups)
    for i, (budget, minimum) in enumerate(zip(budgets, approach2["minima"])):
        ns, _, ls = groups[budget]
        color = cmap(i / max(1, len(budgets) - 1) * 0.85)
        ax.plot(ns, ls, "o", color=color, label=f"C = {num(budget, 2)} FLOPs")
        if minimum["valid"]:
            c2, c1, c0 = minimum["coef"]
            used = [ns[j] for j in F.around_minimum(ns, ls, window)]
            x = np.linspace(math.log(min(used)) - 0.3, math.log(max(used)) + 0.3, 80)
            ax.plot(np.exp(x), c0 + c1 * x + c2 * x ** 2, "-", color=color, alpha=0.7)
            ax.plot([minimum["N"]], [minimum["loss"]], "*", ms=14, color=color, mec="black",
                    label=f"  parabola minimum N* {count(minimum['N'])}" + ("" if minimum["inside"] else " (outside)"))
        if law is not None:
            n_star, _, l_star = F.compute_optimal(law, budget, flops)
            ax.plot([n_star], [l_star], "D", ms=6, mfc="none", color=color)
    if law is not None:
        ax.plot([], [], "D", mfc="none", color="gray", label="law's optimum (approach 3)")
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("final validation loss (nats/token)")
    ax.set_title("isoFLOP profiles with fitted minima (approach 2)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return save_figure(fig, out)


def plot_law_fit(rows, law, r2: float, out: Path) -> Figure:
    plt = pyplot()
    colors, order = _sizes(rows)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    measured = np.array([r["val_loss"] for r in rows])
    for _, label in order:
        mine = [r for r in rows if r["size"] == label]
        ax.plot([float(law.predict(r["n_params"], r["tokens"])) for r in mine], [r["val_loss"] for r in mine], "o",
                color=colors[label], label=label)
    lo, hi = measured.min() - 0.05, measured.max() + 0.05
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    ax.set_xlabel("predicted L(N, D)")
    ax.set_ylabel("measured validation loss")
    ax.set_title(f"fitted law vs measured points (R² {r2:.3f})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out)


def plot_residuals(rows, law, out: Path) -> Figure:
    plt = pyplot()
    colors, order = _sizes(rows)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for _, label in order:
        mine = [r for r in rows if r["size"] == label]
        res = [100 * (r["val_loss"] / float(law.predict(r["n_params"], r["tokens"])) - 1) for r in mine]
        axes[0].plot([r["n_params"] for r in mine], res, "o", color=colors[label], label=label)
        axes[1].plot([r["tokens"] for r in mine], res, "o", color=colors[label])
    for ax, xlabel in zip(axes, ("non-embedding parameters N", "tokens trained D")):
        ax.axhline(0, color="black", lw=1)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter("")  # a span under a decade would label every minor tick, overlapping
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("residual: measured / predicted - 1 (%)")
    axes[0].legend(fontsize=8)
    fig.suptitle("residuals of the fitted law")
    return save_figure(fig, out)


def plot_extrapolation(law, boots, flops, target: dict, name: str, confidence: float, out: Path) -> Figure:
    plt = pyplot()
    rule = 20 * target["N"]  # Chinchilla's rule of thumb, for reference
    d = np.logspace(math.log10(min(target["D_opt"], rule)) - 1.0, math.log10(max(target["D"], target["D_opt"])) + 0.7, 120)
    fig, ax = plt.subplots(figsize=(8, 4.8))
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # degenerate laws overflow: left out
        y = law.predict(target["N"], d)
        ax.plot(d, np.where(np.isfinite(y), y, np.nan), color="tab:blue", label=f"predicted L({name}, D)")
        curves = np.array([b.predict(target["N"], d) for b in boots]) if boots else np.empty((0, len(d)))
    curves = curves[np.isfinite(curves).all(axis=1) & (np.abs(curves) < 1e6).all(axis=1)]
    if len(curves):
        tail = (1 - confidence) / 2 * 100
        low, high = np.percentile(curves, [tail, 100 - tail], axis=0)
        ax.fill_between(d, low, high, color="tab:blue", alpha=0.2, label=f"{confidence:.0%} bootstrap band")
    ax.axvline(target["D_opt"], color="tab:green", ls="--",
               label=f"compute-optimal D {count(target['D_opt'])} ({target['tokens_per_param_opt']:.0f} tokens/param)")
    ax.axvline(target["D"], color="tab:red", ls="--", label=f"trained D {count(target['D'])}")
    ax.axvline(rule, color="gray", ls="-.", lw=1, label=f"20 tokens/param (Chinchilla's rule of thumb) {count(rule)}")
    ax.axhline(target["loss_star"], color="gray", ls=":",
               label=f"loss of the compute-optimal model at equal compute (N {count(target['N_star'])})")
    ax.set_xscale("log")
    ax.set_xlabel("tokens trained D")
    ax.set_ylabel("predicted loss (this corpus, nats/token)")
    ax.set_title(f"{name} (N {count(target['N'])} non-embedding): extrapolated, very uncertain")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_figure(fig, out)


def plot_ablation(groups: list[tuple[str, list[float]]], knob: str, out: Path) -> Figure:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(groups) + 2), 4.5))
    for i, (label, losses) in enumerate(groups):
        ax.plot([i] * len(losses), losses, "o", color="tab:blue", alpha=0.6, label=f"{label}: seeds")
        if len(losses) > 1:
            ax.errorbar([i + 0.12], [np.mean(losses)], yerr=[np.std(losses, ddof=1)], fmt="s", color="black", capsize=4)
    ax.set_xticks(range(len(groups)), [g[0] for g in groups])
    ax.set_xlabel(knob)
    ax.set_ylabel("final validation loss (nats/token)")
    ax.set_title(f"ablation of {knob}: seeds (dots), mean ± std (squares)")
    ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, out)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def points_table(rows: list[dict], law) -> str:
    header = ["point", "N", "params (all)", "D", "D/N", "steps", "C (FLOPs)", "val loss", "bits/byte"]
    if law is not None:
        header += ["law", "residual"]
    header.append("train time")
    body = []
    for r in rows:
        row = [r["name"], f"{r['n_params']:,}", f"{r['total_params']:,}", f"{r['tokens']:,}",
               f"{r['tokens'] / r['n_params']:.1f}", str(r["steps"]), num(r["flops_model"]), f"{r['val_loss']:.4f}",
               f"{r['val_bpb']:.3f}"]
        if law is not None:
            predicted = float(law.predict(r["n_params"], r["tokens"]))
            row += [f"{predicted:.4f}", f"{100 * (r['val_loss'] / predicted - 1):+.2f}%"]
        row.append(f"{r['seconds']:.0f} s")
        body.append(row)
    return markdown_table(header, body)
