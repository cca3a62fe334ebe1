"""Held-out predictions: the test that makes a ladder trustworthy (Gadre et al. 2024, "Language models
scale reliably with over-training and on downstream tasks").

The law fitted on the study's points predicts each held-out run, with a bootstrap interval, and the
prediction is written to OUT/predictions.json before any held-out run is trained. The file is never
rewritten: a re-run, or a study extended afterwards, reports against the first prediction, so nothing
can be tuned after the held-out losses are seen. The report then sets measured against predicted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


from compactlm.fileio import atomic_write
from compactlm.ladder import fit as F
from compactlm.ladder.plots import count, markdown_table

PREDICTIONS_FILE = "predictions.json"
TARGET_ERROR = 0.015  # the target: within 1.5% of the measured loss, and inside the 95% interval


def predict(config, rows: list[dict], holdouts: list) -> dict:
    """{point name: {predicted, low, high, N, D, extrapolation in N and C}} from the law fitted on `rows`
    (the study's fitted_rows, as the report fits them)."""
    fit_cfg = config.fit
    law, boots = F.fit_with_intervals(rows, fit_cfg)
    n_max = max(r["n_params"] for r in rows)
    c_max = max(r["flops_model"] for r in rows)
    # the held-out shapes anchor F(N) too: the compute-optimal tokens of a size outside the study need its own cost
    anchors = [(r["n_params"], r["flops_per_token"]) for r in rows]
    anchors += [(p.n_params, p.flops_per_token) for p in holdouts]
    flops = F.FlopsCurve(anchors if config.flops == "model" else None)
    out = {}
    for p in holdouts:
        samples = [float(b.predict(p.n_params, p.tokens)) for b in boots]
        low, high = F.interval(samples, fit_cfg.confidence) if samples else (math.nan, math.nan)
        out[p.name] = {"predicted": float(law.predict(p.n_params, p.tokens)), "low": low, "high": high,
                       "N": p.n_params, "D": p.tokens,
                       "N_over_largest_fitted": p.n_params / n_max, "C_over_largest_fitted": p.flops() / c_max,
                       "D_over_compute_optimal": p.tokens / F.optimal_tokens(law, p.n_params, flops)}
    return {"fitted_points": sorted(r["name"] for r in rows), "law": law.as_dict(), "confidence": fit_cfg.confidence,
            "predictions": out}


def recorded(out: Path) -> dict | None:
    """The predictions written by an earlier run, if any: the first prediction stands."""
    path = Path(out) / PREDICTIONS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def record(out: Path, predictions: dict) -> dict:
    atomic_write(Path(out) / PREDICTIONS_FILE, [json.dumps(predictions, indent=2).encode() + b"\n"])
    return predictions


def section(predictions: dict, results: dict[str, dict], data: dict) -> list[str]:
    """Measured against predicted, for every held-out point that has finished."""
    rows, body = [], []
    for name, p in predictions["predictions"].items():
        measured = results.get(name, {}).get("val_loss")
        entry = {"name": name, **p, "measured": measured}
        if measured is not None:
            entry["error"] = p["predicted"] / measured - 1
            entry["inside_interval"] = bool(p["low"] <= measured <= p["high"])
            entry["meets_target"] = abs(entry["error"]) <= TARGET_ERROR and entry["inside_interval"]
        rows.append(entry)
        body.append([name, count(p["N"]), count(p["D"]), f"{p['N_over_largest_fitted']:.2g}x",
                     f"{p['C_over_largest_fitted']:.2g}x", f"{p.get('D_over_compute_optimal', math.nan):.2g}x",
                     f"{p['predicted']:.4f} [{p['low']:.4f}, {p['high']:.4f}]",
                     "-" if measured is None else f"{measured:.4f}",
                     "-" if measured is None else f"{100 * entry['error']:+.2f}%",
                     "-" if measured is None else ("yes" if entry["meets_target"] else "no")])
    data["holdout"] = {"fitted_points": predictions["fitted_points"], "law": predictions["law"], "points": rows}
    return ["\n## Held-out predictions\n",
            f"Predicted by the law fitted on {len(predictions['fitted_points'])} study points, written to "
            f"{PREDICTIONS_FILE} before these runs were trained ({predictions['confidence']:.0%} bootstrap intervals). "
            "Target: "
            f"within {100 * TARGET_ERROR:.1f}% of the measured loss and inside the interval.\n\n",
            "D / D* is the point's tokens over the tokens at which its size is compute-optimal by the fitted law.\n\n",
            markdown_table(["point", "N", "D", "N / largest fitted", "C / largest fitted", "D / D*",
                            "predicted [interval]", "measured", "error", "target met"], body)]
