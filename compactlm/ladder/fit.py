"""Scaling-law fits: Chinchilla's approaches 3 (parametric) and 2 (isoFLOP minima), bootstrap intervals.

Approach 3 (Hoffmann et al. 2022, appendix D.2; Besiroglu et al. 2024's replication):
    L(N, D) = E + A / N^alpha + B / D^beta
with N the non-embedding parameters and D the training tokens, fitted in the log-sum-exp form
    log L = LSE(a - alpha log N, b - beta log D, e),   A = exp(a), B = exp(b), E = exp(e)
by minimising the mean Huber loss (delta 1e-3) of the residuals in log L with L-BFGS, started from the
best points of Chinchilla's initialisation grid (alpha, beta in {0, .5, ..., 2}, e in {-1, -.5, ..., 1},
a, b in {0, 5, ..., 25}). Confidence intervals: the points are resampled with replacement and the law
refitted (`bootstrap_law`); any derived quantity is computed per refit and its percentiles reported.

Approach 2: for each compute budget, a parabola of the loss in log N through the budget's points; its
vertex is the budget's optimal N*, D* = C / FLOPs-per-token(N*); then N* = k C^a and D* = k' C^b by
least squares in log-log space.

Compute: C = F(N) x D with F the training FLOPs per token (`FlopsCurve`): 6N for the 6ND convention,
or the model's own count (head and attention included), interpolated in log-log space between known
model shapes (the ladder's sizes and the extrapolation target with the presets between them).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass

import numpy as np

INIT_GRID = {"a": [0, 5, 10, 15, 20, 25], "b": [0, 5, 10, 15, 20, 25], "e": [-1, -0.5, 0, 0.5, 1],
             "alpha": [0, 0.5, 1, 1.5, 2], "beta": [0, 0.5, 1, 1.5, 2]}
ORDER = ("a", "b", "e", "alpha", "beta")


@dataclass
class LawFit:
    E: float
    A: float
    alpha: float
    B: float
    beta: float
    objective: float = float("nan")  # mean Huber loss / delta^2 at the optimum
    theta: tuple | None = None  # (a, b, e, alpha, beta) as fitted (E = exp(e) may underflow to 0)

    def predict(self, N, D):
        N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
        return self.E + self.A / N ** self.alpha + self.B / D ** self.beta

    @property
    def a(self) -> float:
        """N*(C) ~ C^a under C = 6ND."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """D*(C) ~ C^b under C = 6ND."""
        return self.alpha / (self.alpha + self.beta)

    def as_dict(self) -> dict:
        return {"E": self.E, "A": self.A, "alpha": self.alpha, "B": self.B, "beta": self.beta, "a": self.a,
                "b": self.b}

    @classmethod
    def from_theta(cls, theta, objective: float = float("nan")) -> "LawFit":
        a, b, e, alpha, beta = (float(x) for x in theta)
        return cls(E=math.exp(e), A=math.exp(a), alpha=alpha, B=math.exp(b), beta=beta, objective=objective,
                   theta=(a, b, e, alpha, beta))


# ---- approach 3 ------------------------------------------------------------------------------------
def _objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float,
               weights: np.ndarray | None = None):
    """Mean Huber(delta) of log-space residuals, divided by delta^2, and its gradient."""
    a, b, e, alpha, beta = theta
    u = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    top = u.max(axis=0)
    ex = np.exp(u - top)
    total = ex.sum(axis=0)
    lse = top + np.log(total)
    soft = ex / total
    r = lse - log_l
    w = np.ones_like(r) if weights is None else weights
    quad = np.abs(r) <= delta
    loss = np.where(quad, 0.5 * r ** 2, delta * (np.abs(r) - 0.5 * delta)) / delta ** 2
    dr = np.where(quad, r, delta * np.sign(r)) / delta ** 2 * w / w.sum()
    grad = np.array([(dr * soft[0]).sum(), (dr * soft[1]).sum(), (dr * soft[2]).sum(),
                     -(dr * soft[0] * log_n).sum(), -(dr * soft[1] * log_d).sum()])
    return float((loss * w).sum() / w.sum()), grad


def _grid_objectives(grid: np.ndarray, log_n, log_d, log_l, delta: float, weights) -> np.ndarray:
    """The objective at every initialisation of the grid at once ([K, 5] -> [K])."""
    a, b, e, alpha, beta = (grid[:, i:i + 1] for i in range(5))
    u = np.stack([a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, (len(grid), len(log_n)))])
    top = u.max(axis=0)
    lse = top + np.log(np.exp(u - top).sum(axis=0))
    r = np.abs(lse - log_l)
    loss = np.where(r <= delta, 0.5 * r ** 2, delta * (r - 0.5 * delta))
    return (loss * weights).sum(axis=1) / weights.sum()


def _single_threaded_blas():
    """scipy's L-BFGS-B calls BLAS on 5-vectors; OpenBLAS threads spinning against a busy CPU make each
    iteration ~50x slower, so the fits run with one BLAS thread."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(1)


