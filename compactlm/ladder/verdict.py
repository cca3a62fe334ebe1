"""The over-training verdict under a law L(N, D) = E + A / N^alpha + B / D^beta: what a smaller model
trained longer costs at equal compute, and which model is cheapest once inference is paid for.

- `penalties`: at compute C, the compute-optimal (N*, D*, L*) and, for N*/k trained on the same
  compute (about k D* tokens), the loss penalty over L* and the training compute that N*/k needs to
  reach L* (over-training's price in training compute; infinite where N*/k can never reach it).
- `inference_optimal`: Sardana et al. 2023 ("Beyond Chinchilla-Optimal: Accounting for Inference in
  Language Model Scaling Laws"): the N, D that reach a loss with the fewest training + inference FLOPs,
  F(N) D + 2 N T for T generated tokens.
- `verdict`: all of it for one trained model (TinyLlama: 1.1B parameters, 3T tokens).
- `PUBLISHED`: laws fitted by others, built in with their sources, for an answer without a ladder of
  one's own. Their N counts parameters as their authors did, on their data (MassiveText), so their
  losses are not comparable with another corpus's, only their trade-offs.
"""

from __future__ import annotations

import math

import numpy as np

from compactlm.ladder.fit import FlopsCurve, LawFit, compute_optimal, target_analysis
from compactlm.ladder.plots import count, markdown_table, num

PUBLISHED = {
    "hoffmann2022": (LawFit(E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28),
                     "Hoffmann et al. 2022, \"Training Compute-Optimal Large Language Models\" (Chinchilla), "
                     "approach 3"),
    "besiroglu2024": (LawFit(E=1.8172, A=482.01, alpha=0.3478, B=2085.43, beta=0.3658),
                      "Besiroglu et al. 2024, \"Chinchilla Scaling: A replication attempt\", refit of approach 3"),
}


def tokens_for(law: LawFit, N: float, loss: float) -> float:
    """The tokens N parameters need to reach `loss` (infinite where the law says they never do)."""
    gap = loss - law.E - law.A / N ** law.alpha
    return (law.B / gap) ** (1 / law.beta) if gap > 0 else math.inf


def penalties(law: LawFit, C: float, flops: FlopsCurve | None = None, factors=(4, 16)) -> dict:
    """At compute C: the compute-optimal model, and N*/k for each factor k trained on the same compute."""
    flops = flops or FlopsCurve()
    n_star, d_star, l_star = compute_optimal(law, C, flops)
    rows = []
    for k in factors:
        n = n_star / k
        d = C / float(flops(n))
        loss = float(law.predict(n, d))
        reach = tokens_for(law, n, l_star)
        rows.append({"factor": k, "N": n, "D": d, "loss": loss, "loss_penalty": loss - l_star,
                     "relative_penalty": (loss - l_star) / l_star,
                     "compute_to_reach_optimal_loss": float(flops(n)) * reach,
                     "compute_ratio": float(flops(n)) * reach / C})
    return {"C": C, "N_star": n_star, "D_star": d_star, "loss_star": l_star, "smaller": rows}


def inference_optimal(law: LawFit, loss: float, inference_tokens: float, flops: FlopsCurve | None = None) -> dict:
    """The (N, D) reaching `loss` with the fewest FLOPs for training (F(N) D) and for generating
    `inference_tokens` tokens afterwards (2 N each). With no inference, the compute-optimal model."""
    from scipy.optimize import minimize_scalar

    flops = flops or FlopsCurve()
    if loss <= law.E:
        raise ValueError(f"loss {loss} is at or below the law's floor E = {law.E:.4g}: no model reaches it")
    n_min = (law.A / (loss - law.E)) ** (1 / law.alpha)  # below this size, no token count is enough

    def total(x):
        n = math.exp(x)
        d = tokens_for(law, n, loss)
        return math.log(float(flops(n)) * d + 2 * n * inference_tokens) if d < math.inf else math.inf

    xs = np.linspace(math.log(n_min) + 1e-6, math.log(n_min) + 25, 501)
    values = [total(x) for x in xs]
    i = int(np.argmin(values))
    res = minimize_scalar(total, bounds=(xs[max(0, i - 1)], xs[min(len(xs) - 1, i + 1)]), method="bounded",
                          options={"xatol": 1e-9})
    n = math.exp(res.x)
    d = tokens_for(law, n, loss)
    train, infer = float(flops(n)) * d, 2 * n * inference_tokens
    return {"loss": loss, "inference_tokens": inference_tokens, "N": n, "D": d, "tokens_per_param": d / n,
            "train_flops": train, "inference_flops": infer, "total_flops": train + infer}


def verdict(law: LawFit, N: float, D: float, inference_tokens: float = 0.0, flops: FlopsCurve | None = None) -> dict:
    """For a model of N parameters trained on D tokens: the law's target analysis (compute-optimal model
    at equal compute, the compute that reaches the same loss), and with `inference_tokens`, its total
    cost against the compute-optimal and the inference-optimal models of the same loss."""
    flops = flops or FlopsCurve()
    out = target_analysis(law, flops, N, D)
    if inference_tokens > 0:
        loss = out["loss"]
        chinchilla = inference_optimal(law, loss, 0.0, flops)
        cheapest = inference_optimal(law, loss, inference_tokens, flops)
        own_total = out["C"] + 2 * N * inference_tokens
        chinchilla_total = chinchilla["train_flops"] + 2 * chinchilla["N"] * inference_tokens
        out["inference"] = {
            "inference_tokens": inference_tokens, "this_model_total_flops": own_total,
            "compute_optimal": {**chinchilla, "total_flops": chinchilla_total},
            "inference_optimal": cheapest,
            "cheapest": min((("this model", own_total), ("compute-optimal", chinchilla_total),
                             ("inference-optimal", cheapest["total_flops"])), key=lambda kv: kv[1])[0]}
    return out


