"""Ablation reports: each knob value's seeds, their mean and spread, and whether a difference from the first
value exceeds the seeds' spread (Welch's test), on the validation mix and on each dataset alone."""

from __future__ import annotations

import math

import numpy as np

from compactlm.ladder.config import LadderConfig
from compactlm.ladder.plots import markdown_table, plot_ablation, points_table


def ablation_table(rows: list[dict], labels: list[str], dataset: str | None = None) -> tuple[list, list]:
    """Per knob value: the mean and spread of the seeds' val loss (on one dataset's held-out blocks if given),
    and the difference from the first value with Welch's test."""
    from scipy import stats

    def loss(r: dict) -> float:
        return r["val_loss"] if dataset is None else r["by_dataset"][dataset]["val_loss"]

    groups = [(label, [loss(r) for r in rows if r["size"] == label]) for label in labels]
    groups = [(label, losses) for label, losses in groups if losses]
    table = []
    ref_label, ref = groups[0]
    for label, losses in groups:
        mean, std = float(np.mean(losses)), float(np.std(losses, ddof=1)) if len(losses) > 1 else float("nan")
        row = {"value": label, "n": len(losses), "mean": mean, "std": std, "delta": mean - float(np.mean(ref))}
        if label != ref_label and len(losses) > 1 and len(ref) > 1:
            se = math.sqrt(np.var(losses, ddof=1) / len(losses) + np.var(ref, ddof=1) / len(ref))
            p = float(stats.ttest_ind(losses, ref, equal_var=False).pvalue) if se > 0 else float("nan")
            row.update(se=se, p=p, significant=bool(abs(row["delta"]) > 2 * se))
        table.append(row)
    return table, groups


def ablation_section(config: LadderConfig, rows: list[dict], plot, data: dict) -> list[str]:
    a = config.ablation
    labels = list(dict.fromkeys(r["size"] for r in sorted(rows, key=lambda r: _value_order(a, r))))
    if not rows:
        return ["No finished points.\n"]
    table, groups = ablation_table(rows, labels)
    data["ablation"] = table
    first = rows[0]
    md = [f"## Ablation of `{a.knob}`\n",
          f"Size: N {first['n_params']:,} (non-embedding); {first['tokens']:,} tokens ({first['steps']} steps) per "
          f"run; seeds {a.seeds} set into {', '.join(f'`{k}`' for k in a.seed_keys)}.\n\n"]
    md += _ablation_table_md(a.knob, table, "val loss (all held-out blocks)")
    datasets = [d for d in first.get("by_dataset", {}) if all(d in r.get("by_dataset", {}) for r in rows)]
    if datasets:
        data["ablation_by_dataset"] = {}
        for d in datasets:
            data["ablation_by_dataset"][d], _ = ablation_table(rows, labels, d)
            md += [f"\nOn `{d}`'s held-out blocks alone:\n"]
            md += _ablation_table_md(a.knob, data["ablation_by_dataset"][d], f"val loss ({d})")
    md.append("\nA difference counts as real when it exceeds twice its standard error from the seeds' spread "
              "(Welch); with three seeds that is a rough test — add seeds before trusting a small gap.\n")
    md.append("\n" + points_table(rows, None))
    plot("ablation", plot_ablation, groups, a.knob)
    return md


def _ablation_table_md(knob: str, table: list[dict], measure: str) -> list[str]:
    body = []
    for row in table:
        verdict = "reference"
        if "se" in row:
            p = "n/a" if math.isnan(row["p"]) else f"{row['p']:.3f}" if row["p"] >= 0.001 else "< 0.001"
            verdict = (f"{'yes' if row['significant'] else 'no'} (size of Δ {abs(row['delta']):.4f} vs 2 SE "
                       f"{2 * row['se']:.4f}; Welch p {p})")
        elif row is not table[0]:
            verdict = "one seed: cannot tell"
        body.append([row["value"], row["n"], f"{row['mean']:.4f} ± {row['std']:.4f}" if row["n"] > 1 else
                     f"{row['mean']:.4f}", f"{row['delta']:+.4f}", verdict])
    return [markdown_table([knob, "seeds", f"{measure}: mean ± std", "Δ vs first", "exceeds the seed spread?"],
                           body)]


def _value_order(ablation, row) -> int:
    for i, value in enumerate(ablation.values):
        if row.get("value") == value:
            return i
    return len(ablation.values)