_GRID = np.array(list(itertools.product(*(INIT_GRID[k] for k in ORDER))), dtype=float)


def fit_law(N, D, L, delta: float = 1e-3, starts: int = 32, extra_starts=(), weights=None) -> LawFit:
    """Chinchilla approach 3: the best of L-BFGS runs from the `starts` best grid points (+ extra_starts)."""
    from scipy.optimize import minimize

    log_n, log_d, log_l = (np.log(np.asarray(x, dtype=float)) for x in (N, D, L))
    if len(log_l) < 5:
        raise ValueError(f"fitting 5 parameters needs at least 5 points, got {len(log_l)}")
    w = np.ones_like(log_l) if weights is None else np.asarray(weights, dtype=float)
    scores = _grid_objectives(_GRID, log_n, log_d, log_l, delta, w)
    candidates = [*_GRID[np.argsort(scores, kind="stable")[:starts]], *(np.asarray(s, float) for s in extra_starts)]
    bounds = [(None, None), (None, None), (-20.0, None), (0.0, 10.0), (0.0, 10.0)]  # E >= 2e-9: "no floor"
    best = None
    with _single_threaded_blas():
        for x0 in candidates:
            res = minimize(_objective, x0, args=(log_n, log_d, log_l, delta, w), jac=True, method="L-BFGS-B",
                           bounds=bounds, options={"maxiter": 2000, "ftol": 1e-13, "gtol": 1e-9})
            if np.all(np.isfinite(res.x)) and (best is None or res.fun < best.fun):
                best = res
    return LawFit.from_theta(best.x, float(best.fun))


def theta_of(fit: LawFit) -> np.ndarray:
    if fit.theta is not None:
        return np.array(fit.theta, dtype=float)
    return np.array([math.log(fit.A), math.log(fit.B), math.log(max(fit.E, 1e-300)), fit.alpha, fit.beta])


def bootstrap_law(N, D, L, n: int, seed: int = 0, delta: float = 1e-3, starts: int = 4,
                  around: LawFit | None = None) -> list[LawFit]:
    """Refits on `n` resamples of the points (with replacement); each starts from the grid's best
    `starts` points and from the full fit `around`."""
    N, D, L = (np.asarray(x, dtype=float) for x in (N, D, L))
    rng = np.random.default_rng(seed)
    fits = []
    for _ in range(n):
        counts = np.bincount(rng.integers(0, len(L), len(L)), minlength=len(L)).astype(float)
        keep = counts > 0
        if keep.sum() < 5:
            continue
        extra = [theta_of(around)] if around is not None else []
        fits.append(fit_law(N[keep], D[keep], L[keep], delta, starts, extra, weights=counts[keep]))
    return fits


def fitted_rows(rows: list[dict], min_steps: int) -> list[dict]:
    """The finished points the law is fitted on: those trained for at least `min_steps` optimizer steps."""
    return [r for r in rows if r["steps"] >= min_steps]


def fit_with_intervals(rows: list[dict], fit_cfg) -> tuple[LawFit, list[LawFit]]:
    """The study's law from its points (fitted_rows) and the bootstrap refits behind its intervals: what the
    report shows and what the held-out predictions use."""
    N, D, L = (np.array([r[k] for r in rows], float) for k in ("n_params", "tokens", "val_loss"))
    law = fit_law(N, D, L, fit_cfg.huber_delta, fit_cfg.starts)
    return law, bootstrap_law(N, D, L, fit_cfg.bootstrap, fit_cfg.seed, fit_cfg.huber_delta, around=law)


def r_squared(measured, predicted) -> float:
    measured, predicted = np.asarray(measured, float), np.asarray(predicted, float)
    total = ((measured - measured.mean()) ** 2).sum()
    return float(1 - ((measured - predicted) ** 2).sum() / total) if total > 0 else float("nan")


