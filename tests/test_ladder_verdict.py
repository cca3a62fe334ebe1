"""The over-training verdict: the inference-aware optimum against a brute-force search over (N, D), the
compute-optimal frontier reached two independent ways, penalties at equal compute, and the command."""

import json
import math

import numpy as np
import pytest

from compactlm.cli import main
from compactlm.ladder.fit import FlopsCurve, LawFit, compute_optimal, target_analysis
from compactlm.ladder.verdict import PUBLISHED, inference_optimal, penalties, tokens_for, verdict

LAWS = {name: law for name, (law, _) in PUBLISHED.items()}
# a law shaped like a small CPU ladder's (losses around 4-6 nats, small N and D)
LAWS["ladder-like"] = LawFit(E=2.1, A=55.0, alpha=0.31, B=140.0, beta=0.27)


def brute_force(law: LawFit, loss: float, inference_tokens: float) -> tuple[float, float, float]:
    """min over a fine (N, D) grid of 6 N D + 2 N T subject to L(N, D) <= loss: (N, D, FLOPs)."""
    n = np.logspace(5, 14, 1801)[:, None]
    d = np.logspace(5, 16, 2201)[None, :]
    cost = np.where(law.predict(n, d) <= loss, 6 * n * d + 2 * n * inference_tokens, np.inf)
    i, j = np.unravel_index(np.argmin(cost), cost.shape)
    return float(n[i, 0]), float(d[0, j]), float(cost[i, j])


@pytest.mark.parametrize("name", sorted(LAWS))
@pytest.mark.parametrize("inference_tokens", [0.0, 1e11, 1e13])
def test_the_inference_aware_optimum_matches_a_brute_force_search(name, inference_tokens):
    law = LAWS[name]
    loss = float(law.predict(1e8 if name == "ladder-like" else 1.1e9, 1e10 if name == "ladder-like" else 3e12))
    best = inference_optimal(law, loss, inference_tokens)
    n, _, flops = brute_force(law, loss, inference_tokens)
    assert best["total_flops"] <= flops * (1 + 1e-9)  # never worse than any grid point
    assert best["total_flops"] == pytest.approx(flops, rel=5e-3)  # and the grid's best is within its spacing
    # the optimum is flat (a few % in N move the cost by less than the grid's spacing): the grid's N is
    # near, and exact neighbours on either side cost more
    assert best["N"] == pytest.approx(n, rel=0.15)
    for step in (1.02, 1 / 1.02):
        m = best["N"] * step
        assert 6 * m * tokens_for(law, m, loss) + 2 * m * inference_tokens > best["total_flops"]
    assert float(law.predict(best["N"], best["D"])) == pytest.approx(loss, rel=1e-9)


def test_more_inference_means_a_smaller_model_trained_longer():
    law, _ = PUBLISHED["besiroglu2024"]
    loss = float(law.predict(1.1e9, 3e12))
    sizes = [inference_optimal(law, loss, t)["N"] for t in (0, 1e10, 1e11, 1e12, 1e13)]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] / sizes[-1] > 2


@pytest.mark.parametrize("name", sorted(LAWS))
def test_the_frontier_two_ways(name):
    """With no inference, the cheapest model for a loss is on the compute-optimal frontier: the compute
    target_analysis finds by bisection over C equals inference_optimal's training FLOPs."""
    law = LAWS[name]
    N, D = (1e8, 1e10) if name == "ladder-like" else (1.1e9, 3e12)
    analysis = target_analysis(law, FlopsCurve(), N, D)
    cheapest = inference_optimal(law, analysis["loss"], 0.0)
    assert cheapest["train_flops"] == pytest.approx(analysis["C_equal_loss"], rel=1e-4)
    n_star, d_star, l_star = compute_optimal(law, cheapest["train_flops"], FlopsCurve())
    assert cheapest["N"] == pytest.approx(n_star, rel=1e-3) and l_star == pytest.approx(analysis["loss"], rel=1e-6)


def test_penalties_at_equal_compute():
    law, _ = PUBLISHED["hoffmann2022"]
    C = 1e21
    result = penalties(law, C, factors=(1, 4, 16))
    rows = {r["factor"]: r for r in result["smaller"]}
    assert rows[1]["loss_penalty"] == pytest.approx(0, abs=1e-9) and rows[1]["compute_ratio"] == pytest.approx(1, rel=1e-4)
    assert 0 < rows[4]["loss_penalty"] < rows[16]["loss_penalty"]
    for k in (4, 16):
        r = rows[k]
        assert r["N"] * r["D"] * 6 == pytest.approx(C) and r["D"] == pytest.approx(k * result["D_star"])
        # the compute N*/k needs for L*: the smallest D on a fine grid with L(N*/k, D) <= L*
        d = np.logspace(math.log10(r["D"]), math.log10(r["D"]) + 8, 80001)
        reached = law.predict(r["N"], d) <= result["loss_star"]
        if r["compute_to_reach_optimal_loss"] == math.inf:  # below the law's floor for that size
            assert not reached.any() and law.E + law.A / r["N"] ** law.alpha > result["loss_star"]
        else:
            reach = d[np.argmax(reached)]
            assert r["compute_to_reach_optimal_loss"] == pytest.approx(6 * r["N"] * reach, rel=1e-3)
        assert r["compute_ratio"] > 1
    assert math.isfinite(rows[4]["compute_ratio"])
    assert tokens_for(law, 1e3, law.E + 1e-3) == math.inf  # a model too small never reaches the loss


def test_the_verdict_for_tinyllama_and_the_command(tmp_path, capsys):
    law, source = PUBLISHED["besiroglu2024"]
    v = verdict(law, 1.1e9, 3e12, inference_tokens=1e12)
    assert v["N_star"] > 1.1e9 and v["loss"] > v["loss_star"] and v["compute_ratio"] > 1
    inf = v["inference"]
    assert inf["inference_optimal"]["total_flops"] <= min(inf["this_model_total_flops"],
                                                          inf["compute_optimal"]["total_flops"])
    assert main(["verdict", "--inference-tokens", "1e12"]) == 0
    out = capsys.readouterr().out
    assert "Hoffmann et al. 2022" in out and "Besiroglu et al. 2024" in out and "cheapest overall" in out
    ladder = tmp_path / "ladder.json"
    ladder.write_text(json.dumps({"fit": {"E": 2.1, "A": 55.0, "alpha": 0.31, "B": 140.0, "beta": 0.27}}))
    assert main(["verdict", "--law", str(ladder), "--params", "1e8", "--tokens", "1e10"]) == 0
    assert f"{float(LAWS['ladder-like'].predict(1e8, 1e10)):.4f}" in capsys.readouterr().out
    assert main(["verdict", "--law", str(tmp_path / "missing.json")]) == 1