def format_verdict(name: str, source: str, v: dict) -> str:
    """A verdict as a few lines of text (the `compactlm verdict` output)."""
    lines = [f"{name}: {source}",
             f"  {v['N']:.3g} parameters x {v['D']:.3g} tokens: predicted loss {v['loss']:.4f}; training compute "
             f"{v['C']:.3g} FLOPs",
             f"  compute-optimal at that compute: {v['N_star']:.3g} parameters x {v['D_star']:.3g} tokens, loss "
             f"{v['loss_star']:.4f} ({v['loss'] - v['loss_star']:+.4f} for the trained model)",
             f"  the trained model is {v['overtraining']:.3g}x past its own compute-optimal tokens "
             f"({v['D_opt']:.3g}); the optimal frontier reaches its loss with {v['C_equal_loss']:.3g} FLOPs "
             f"({v['compute_ratio']:.2f}x less)"]
    inf = v.get("inference")
    if inf:
        co, io = inf["compute_optimal"], inf["inference_optimal"]
        lines += [f"  with {inf['inference_tokens']:.3g} generated tokens (2N FLOPs each), to the same loss:",
                  f"    this model: {inf['this_model_total_flops']:.3g} FLOPs in all",
                  f"    compute-optimal model ({co['N']:.3g} x {co['D']:.3g}): {co['total_flops']:.3g}",
                  f"    inference-optimal model ({io['N']:.3g} x {io['D']:.3g}, {io['tokens_per_param']:.0f} "
                  f"tokens/parameter): {io['total_flops']:.3g}",
                  f"    cheapest overall: {inf['cheapest']}"]
    return "\n".join(lines)


def verdict_section(config, law, flops, rows: list[dict], data: dict) -> list[str]:
    """At each compute budget measured, what smaller models trained longer cost; and the target's verdict
    with inference paid for, under this ladder's law and the published ones (compactlm.ladder.verdict)."""
    from compactlm.config.model import get_preset

    fit_cfg = config.fit
    # the isoFLOP budgets; in a grid, six of the points' computes from the smallest to the largest
    budgets = sorted({float(r["budget"]) for r in rows if r.get("budget")})
    if not budgets:
        computes = sorted({float(r["flops_model"]) for r in rows})
        budgets = sorted({computes[round(i * (len(computes) - 1) / 5)] for i in range(6)})
    table, data["penalties"] = [], []
    for C in budgets:
        try:
            p = penalties(law, C, flops)
        except (ValueError, ZeroDivisionError, OverflowError, FloatingPointError):
            continue
        data["penalties"].append(p)
        table.append([num(C, 3), count(p["N_star"]), num(p["loss_star"], 4)] +
                     [f"{r['loss_penalty']:+.4f} ({100 * r['relative_penalty']:+.2f}%), {r['compute_ratio']:.2f}x"
                      for r in p["smaller"]])
    target = get_preset(fit_cfg.target, vocab_size=fit_cfg.target_vocab, max_seq_len=fit_cfg.target_seq_len)
    T = fit_cfg.inference_tokens
    laws = {"this ladder": (law, float(target.non_embedding_params), "non-embedding", flops)}
    laws.update({name: (published, float(target.num_params), "total", None)
                 for name, (published, _) in PUBLISHED.items()})
    data["verdicts"], verdict_rows = {}, []
    for name, (each, n, counted, curve) in laws.items():
        try:
            v = verdict(each, n, fit_cfg.target_tokens, T, curve)
        except (ValueError, ZeroDivisionError, OverflowError, FloatingPointError) as exc:
            data["verdicts"][name] = {"error": str(exc)}
            continue
        source = PUBLISHED.get(name, (None, "this ladder's fit"))[1]
        data["verdicts"][name] = {"N_counts": counted, "source": source, **v}
        inf = v.get("inference", {})
        verdict_rows.append([name, f"{count(n)} ({counted})", num(v["loss"], 4), count(v["N_star"]),
                             f"{v['loss'] - v['loss_star']:+.4f}", f"{v['compute_ratio']:.2f}x",
                             count(inf["inference_optimal"]["N"]) if inf else "-", inf.get("cheapest", "-")])
    md = ["\n## The over-training verdict\n",
          "Smaller models on the same compute, as this ladder's law predicts them: the loss penalty over the "
          "compute-optimal loss L*, and the training compute the smaller model needs to reach L* (inf: never).\n\n",
          markdown_table(["C (FLOPs)", "N*", "L*", *(f"N*/{r['factor']}: penalty, compute to reach L*"
                                          for r in (data["penalties"][0]["smaller"] if data["penalties"] else []))],
                 table),
          f"\n{fit_cfg.target} x {count(fit_cfg.target_tokens)} tokens, then {count(T)} generated tokens (2N FLOPs "
          "each; Sardana et al. 2023), under this ladder's law and under published laws (Hoffmann et al. 2022, "
          "approach 3; Besiroglu et al. 2024's refit), which count total parameters (Pearce and Song 2024) and "
          "were fitted on other data: compare their trade-offs, not their losses.\n\n",
          markdown_table(["law", "N", "loss", "compute-optimal N* at equal compute", "loss over L*",
                  "compute over-training spends", "inference-optimal N", "cheapest overall"], verdict_rows)]
    return md