def interval(values, confidence: float = 0.95) -> tuple[float, float]:
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if not len(values):
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


# ---- compute ------------------------------------------------------------------------------------
class FlopsCurve:
    """Training FLOPs per token as a function of N: 6N x r(N), r interpolated in log N between anchors.

    With no anchors (the 6ND convention) r = 1. Outside the anchors r is held at the nearest one.
    """

    def __init__(self, anchors: list[tuple[float, float]] | None = None):
        anchors = sorted({(float(n), float(f)) for n, f in (anchors or [])})
        self.log_n = np.log([n for n, _ in anchors]) if anchors else None
        self.log_r = np.log([f / (6 * n) for n, f in anchors]) if anchors else None

    def __call__(self, N):
        N = np.asarray(N, dtype=float)
        if self.log_n is None:
            return 6 * N
        return 6 * N * np.exp(np.interp(np.log(N), self.log_n, self.log_r))

    def slope(self, N: float, h: float = 0.05) -> float:
        """d log F / d log N at N (a central difference)."""
        return float((math.log(self(N * math.exp(h))) - math.log(self(N * math.exp(-h)))) / (2 * h))


def compute_optimal(law: LawFit, C: float, flops: FlopsCurve, lo: float = 1e2, hi: float = 1e14) -> tuple[float, float, float]:
    """(N*, D*, L*): the size minimising L(N, C / F(N)) at compute C."""
    from scipy.optimize import minimize_scalar

    def loss(x):
        n = math.exp(x)
        return float(law.predict(n, C / float(flops(n))))

    xs = np.linspace(math.log(lo), math.log(hi), 241)
    values = [loss(x) for x in xs]
    i = int(np.argmin(values))
    left, right = xs[max(0, i - 1)], xs[min(len(xs) - 1, i + 1)]
    res = minimize_scalar(loss, bounds=(left, right), method="bounded", options={"xatol": 1e-7})
    n = math.exp(res.x)
    return n, C / float(flops(n)), float(res.fun)


def optimal_tokens(law: LawFit, N: float, flops: FlopsCurve) -> float:
    """The D for which N is compute-optimal: dL/dlogN = 0 along C = F(N) D fixed, i.e.
    alpha A N^-alpha = g beta B D^-beta with g = d log F / d log N (1 under 6ND)."""
    g = flops.slope(N)
    if law.alpha <= 0 or law.beta <= 0:
        return float("inf")  # no trade-off: the law has no optimum
    log_d = (math.log(g * law.beta * law.B) - math.log(law.alpha * law.A) + law.alpha * math.log(N)) / law.beta
    return math.exp(log_d) if log_d < 700 else float("inf")


def target_analysis(law: LawFit, flops: FlopsCurve, N: float, D: float) -> dict:
    """Over-training at size N for D tokens, as the law predicts it.

    - D_opt: the compute-optimal token count for N, and the loss there;
    - the loss at D, and what the extra tokens buy;
    - at equal compute C = F(N) D: the compute-optimal model (N*, D*, L*), and the larger model on the
      other side of the isoFLOP curve that reaches the same loss as N x D (equal loss, equal compute);
    - the compute the optimal frontier needs to reach N x D's loss.
    """
    from scipy.optimize import brentq

    C = float(flops(N)) * D
    loss = float(law.predict(N, D))
    d_opt = optimal_tokens(law, N, flops)
    loss_opt = float(law.predict(N, d_opt))
    n_star, d_star, l_star = compute_optimal(law, C, flops)

    def isoflop_gap(x):
        n = math.exp(x)
        return float(law.predict(n, C / float(flops(n)))) - loss

    n_equal = float("nan")
    if n_star > N and isoflop_gap(math.log(n_star)) < 0:
        x_hi = math.log(n_star)
        while isoflop_gap(x_hi) < 0 and x_hi < math.log(n_star) + 60:
            x_hi += 1.0
        if isoflop_gap(x_hi) > 0:
            n_equal = math.exp(brentq(isoflop_gap, math.log(n_star), x_hi, xtol=1e-9))

    def frontier_gap(log_c):
        return compute_optimal(law, math.exp(log_c), flops)[2] - loss

    c_equal = float("nan")
    lo = math.log(C) - 1.0
    while frontier_gap(lo) < 0 and lo > math.log(C) - 80:
        lo -= 2.0
    if frontier_gap(lo) > 0 and frontier_gap(math.log(C)) <= 0:
        c_equal = math.exp(brentq(frontier_gap, lo, math.log(C), xtol=1e-6))
    return {"N": N, "D": D, "C": C, "loss": loss, "D_opt": d_opt, "tokens_per_param_opt": d_opt / N,
            "loss_at_D_opt": loss_opt, "loss_gain": loss_opt - loss, "overtraining": D / d_opt,
            "N_star": n_star, "D_star": d_star, "loss_star": l_star,
            "N_equal_loss": n_equal, "D_equal_loss": C / float(flops(n_equal)) if n_equal == n_equal else float("nan"),
            "C_equal_loss": c_equal, "compute_ratio": C / c_equal if c_equal == c_equal else float("nan")}


# ---- approach 2 ---------------------------------------------------------------------------------
def parabola_minimum(N, L) -> dict | None:
    """The vertex of L = c0 + c1 x + c2 x^2, x = log N; None when it opens downwards or has < 3 sizes."""
    x, y = np.log(np.asarray(N, float)), np.asarray(L, float)
    if len(np.unique(x)) < 3:
        return None
    c2, c1, c0 = np.polyfit(x, y, 2)
    if c2 <= 0:
        return None
    xv = -c1 / (2 * c2)
    return {"N": float(math.exp(xv)), "loss": float(c0 + c1 * xv + c2 * xv ** 2), "coef": [float(c2), float(c1), float(c0)],
            "inside": bool(x.min() <= xv <= x.max())}


def power_law(C, Y) -> tuple[float, float]:
    """(exponent e, log k) of Y = k C^e by least squares in log-log space."""
    e, log_k = np.polyfit(np.log(np.asarray(C, float)), np.log(np.asarray(Y, float)), 1)
    return float(e), float(log_k)


def around_minimum(ns, ls, window: int) -> list[int]:
    """Indices of the `window` consecutive sizes (in N order) centred, as far as possible, on the lowest loss."""
    order = sorted(range(len(ns)), key=lambda i: ns[i])
    if window < 3 or window >= len(order):
        return order
    best = min(range(len(order)), key=lambda j: ls[order[j]])
    start = min(max(0, best - window // 2), len(order) - window)
    return order[start:start + window]


def isoflop_minima(groups: dict[float, tuple[list, list, list]], window: int = 0) -> dict:
    """Approach 2. `groups`: budget C -> (N list, F list, loss list). Returns per-budget minima and the fits.

    The parabola goes through all of a budget's points, or (window >= 3) through the `window` sizes
    around the lowest loss. D* of a budget is C / F(N*), F interpolated in log-log space between the
    budget's own points. Budgets whose parabola opens downwards are left out; vertices outside the
    sizes tried are kept but flagged (extrapolated).
    """
    minima = []
    for budget, (ns, fs, ls) in sorted(groups.items()):
        keep = around_minimum(ns, ls, window)
        vertex = parabola_minimum([ns[i] for i in keep], [ls[i] for i in keep])
        if vertex is None:
            minima.append({"C": budget, "N": float("nan"), "D": float("nan"), "loss": float("nan"), "inside": False,
                           "valid": False})
            continue
        curve = FlopsCurve(list(zip(ns, fs)))
        minima.append({"C": budget, **vertex, "D": budget / float(curve(vertex["N"])), "valid": True})
    valid = [m for m in minima if m["valid"]]
    result = {"minima": minima, "a": float("nan"), "b": float("nan"), "log_k_n": float("nan"),
              "log_k_d": float("nan")}
    if len(valid) >= 2:
        result["a"], result["log_k_n"] = power_law([m["C"] for m in valid], [m["N"] for m in valid])
        result["b"], result["log_k_d"] = power_law([m["C"] for m in valid], [m["D"] for m in valid])
    return result


def bootstrap_isoflop(groups: dict[float, tuple[list, list, list]], n: int, seed: int = 0, window: int = 0) -> list[dict]:
    """Approach 2 on `n` resamples: the points of each budget resampled with replacement."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        resampled = {}
        for budget, (ns, fs, ls) in groups.items():
            idx = rng.integers(0, len(ns), len(ns))
            resampled[budget] = ([ns[i] for i in idx], [fs[i] for i in idx], [ls[i] for i in idx])
        out.append(isoflop_minima(resampled, window))
    return out
